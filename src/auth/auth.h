// Auth backends consulted by the KMS before it hands out keys (spec §6): dev (allow all), webhook
// (HTTP JSON, fail closed) and a built-in file policy equivalent to auth-simple (§6.2).
#pragma once

#include <nlohmann/json.hpp>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "base/bytes.h"
#include "base/result.h"
#include "ratls/ratls.h"

namespace dstack::auth {

// What the KMS knows about a booting CVM, taken only from its verified attestation (spec §6.1). One struct
// for the whole stack: ratls::BootInfo (its to_webhook_json() is the webhook wire form, camelCase, hex without 0x).
using BootInfo = ratls::BootInfo;

struct AuthDecision {
  bool is_allowed = false;
  std::string reason;
  std::string gateway_app_id;
};

// The webhook's `GET /` answer (spec §6.1).
struct AuthInfo {
  std::string status;
  std::string kms_contract_addr;
  std::string gateway_app_id;
  uint64_t chain_id = 0;
  std::string app_implementation;
  std::string eth_rpc_url;
};
Result<AuthInfo> parse_auth_info(const nlohmann::json& j);

// A cached view of AuthInfo; never obtained by blocking on the network.
struct InfoSnapshot {
  std::optional<AuthInfo> info;   // last successful answer (may be stale)
  bool fresh = false;             // the last refresh attempt succeeded
  std::string last_error;         // error of the last failed attempt, "" if none
  int64_t last_success_unix = 0;  // 0 = never
  uint64_t version = 0;           // bumps after every refresh attempt
};

class AuthBackend {
 public:
  virtual ~AuthBackend() = default;
  virtual std::string type() const = 0;
  virtual bool is_dev() const { return false; }
  // POST /bootAuth/app and /bootAuth/kms. Network errors, timeouts, non-2xx and malformed answers are errors.
  virtual Result<AuthDecision> auth_app(const BootInfo& boot) = 0;
  virtual Result<AuthDecision> auth_kms(const BootInfo& boot) = 0;
  // Cached info; returns immediately.
  virtual InfoSnapshot info() const = 0;
};

// ---- dev: every boot allowed, is_dev = true ----
class DevAuth : public AuthBackend {
 public:
  explicit DevAuth(std::string gateway_app_id) : gateway_app_id_(std::move(gateway_app_id)) {}
  std::string type() const override { return "dev"; }
  bool is_dev() const override { return true; }
  Result<AuthDecision> auth_app(const BootInfo&) override;
  Result<AuthDecision> auth_kms(const BootInfo&) override;
  InfoSnapshot info() const override;

 private:
  std::string gateway_app_id_;
};

// ---- webhook ----
struct WebhookOptions {
  std::string url;                                       // e.g. http://127.0.0.1:8000
  std::chrono::milliseconds auth_timeout{5000};          // POST /bootAuth/*
  std::chrono::milliseconds info_timeout{3000};          // GET /
  std::chrono::milliseconds refresh_interval{30000};     // info refresh after a success
  std::chrono::milliseconds retry_interval{2000};        // info refresh after a failure
  std::string user_agent = "dstack-kms/0.1.0";
};

class WebhookAuth : public AuthBackend {
 public:
  // Starts a background thread that refreshes `GET <url>` (first attempt immediately).
  explicit WebhookAuth(WebhookOptions opts);
  ~WebhookAuth() override;
  std::string type() const override { return "webhook"; }
  Result<AuthDecision> auth_app(const BootInfo& boot) override;
  Result<AuthDecision> auth_kms(const BootInfo& boot) override;
  InfoSnapshot info() const override;
  // Blocks until at least one refresh attempt finished or `timeout` passed (for startup/tests).
  bool wait_first_refresh(std::chrono::milliseconds timeout) const;

 private:
  Result<AuthDecision> post(const std::string& path, const BootInfo& boot);
  void refresh_loop();
  WebhookOptions opts_;
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  InfoSnapshot snap_;
  bool stop_ = false;
  std::thread thread_;
};

// ---- built-in file policy (auth-simple §6.2); the JSON file is re-read on every request ----
class FilePolicyAuth : public AuthBackend {
 public:
  explicit FilePolicyAuth(std::string path) : path_(std::move(path)) {}
  std::string type() const override { return "file"; }
  Result<AuthDecision> auth_app(const BootInfo& boot) override;
  Result<AuthDecision> auth_kms(const BootInfo& boot) override;
  InfoSnapshot info() const override;

 private:
  Result<AuthDecision> decide(const BootInfo& boot, bool is_kms) const;
  std::string path_;
};

// Pure policy function (exposed for tests): `config` is the auth-simple JSON.
Result<AuthDecision> evaluate_policy(const nlohmann::json& config, const BootInfo& boot, bool is_kms);

}  // namespace dstack::auth
