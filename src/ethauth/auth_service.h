// auth-eth webhook (spec §6.1/§6.3): answers the KMS's boot authorization questions by eth_call into the
// DstackKms contract. Backend failures become a deny with reason "authorization backend unavailable" within
// the configured budget; GET / is served from a cache refreshed in the background, so it never waits on the chain.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/bytes.h"
#include "base/result.h"
#include "ethauth/abi.h"
#include "ethauth/eth_rpc.h"
#include "rpc/http.h"

namespace dstack::ethauth {

inline constexpr const char* kBackendUnavailable = "authorization backend unavailable";

struct AuthEthConfig {
  std::string eth_rpc_url = "http://localhost:8545";
  std::string kms_contract_addr;                       // required for serve
  std::string host = "127.0.0.1";
  uint16_t port = 8000;
  // Total time for one /bootAuth answer. Below dstack-kms's default webhook timeout (5 s), so the KMS gets our
  // explicit deny ("authorization backend unavailable") rather than a timeout of its own.
  std::chrono::milliseconds budget{4000};
  std::chrono::milliseconds attempt_timeout{1500};     // one HTTP round trip to the node
  std::chrono::seconds info_ttl{60};                   // GET / cache refresh period
  std::chrono::milliseconds info_retry{2000};          // refresh period while the backend is failing
  int server_threads = 8;
};

// Config file (TOML or JSON, by extension; keys as in AuthEthConfig: eth_rpc_url, kms_contract_addr, host,
// port, budget_ms, attempt_timeout_ms, info_ttl_s, info_retry_ms, server_threads). Unknown keys are errors.
Status load_config_file(const std::string& path, AuthEthConfig& cfg);
// Env ETH_RPC_URL, KMS_CONTRACT_ADDR, HOST, PORT, AUTH_ETH_BUDGET_MS override the config.
Status apply_env(AuthEthConfig& cfg);

// BootInfo of spec §6.1 after schema validation; byte fields left-padded to their sizes.
struct BootInfo {
  Bytes app_id, compose_hash, instance_id, device_id, mr_aggregated, mr_system, os_image_hash;
  std::string tcb_status;
  std::vector<std::string> advisory_ids;
};
// Validates the §6.3 schema: required mrAggregated, osImageHash, appId, composeHash, instanceId, deviceId
// (hex, optional 0x, at most the field size); optional tcbStatus, advisoryIds, mrSystem. Errors name the field.
Result<BootInfo> parse_boot_info(const nlohmann::json& body);
// The AppBootInfo tuple of spec §6.4, in field order.
abi::Value boot_info_tuple(const BootInfo& b);
inline constexpr const char* kAppBootInfoTuple =
    "(address,bytes32,address,bytes32,bytes32,bytes32,bytes32,string,string[])";

struct AuthDecision {
  bool is_allowed = false;
  std::string reason;
  std::string gateway_app_id;
  nlohmann::json to_json() const;
};

struct ChainInfo {
  uint64_t chain_id = 0;
  std::string gateway_app_id;
  std::string app_implementation;  // EIP-55
};

class AuthEthService {
 public:
  explicit AuthEthService(AuthEthConfig cfg);
  ~AuthEthService();
  AuthEthService(const AuthEthService&) = delete;
  AuthEthService& operator=(const AuthEthService&) = delete;

  // Errors when the config cannot work (bad contract address); call before serving.
  static Result<std::unique_ptr<AuthEthService>> create(AuthEthConfig cfg);

  // Contract decision; on any backend failure a deny with kBackendUnavailable (never an error).
  AuthDecision boot_auth(bool kms, const BootInfo& info);
  // Reads chainId, gatewayAppId(), appImplementation() from the chain.
  Result<ChainInfo> fetch_chain_info(Clock::time_point deadline);

  rpc::HttpResponse handle_info();
  rpc::HttpResponse handle_boot_auth(bool kms, const rpc::HttpRequest& req);
  void register_routes(rpc::HttpServer& server);

  // Background refresher of the GET / cache (first refresh immediately). Idempotent.
  void start_refresher();
  void stop_refresher();

  const AuthEthConfig& config() const { return cfg_; }

 private:
  void refresher_loop();

  AuthEthConfig cfg_;
  Bytes kms_addr_;
  std::string kms_addr_0x_;
  EthRpc rpc_;

  std::mutex mu_;
  std::condition_variable cv_;
  std::optional<ChainInfo> info_;
  std::string info_error_ = "not fetched yet";
  bool stop_ = false;
  std::thread refresher_;
};

}  // namespace dstack::ethauth
