#include "ethauth/auth_service.h"

#include <cstdlib>
#include <fstream>
#include <sstream>

#include <toml++/toml.h>

#include "base/log.h"

namespace dstack::ethauth {

using nlohmann::json;
using std::chrono::milliseconds;

namespace {

Result<int64_t> get_int(const json& j, const std::string& key, int64_t lo, int64_t hi) {
  if (!j.is_number_integer()) return make_error("config key '" + key + "' must be an integer");
  int64_t v = j.get<int64_t>();
  if (v < lo || v > hi)
    return make_error("config key '" + key + "' = " + std::to_string(v) + " out of range [" + std::to_string(lo) + ", " +
                      std::to_string(hi) + "]");
  return v;
}

Status apply_json_config(const json& j, AuthEthConfig& cfg) {
  if (!j.is_object()) return make_error("config must be an object/table");
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& k = it.key();
    const json& v = it.value();
    auto str = [&](std::string& out) -> Status {
      if (!v.is_string()) return make_error("config key '" + k + "' must be a string");
      out = v.get<std::string>();
      return {};
    };
    if (k == "eth_rpc_url") TRY(str(cfg.eth_rpc_url));
    else if (k == "kms_contract_addr") TRY(str(cfg.kms_contract_addr));
    else if (k == "host") TRY(str(cfg.host));
    else if (k == "port") { TRY_ASSIGN(int64_t p, get_int(v, k, 0, 65535)); cfg.port = static_cast<uint16_t>(p); }
    else if (k == "budget_ms") { TRY_ASSIGN(int64_t x, get_int(v, k, 1, 600000)); cfg.budget = milliseconds(x); }
    else if (k == "attempt_timeout_ms") { TRY_ASSIGN(int64_t x, get_int(v, k, 1, 600000)); cfg.attempt_timeout = milliseconds(x); }
    else if (k == "info_ttl_s") { TRY_ASSIGN(int64_t x, get_int(v, k, 1, 86400)); cfg.info_ttl = std::chrono::seconds(x); }
    else if (k == "info_retry_ms") { TRY_ASSIGN(int64_t x, get_int(v, k, 10, 600000)); cfg.info_retry = milliseconds(x); }
    else if (k == "server_threads") { TRY_ASSIGN(int64_t x, get_int(v, k, 1, 256)); cfg.server_threads = static_cast<int>(x); }
    else return make_error("unknown config key '" + k + "'");
  }
  return {};
}

json toml_to_json(const toml::table& t) {
  json j = json::object();
  for (const auto& [k, node] : t) {
    std::string key(k.str());
    if (auto s = node.value<std::string>(); s && node.is_string()) j[key] = *s;
    else if (node.is_integer()) j[key] = *node.value<int64_t>();
    else if (node.is_boolean()) j[key] = *node.value<bool>();
    else if (node.is_floating_point()) j[key] = *node.value<double>();
    else j[key] = nullptr;  // nested tables/arrays are not part of this config
  }
  return j;
}

// Hex field of at most `size` bytes, optional 0x, left-padded with zeros to `size`.
Result<Bytes> hex_field(const json& body, const char* name, size_t size, bool required) {
  if (!body.contains(name)) {
    if (required) return make_error(std::string("missing required field '") + name + "'");
    return Bytes(size, 0);
  }
  const json& v = body[name];
  if (!v.is_string()) return make_error(std::string("field '") + name + "' must be a hex string");
  std::string s = v.get<std::string>();
  if (s.size() >= 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) s = s.substr(2);
  if (s.size() > size * 2)
    return make_error(std::string("field '") + name + "' is longer than " + std::to_string(size) + " bytes");
  if (s.size() % 2) s = "0" + s;
  auto b = from_hex(s);
  if (!b.ok()) return make_error(std::string("field '") + name + "' is not valid hex");
  Bytes out(size - b->size(), 0);
  out.insert(out.end(), b->begin(), b->end());
  return out;
}

Bytes addr_bytes_or_zero(const std::string& s) {
  auto r = parse_address(s);
  return r.ok() ? *r : Bytes(20, 0);
}

}  // namespace

Status load_config_file(const std::string& path, AuthEthConfig& cfg) {
  std::ifstream in(path);
  if (!in) return make_error("cannot open config file '" + path + "'");
  std::stringstream ss;
  ss << in.rdbuf();
  json j;
  if (path.size() >= 5 && path.substr(path.size() - 5) == ".json") {
    j = json::parse(ss.str(), nullptr, false);
    if (j.is_discarded()) return make_error("config file '" + path + "' is not valid JSON");
  } else {
    try {
      j = toml_to_json(toml::parse(ss.str(), path));
    } catch (const toml::parse_error& e) {
      return make_error("config file '" + path + "' is not valid TOML: " + std::string(e.description()));
    }
  }
  auto st = apply_json_config(j, cfg);
  if (!st.ok()) return st.error().wrap("config file '" + path + "'");
  return {};
}

Status apply_env(AuthEthConfig& cfg) {
  if (const char* v = std::getenv("ETH_RPC_URL"); v && *v) cfg.eth_rpc_url = v;
  if (const char* v = std::getenv("KMS_CONTRACT_ADDR"); v && *v) cfg.kms_contract_addr = v;
  if (const char* v = std::getenv("HOST"); v && *v) cfg.host = v;
  if (const char* v = std::getenv("PORT"); v && *v) {
    auto st = apply_json_config(json{{"port", std::atoll(v)}}, cfg);
    if (!st.ok() || std::to_string(std::atoll(v)) != v) return make_error(std::string("env PORT='") + v + "' is not a port number");
  }
  if (const char* v = std::getenv("AUTH_ETH_BUDGET_MS"); v && *v) {
    auto st = apply_json_config(json{{"budget_ms", std::atoll(v)}}, cfg);
    if (!st.ok()) return st.error().wrap("env AUTH_ETH_BUDGET_MS");
  }
  return {};
}

Result<BootInfo> parse_boot_info(const json& body) {
  if (!body.is_object()) return make_error("request body must be a JSON object");
  BootInfo b;
  TRY_ASSIGN(b.mr_aggregated, hex_field(body, "mrAggregated", 32, true));
  TRY_ASSIGN(b.os_image_hash, hex_field(body, "osImageHash", 32, true));
  TRY_ASSIGN(b.app_id, hex_field(body, "appId", 20, true));
  TRY_ASSIGN(b.compose_hash, hex_field(body, "composeHash", 32, true));
  TRY_ASSIGN(b.instance_id, hex_field(body, "instanceId", 20, true));
  TRY_ASSIGN(b.device_id, hex_field(body, "deviceId", 32, true));
  TRY_ASSIGN(b.mr_system, hex_field(body, "mrSystem", 32, false));
  if (body.contains("tcbStatus")) {
    if (!body["tcbStatus"].is_string()) return make_error("field 'tcbStatus' must be a string");
    b.tcb_status = body["tcbStatus"].get<std::string>();
  }
  if (body.contains("advisoryIds")) {
    const json& a = body["advisoryIds"];
    if (!a.is_array()) return make_error("field 'advisoryIds' must be an array of strings");
    for (const auto& x : a) {
      if (!x.is_string()) return make_error("field 'advisoryIds' must be an array of strings");
      b.advisory_ids.push_back(x.get<std::string>());
    }
  }
  return b;
}

abi::Value boot_info_tuple(const BootInfo& b) {
  using abi::Value;
  std::vector<Value> adv;
  for (const auto& s : b.advisory_ids) adv.push_back(Value::string_(s));
  return Value::tuple({Value::address(b.app_id), Value::fixed_bytes(b.compose_hash), Value::address(b.instance_id),
                       Value::fixed_bytes(b.device_id), Value::fixed_bytes(b.mr_aggregated),
                       Value::fixed_bytes(b.mr_system), Value::fixed_bytes(b.os_image_hash),
                       Value::string_(b.tcb_status), Value::array(std::move(adv))});
}

json AuthDecision::to_json() const {
  return json{{"isAllowed", is_allowed}, {"reason", reason}, {"gatewayAppId", gateway_app_id}};
}

AuthEthService::AuthEthService(AuthEthConfig cfg)
    : cfg_(std::move(cfg)),
      kms_addr_(addr_bytes_or_zero(cfg_.kms_contract_addr)),
      kms_addr_0x_(to_0x(kms_addr_)),
      rpc_(cfg_.eth_rpc_url, EthRpcOptions{cfg_.attempt_timeout, cfg_.budget, milliseconds(100), milliseconds(1000), 8}) {}

AuthEthService::~AuthEthService() { stop_refresher(); }

Result<std::unique_ptr<AuthEthService>> AuthEthService::create(AuthEthConfig cfg) {
  if (cfg.kms_contract_addr.empty())
    return make_error("KMS contract address is not set (env KMS_CONTRACT_ADDR or kms_contract_addr in the config)");
  if (auto a = parse_address(cfg.kms_contract_addr); !a.ok())
    return make_error("invalid KMS_CONTRACT_ADDR '" + cfg.kms_contract_addr + "': " + a.error().message);
  if (cfg.eth_rpc_url.rfind("http://", 0) != 0 && cfg.eth_rpc_url.rfind("https://", 0) != 0)
    return make_error("ETH_RPC_URL '" + redact_url(cfg.eth_rpc_url) + "' must start with http:// or https://");
  return std::make_unique<AuthEthService>(std::move(cfg));
}

AuthDecision AuthEthService::boot_auth(bool kms, const BootInfo& info) {
  const auto deadline = Clock::now() + cfg_.budget;
  const char* fn = kms ? "isKmsAllowed" : "isAppAllowed";
  auto deny = [&](const std::string& why) {
    spdlog::warn("bootAuth/{} appId=0x{}: backend failure: {}", kms ? "kms" : "app", to_hex(info.app_id), why);
    return AuthDecision{false, kBackendUnavailable, ""};
  };
  auto call = abi::encode_call(std::string(fn) + "(" + kAppBootInfoTuple + ")", {boot_info_tuple(info)});
  if (!call.ok()) return deny(call.error().message);
  auto out = rpc_.eth_call(kms_addr_0x_, *call, deadline);
  if (!out.ok()) return deny(out.error().message);
  static const auto ret_types = abi::parse_type_list("(bool,string)");
  auto vals = abi::decode(*ret_types, *out);
  if (!vals.ok()) return deny(std::string(fn) + " returned undecodable data (is KMS_CONTRACT_ADDR a DstackKms?): " +
                              vals.error().message);
  auto gw = rpc_.eth_call(kms_addr_0x_, abi::selector("gatewayAppId()"), deadline);
  if (!gw.ok()) return deny(gw.error().message);
  static const auto str_types = abi::parse_type_list("(string)");
  auto gwv = abi::decode(*str_types, *gw);
  if (!gwv.ok()) return deny("gatewayAppId() returned undecodable data: " + gwv.error().message);
  AuthDecision d{(*vals)[0].boolean, (*vals)[1].str, (*gwv)[0].str};
  spdlog::info("bootAuth/{} appId=0x{} composeHash={} -> allowed={} reason='{}'", kms ? "kms" : "app",
               to_hex(info.app_id), to_hex(info.compose_hash), d.is_allowed, d.reason);
  return d;
}

Result<ChainInfo> AuthEthService::fetch_chain_info(Clock::time_point deadline) {
  ChainInfo ci;
  TRY_ASSIGN(ci.chain_id, rpc_.chain_id(deadline));
  static const auto str_types = abi::parse_type_list("(string)");
  static const auto addr_types = abi::parse_type_list("(address)");
  TRY_ASSIGN(Bytes gw, rpc_.eth_call(kms_addr_0x_, abi::selector("gatewayAppId()"), deadline));
  auto gwv = abi::decode(*str_types, gw);
  if (!gwv.ok()) return gwv.error().wrap("gatewayAppId() (is KMS_CONTRACT_ADDR a DstackKms?)");
  ci.gateway_app_id = (*gwv)[0].str;
  TRY_ASSIGN(Bytes impl, rpc_.eth_call(kms_addr_0x_, abi::selector("appImplementation()"), deadline));
  auto iv = abi::decode(*addr_types, impl);
  if (!iv.ok()) return iv.error().wrap("appImplementation()");
  ci.app_implementation = to_checksum_address((*iv)[0].bytes);
  return ci;
}

rpc::HttpResponse AuthEthService::handle_info() {
  json j{{"kmsContractAddr", to_checksum_address(kms_addr_)}, {"ethRpcUrl", redact_url(cfg_.eth_rpc_url)}};
  std::lock_guard lk(mu_);
  if (!info_) {
    j["status"] = "unavailable";
    j["error"] = kBackendUnavailable;  // details (which may embed the RPC URL) go to the log only
    return rpc::HttpResponse::json(503, j.dump());
  }
  j["status"] = "ok";
  j["gatewayAppId"] = info_->gateway_app_id;
  j["chainId"] = info_->chain_id;
  j["appAuthImplementation"] = info_->app_implementation;
  j["appImplementation"] = info_->app_implementation;
  return rpc::HttpResponse::json(200, j.dump());
}

rpc::HttpResponse AuthEthService::handle_boot_auth(bool kms, const rpc::HttpRequest& req) {
  json body = json::parse(req.body, nullptr, false);
  if (body.is_discarded()) return rpc::HttpResponse::error(400, "request body is not valid JSON");
  auto info = parse_boot_info(body);
  if (!info.ok()) return rpc::HttpResponse::error(400, info.error().message);
  return rpc::HttpResponse::json(200, boot_auth(kms, *info).to_json().dump());
}

void AuthEthService::register_routes(rpc::HttpServer& server) {
  server.route("GET", "/", [this](const rpc::HttpRequest&) { return handle_info(); });
  server.route("POST", "/bootAuth/app", [this](const rpc::HttpRequest& r) { return handle_boot_auth(false, r); });
  server.route("POST", "/bootAuth/kms", [this](const rpc::HttpRequest& r) { return handle_boot_auth(true, r); });
}

void AuthEthService::start_refresher() {
  std::lock_guard lk(mu_);
  if (refresher_.joinable()) return;
  stop_ = false;
  refresher_ = std::thread([this] { refresher_loop(); });
}

void AuthEthService::stop_refresher() {
  {
    std::lock_guard lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (refresher_.joinable()) refresher_.join();
}

void AuthEthService::refresher_loop() {
  while (true) {
    auto r = fetch_chain_info(Clock::now() + cfg_.budget);
    std::unique_lock lk(mu_);
    if (r.ok()) {
      if (!info_ || info_->chain_id != r->chain_id || info_->gateway_app_id != r->gateway_app_id ||
          info_->app_implementation != r->app_implementation)
        spdlog::info("chain info: chainId={} gatewayAppId='{}' appImplementation={}", r->chain_id,
                     r->gateway_app_id, r->app_implementation);
      info_ = *r;
      info_error_.clear();
    } else {
      spdlog::warn("refreshing chain info failed (serving {}): {}", info_ ? "the cached copy" : "503",
                   r.error().message);
      info_error_ = r.error().message;
    }
    auto wait = r.ok() ? std::chrono::duration_cast<milliseconds>(cfg_.info_ttl) : cfg_.info_retry;
    if (cv_.wait_for(lk, wait, [this] { return stop_; })) return;
  }
}

}  // namespace dstack::ethauth
