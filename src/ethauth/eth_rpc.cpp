#include "ethauth/eth_rpc.h"

#include <algorithm>
#include <atomic>
#include <sstream>
#include <thread>

#include "ethauth/abi.h"
#include "base/log.h"
#include "crypto/hash.h"
#include "rpc/http.h"

namespace dstack::ethauth {

using nlohmann::json;
using std::chrono::duration_cast;
using std::chrono::milliseconds;

std::string to_0x(ByteView b) { return "0x" + to_hex(b); }

Result<Bytes> parse_address(std::string_view s) {
  TRY_ASSIGN(Bytes b, from_hex(s));
  if (b.size() != 20) return make_error("address '" + std::string(s) + "' must be 20 bytes of hex");
  return b;
}

Result<uint64_t> parse_quantity(const json& j) {
  if (!j.is_string()) return make_error("JSON-RPC quantity is not a string: " + j.dump());
  std::string s = j.get<std::string>();
  if (s.size() < 3 || s[0] != '0' || (s[1] != 'x' && s[1] != 'X') || s.size() > 18)
    return make_error("invalid JSON-RPC quantity '" + s + "'");
  uint64_t v = 0;
  for (size_t i = 2; i < s.size(); ++i) {
    char c = s[i];
    int d = (c >= '0' && c <= '9') ? c - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10 : (c >= 'A' && c <= 'F') ? c - 'A' + 10 : -1;
    if (d < 0) return make_error("invalid JSON-RPC quantity '" + s + "'");
    v = (v << 4) | static_cast<uint64_t>(d);
  }
  return v;
}

std::string to_checksum_address(ByteView addr20) {
  std::string lower = to_hex(addr20);
  Bytes h = crypto::keccak256(as_view(lower));
  std::string out = "0x";
  for (size_t i = 0; i < lower.size(); ++i) {
    uint8_t nibble = (i % 2 == 0) ? (h[i / 2] >> 4) : (h[i / 2] & 0x0f);
    char c = lower[i];
    out += (c >= 'a' && c <= 'f' && nibble >= 8) ? static_cast<char>(c - 'a' + 'A') : c;
  }
  return out;
}

std::string redact_url(const std::string& url) {
  size_t scheme_end = url.find("://");
  if (scheme_end == std::string::npos) return url.substr(0, url.find_first_of("/?#"));
  size_t host_start = scheme_end + 3;
  size_t host_end = url.find_first_of("/?#", host_start);
  std::string host = url.substr(host_start, host_end == std::string::npos ? std::string::npos : host_end - host_start);
  size_t at = host.rfind('@');
  if (at != std::string::npos) host = host.substr(at + 1);
  return url.substr(0, host_start) + host;
}

EthRpc::EthRpc(std::string url, EthRpcOptions opts) : url_(std::move(url)), opts_(opts) {}

Result<json> EthRpc::call(const std::string& method, json params, std::optional<Clock::time_point> deadline) {
  static std::atomic<uint64_t> next_id{1};
  const auto dl = deadline.value_or(Clock::now() + opts_.budget);
  json req = {{"jsonrpc", "2.0"}, {"id", next_id++}, {"method", method}, {"params", std::move(params)}};
  const std::string body = req.dump();
  const std::string where = method + " at " + redact_url(url_);
  milliseconds backoff = opts_.initial_backoff;
  std::string last_err = "deadline passed before the first attempt";
  for (int attempt = 1; attempt <= std::max(1, opts_.max_attempts); ++attempt) {
    auto remaining = duration_cast<milliseconds>(dl - Clock::now());
    if (remaining.count() <= 0) break;
    rpc::ClientOptions co;
    co.timeout = std::min(opts_.attempt_timeout, remaining);
    co.body_limit = 16 * 1024 * 1024;
    auto resp = rpc::http_request("POST", url_, body, co);
    bool retry = false;
    if (!resp.ok()) {
      last_err = resp.error().message;
      retry = true;
    } else if (resp->status == 429 || resp->status >= 500) {
      last_err = "HTTP " + std::to_string(resp->status) + (resp->status == 429 ? " (rate limited)" : "");
      retry = true;
    } else if (resp->status != 200) {
      return make_error(where + ": HTTP " + std::to_string(resp->status) + ": " + resp->body.substr(0, 200));
    } else {
      json j = json::parse(resp->body, nullptr, false);
      if (j.is_discarded() || !j.is_object())
        return make_error(where + ": response is not a JSON-RPC object: " + resp->body.substr(0, 200));
      if (j.contains("error") && !j["error"].is_null()) {
        const json& e = j["error"];
        struct {
          int64_t code = 0;
          std::string message, data;
        } info;
        if (e.is_object()) {
          info.code = e.value("code", int64_t{0});
          info.message = e.value("message", std::string());
          if (e.contains("data")) {
            const json& d = e["data"];
            if (d.is_string()) info.data = d.get<std::string>();
            else if (d.is_object() && d.contains("result") && d["result"].is_string()) info.data = d["result"].get<std::string>();
          }
        } else {
          info.message = e.dump();
        }
        std::string msg = where + ": node returned error " + std::to_string(info.code) + ": " + info.message;
        if (!info.data.empty()) {
          auto data = from_hex(info.data);
          if (data.ok()) {
            auto reason = abi::decode_revert_reason(*data);
            if (reason.ok() && msg.find(*reason) == std::string::npos) msg += " (revert reason: " + *reason + ")";
          }
        }
        return make_error(msg);
      }
      if (!j.contains("result")) return make_error(where + ": JSON-RPC response has neither result nor error");
      return j["result"];
    }
    if (!retry) break;
    spdlog::debug("eth rpc {}: attempt {} failed: {}", where, attempt, last_err);
    auto left = duration_cast<milliseconds>(dl - Clock::now());
    if (attempt == opts_.max_attempts || left <= backoff) break;
    std::this_thread::sleep_for(backoff);
    backoff = std::min(backoff * 2, opts_.max_backoff);
  }
  return make_error(where + " failed within the " +
                    std::to_string(duration_cast<milliseconds>(opts_.budget).count()) +
                    " ms budget: " + last_err + " (check ETH_RPC_URL, node health and rate limits)");
}

Result<uint64_t> EthRpc::chain_id(std::optional<Clock::time_point> deadline) {
  TRY_ASSIGN(json r, call("eth_chainId", json::array(), deadline));
  return parse_quantity(r);
}

Result<std::vector<std::string>> EthRpc::accounts(std::optional<Clock::time_point> deadline) {
  TRY_ASSIGN(json r, call("eth_accounts", json::array(), deadline));
  if (!r.is_array()) return make_error("eth_accounts: result is not an array");
  std::vector<std::string> out;
  for (const auto& a : r) {
    if (!a.is_string()) return make_error("eth_accounts: non-string entry");
    out.push_back(a.get<std::string>());
  }
  return out;
}

Result<Bytes> EthRpc::eth_call(const std::string& to, ByteView data, std::optional<Clock::time_point> deadline) {
  json params = json::array({json{{"to", to}, {"data", to_0x(data)}}, "latest"});
  TRY_ASSIGN(json r, call("eth_call", std::move(params), deadline));
  if (!r.is_string()) return make_error("eth_call: result is not a hex string");
  auto b = from_hex(r.get<std::string>());
  if (!b.ok()) return b.error().wrap("eth_call result");
  return b;
}

Result<std::string> EthRpc::send_transaction(json tx, std::optional<Clock::time_point> deadline) {
  const auto dl = deadline.value_or(Clock::now() + opts_.budget);
  if (!tx.contains("gas")) {
    TRY_ASSIGN(json est, call("eth_estimateGas", json::array({tx}), dl));
    TRY_ASSIGN(uint64_t gas, parse_quantity(est));
    std::ostringstream os;
    os << "0x" << std::hex << (gas + gas / 4 + 21000);
    tx["gas"] = os.str();
  }
  TRY_ASSIGN(json r, call("eth_sendTransaction", json::array({tx}), dl));
  if (!r.is_string()) return make_error("eth_sendTransaction: result is not a transaction hash");
  return r.get<std::string>();
}

Result<json> EthRpc::get_transaction_receipt(const std::string& tx_hash, std::optional<Clock::time_point> deadline) {
  return call("eth_getTransactionReceipt", json::array({tx_hash}), deadline);
}

Result<json> EthRpc::wait_for_receipt(const std::string& tx_hash, std::chrono::milliseconds timeout) {
  const auto dl = Clock::now() + timeout;
  milliseconds poll{20};
  while (true) {
    auto per_call = std::min(Clock::now() + opts_.budget, dl);
    TRY_ASSIGN(json r, get_transaction_receipt(tx_hash, per_call));
    if (!r.is_null()) {
      if (r.value("status", std::string("0x1")) == "0x0")
        return make_error("transaction " + tx_hash + " reverted (status 0x0)");
      return r;
    }
    if (Clock::now() + poll >= dl) return make_error("transaction " + tx_hash + " not mined within timeout");
    std::this_thread::sleep_for(poll);
    poll = std::min(poll * 2, milliseconds(500));
  }
}

Result<json> EthRpc::transact(json tx, std::chrono::milliseconds timeout) {
  TRY_ASSIGN(std::string hash, send_transaction(std::move(tx)));
  return wait_for_receipt(hash, timeout);
}

}  // namespace dstack::ethauth
