#include "auth/auth.h"

#include <spdlog/spdlog.h>

#include <algorithm>

#include "base/fs.h"
#include "rpc/http.h"

namespace dstack::auth {

using nlohmann::json;

static int64_t now_unix() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

Result<AuthInfo> parse_auth_info(const json& j) {
  if (!j.is_object()) return make_error("auth info is not a JSON object");
  AuthInfo info;
  auto need_str = [&](const char* k, std::string& out) -> Status {
    auto it = j.find(k);
    if (it == j.end() || !it->is_string()) return make_error(std::string("auth info lacks string field '") + k + "'");
    out = it->get<std::string>();
    return Status::Ok();
  };
  TRY(need_str("status", info.status));
  TRY(need_str("kmsContractAddr", info.kms_contract_addr));
  TRY(need_str("gatewayAppId", info.gateway_app_id));
  if (auto it = j.find("appImplementation"); it != j.end() && it->is_string()) {
    info.app_implementation = it->get<std::string>();
  } else if (auto it2 = j.find("appAuthImplementation"); it2 != j.end() && it2->is_string()) {
    info.app_implementation = it2->get<std::string>();
  } else {
    return make_error("auth info lacks string field 'appImplementation'");
  }
  auto cid = j.find("chainId");
  if (cid == j.end()) return make_error("auth info lacks field 'chainId'");
  if (cid->is_number_unsigned()) {
    info.chain_id = cid->get<uint64_t>();
  } else if (cid->is_number_integer() && cid->get<int64_t>() >= 0) {
    info.chain_id = static_cast<uint64_t>(cid->get<int64_t>());
  } else if (cid->is_string()) {
    try {
      info.chain_id = std::stoull(cid->get<std::string>());
    } catch (...) {
      return make_error("auth info field 'chainId' is not a number");
    }
  } else {
    return make_error("auth info field 'chainId' is not a number");
  }
  if (auto it = j.find("ethRpcUrl"); it != j.end() && it->is_string()) info.eth_rpc_url = it->get<std::string>();
  return info;
}

// ---------------- dev ----------------

Result<AuthDecision> DevAuth::auth_app(const BootInfo&) { return AuthDecision{true, "", gateway_app_id_}; }
Result<AuthDecision> DevAuth::auth_kms(const BootInfo&) { return AuthDecision{true, "", gateway_app_id_}; }
InfoSnapshot DevAuth::info() const {
  InfoSnapshot s;
  AuthInfo i;
  i.status = "ok";
  i.gateway_app_id = gateway_app_id_;
  s.info = i;
  s.fresh = true;
  s.version = 1;
  s.last_success_unix = now_unix();
  return s;
}

// ---------------- webhook ----------------

static std::string trim_slash(std::string s) {
  while (!s.empty() && s.back() == '/') s.pop_back();
  return s;
}

WebhookAuth::WebhookAuth(WebhookOptions opts) : opts_(std::move(opts)) {
  opts_.url = trim_slash(opts_.url);
  thread_ = std::thread([this] { refresh_loop(); });
}

WebhookAuth::~WebhookAuth() {
  {
    std::lock_guard lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

InfoSnapshot WebhookAuth::info() const {
  std::lock_guard lk(mu_);
  return snap_;
}

bool WebhookAuth::wait_first_refresh(std::chrono::milliseconds timeout) const {
  std::unique_lock lk(mu_);
  return cv_.wait_for(lk, timeout, [&] { return snap_.version > 0; });
}

void WebhookAuth::refresh_loop() {
  for (;;) {
    rpc::ClientOptions co;
    co.timeout = opts_.info_timeout;
    co.headers["user-agent"] = opts_.user_agent;
    auto r = rpc::http_request("GET", opts_.url + "/", "", co);
    std::string err;
    std::optional<AuthInfo> parsed;
    if (!r.ok()) {
      err = r.error().message;
    } else if (r->status < 200 || r->status >= 300) {
      err = "HTTP " + std::to_string(r->status) + " from " + opts_.url;
    } else {
      auto j = json::parse(r->body, nullptr, false);
      auto p = parse_auth_info(j);
      if (p.ok()) parsed = std::move(p).value();
      else err = p.error().message;
    }
    bool ok;
    {
      std::lock_guard lk(mu_);
      if (parsed) {
        if (!snap_.fresh) spdlog::info("auth webhook info refreshed from {}", opts_.url);
        snap_.info = std::move(parsed);
        snap_.fresh = true;
        snap_.last_error.clear();
        snap_.last_success_unix = now_unix();
      } else {
        if (snap_.fresh || snap_.version == 0)
          spdlog::warn("auth webhook GET {} failed ({}); GetMeta serves {} info", opts_.url, err,
                       snap_.info ? "stale" : "no");
        snap_.fresh = false;
        snap_.last_error = "GET " + opts_.url + "/ failed: " + err;
      }
      snap_.version++;
      ok = snap_.fresh;
    }
    cv_.notify_all();
    std::unique_lock lk(mu_);
    if (cv_.wait_for(lk, ok ? opts_.refresh_interval : opts_.retry_interval, [&] { return stop_; })) return;
  }
}

Result<AuthDecision> WebhookAuth::post(const std::string& path, const BootInfo& boot) {
  rpc::ClientOptions co;
  co.timeout = opts_.auth_timeout;
  co.headers["user-agent"] = opts_.user_agent;
  std::string url = opts_.url + path;
  auto r = rpc::http_request("POST", url, boot.to_webhook_json().dump(), co);
  if (!r.ok()) return r.error().wrap("auth webhook " + url + " unreachable or timed out (" +
                                     std::to_string(opts_.auth_timeout.count()) + " ms limit)");
  if (r->status < 200 || r->status >= 300)
    return make_error("auth webhook " + url + " answered HTTP " + std::to_string(r->status) + ": " +
                      r->body.substr(0, 200));
  auto j = json::parse(r->body, nullptr, false);
  if (!j.is_object() || !j.contains("isAllowed") || !j["isAllowed"].is_boolean() || !j.contains("reason") ||
      !j["reason"].is_string() || !j.contains("gatewayAppId") || !j["gatewayAppId"].is_string())
    return make_error("auth webhook " + url +
                      " answered malformed JSON (need isAllowed:bool, reason:string, gatewayAppId:string)");
  return AuthDecision{j["isAllowed"].get<bool>(), j["reason"].get<std::string>(), j["gatewayAppId"].get<std::string>()};
}

Result<AuthDecision> WebhookAuth::auth_app(const BootInfo& boot) { return post("/bootAuth/app", boot); }
Result<AuthDecision> WebhookAuth::auth_kms(const BootInfo& boot) { return post("/bootAuth/kms", boot); }

// ---------------- file policy ----------------

static std::string norm_hex(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  if (s.rfind("0x", 0) == 0) s = s.substr(2);
  return s;
}

static bool list_contains(const json& arr, const std::string& hex_value) {
  if (!arr.is_array()) return false;
  std::string want = norm_hex(hex_value);
  for (const auto& v : arr)
    if (v.is_string() && norm_hex(v.get<std::string>()) == want) return true;
  return false;
}

static std::vector<std::string> string_list(const json& cfg, const char* key, std::vector<std::string> dflt) {
  auto it = cfg.find(key);
  if (it == cfg.end() || !it->is_array()) return dflt;
  std::vector<std::string> out;
  for (const auto& v : *it)
    if (v.is_string()) out.push_back(v.get<std::string>());
  return out;
}

static bool device_ok(const json& section, const BootInfo& b) {
  if (section.value("allowAnyDevice", false)) return true;
  auto it = section.find("devices");
  if (it == section.end() || !it->is_array() || it->empty()) return true;
  return list_contains(*it, to_hex(b.device_id));
}

Result<AuthDecision> evaluate_policy(const json& cfg, const BootInfo& b, bool is_kms) {
  if (!cfg.is_object()) return make_error("auth policy is not a JSON object");
  std::string gw = cfg.value("gatewayAppId", std::string());
  auto deny = [&](std::string reason) { return AuthDecision{false, std::move(reason), gw}; };
  auto tcb = string_list(cfg, "allowedTcbStatuses", {"UpToDate"});
  if (std::find(tcb.begin(), tcb.end(), b.tcb_status) == tcb.end()) return deny("TCB status is not allowed");
  auto adv = string_list(cfg, "allowedAdvisoryIds", {});
  for (const auto& a : b.advisory_ids)
    if (std::find(adv.begin(), adv.end(), a) == adv.end()) return deny("advisory ID is not allowed");
  if (!list_contains(cfg.value("osImages", json::array()), to_hex(b.os_image_hash)))
    return deny("OS image is not allowed");
  if (is_kms) {
    json kms = cfg.value("kms", json::object());
    if (!list_contains(kms.value("mrAggregated", json::array()), to_hex(b.mr_aggregated)))
      return deny("aggregated MR not allowed");
    if (!device_ok(kms, b)) return deny("KMS is not allowed to boot on this device");
  } else {
    json apps = cfg.value("apps", json::object());
    const json* app = nullptr;
    std::string want = to_hex(b.app_id);
    if (apps.is_object())
      for (auto it = apps.begin(); it != apps.end(); ++it)
        if (norm_hex(it.key()) == want) app = &it.value();
    if (!app || !app->is_object()) return deny("app not registered");
    if (!list_contains(app->value("composeHashes", json::array()), to_hex(b.compose_hash)))
      return deny("compose hash not allowed");
    if (!device_ok(*app, b)) return deny("app is not allowed to boot on this device");
  }
  return AuthDecision{true, "", gw};
}

Result<AuthDecision> FilePolicyAuth::decide(const BootInfo& boot, bool is_kms) const {
  auto text = read_file(path_);
  if (!text.ok()) return text.error().wrap("auth policy file (check [core.auth_api.file] path)");
  auto cfg = json::parse(*text, nullptr, false);
  if (cfg.is_discarded()) return make_error("auth policy file " + path_ + " is not valid JSON");
  return evaluate_policy(cfg, boot, is_kms);
}

Result<AuthDecision> FilePolicyAuth::auth_app(const BootInfo& boot) { return decide(boot, false); }
Result<AuthDecision> FilePolicyAuth::auth_kms(const BootInfo& boot) { return decide(boot, true); }

InfoSnapshot FilePolicyAuth::info() const {
  InfoSnapshot s;
  s.version = 1;
  auto text = read_file(path_);
  json cfg = text.ok() ? json::parse(*text, nullptr, false) : json();
  if (!cfg.is_object()) {
    s.last_error = text.ok() ? "auth policy file " + path_ + " is not valid JSON" : text.error().message;
    return s;
  }
  AuthInfo i;
  i.status = "ok";
  i.kms_contract_addr = cfg.value("kmsContractAddr", std::string("0x0000000000000000000000000000000000000000"));
  i.gateway_app_id = cfg.value("gatewayAppId", std::string());
  i.chain_id = cfg.value("chainId", uint64_t{0});
  i.app_implementation = cfg.value("appImplementation", std::string("0x0000000000000000000000000000000000000000"));
  s.info = i;
  s.fresh = true;
  s.last_success_unix = now_unix();
  return s;
}

}  // namespace dstack::auth
