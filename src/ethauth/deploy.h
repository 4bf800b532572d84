// Operator tooling: deploy DstackKms/DstackApp to a node (eth_sendTransaction from an unlocked account,
// e.g. ganache) and send admin transactions. Contract artifacts come from contracts/build.js.
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/bytes.h"
#include "base/result.h"
#include "ethauth/abi.h"
#include "ethauth/eth_rpc.h"

namespace dstack::ethauth {

struct Artifact {
  std::string name;
  Bytes bytecode;
  nlohmann::json abi;
};
// Reads <dir>/<name>.json written by contracts/build.js.
Result<Artifact> load_artifact(const std::string& dir, const std::string& name);

// First account of eth_accounts (the node must hold unlocked accounts, as ganache does).
Result<std::string> default_sender(EthRpc& rpc);

// Deploys a contract: creation code || ABI-encoded constructor args (types from ctor_types, e.g.
// "(address,bool)"). Returns the new contract address (0x, lowercase).
Result<std::string> deploy_contract(EthRpc& rpc, const std::string& from, const Artifact& art,
                                    std::string_view ctor_types, const std::vector<abi::Value>& args);
// Sends a state-changing call and waits for the receipt; returns the receipt.
Result<nlohmann::json> send_call(EthRpc& rpc, const std::string& from, const std::string& to,
                                 std::string_view signature, const std::vector<abi::Value>& args);
// eth_call + decode with the given return types, e.g. "(bool,string)".
Result<std::vector<abi::Value>> view_call(EthRpc& rpc, const std::string& to, std::string_view signature,
                                          const std::vector<abi::Value>& args, std::string_view return_types);

struct DeployOptions {
  std::string contracts_dir;                 // where DstackKms.json / DstackApp.json live
  std::string from;                          // empty = first eth_accounts entry
  std::optional<Bytes> compose_hash;         // if set: deploy + register a DstackApp allowing it
  std::optional<Bytes> app_device_id;        // device allowed for the app (else allow_any_device decides)
  bool app_allow_any_device = false;
  bool app_require_tcb_up_to_date = false;
  std::vector<Bytes> os_image_hashes;        // addOsImageHash
  std::vector<Bytes> kms_aggregated_mrs;     // addKmsAggregatedMr
  std::vector<Bytes> kms_device_ids;         // addKmsDevice
  std::string gateway_app_id;                // setGatewayAppId when non-empty
};

struct DeployResult {
  std::string kms_contract_addr;   // EIP-55
  std::string app_id;              // EIP-55, empty when no app was deployed
  std::string app_implementation;  // EIP-55 address of the DstackApp template
  std::string owner;               // deployer account
  uint64_t chain_id = 0;
  nlohmann::json to_json() const;
};

// Deploys a DstackApp template (recorded as appImplementation), DstackKms owned by the sender, optionally a
// registered DstackApp (via deployAndRegisterApp), and applies the allow-lists.
Result<DeployResult> deploy_all(EthRpc& rpc, const DeployOptions& opts);

// Parses a 32-byte hex value (optional 0x; shorter values are left-padded), for CLI arguments.
Result<Bytes> parse_bytes32(std::string_view s);

}  // namespace dstack::ethauth
