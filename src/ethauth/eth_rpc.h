// Ethereum JSON-RPC client over rpc::http_request. Every request has a per-attempt timeout and a total
// deadline; HTTP 429, 5xx and transport failures are retried with exponential backoff until the deadline.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/bytes.h"
#include "base/result.h"

namespace dstack::ethauth {

using Clock = std::chrono::steady_clock;

struct EthRpcOptions {
  std::chrono::milliseconds attempt_timeout{2000};  // one HTTP round trip
  std::chrono::milliseconds budget{5000};           // total per call when no explicit deadline is given
  std::chrono::milliseconds initial_backoff{100};   // doubled per retry, capped at max_backoff
  std::chrono::milliseconds max_backoff{1000};
  int max_attempts = 5;
};

class EthRpc {
 public:
  explicit EthRpc(std::string url, EthRpcOptions opts = {});

  const std::string& url() const { return url_; }
  const EthRpcOptions& options() const { return opts_; }

  // Raw JSON-RPC call; returns `result`. deadline defaults to now + options().budget.
  Result<nlohmann::json> call(const std::string& method, nlohmann::json params,
                              std::optional<Clock::time_point> deadline = std::nullopt);

  Result<uint64_t> chain_id(std::optional<Clock::time_point> deadline = std::nullopt);
  Result<std::vector<std::string>> accounts(std::optional<Clock::time_point> deadline = std::nullopt);
  // eth_call against "latest"; `to` is a 0x address. Reverts come back as errors carrying the reason.
  Result<Bytes> eth_call(const std::string& to, ByteView data, std::optional<Clock::time_point> deadline = std::nullopt);
  // Fills `gas` via eth_estimateGas (+25%) when absent; returns the transaction hash.
  Result<std::string> send_transaction(nlohmann::json tx, std::optional<Clock::time_point> deadline = std::nullopt);
  // null JSON when not yet mined.
  Result<nlohmann::json> get_transaction_receipt(const std::string& tx_hash,
                                                 std::optional<Clock::time_point> deadline = std::nullopt);
  // Polls for the receipt until `timeout`; error if the tx reverted (status 0x0) or never got mined.
  Result<nlohmann::json> wait_for_receipt(const std::string& tx_hash, std::chrono::milliseconds timeout);
  // send_transaction + wait_for_receipt.
  Result<nlohmann::json> transact(nlohmann::json tx, std::chrono::milliseconds timeout = std::chrono::seconds(30));

 private:
  std::string url_;
  EthRpcOptions opts_;
};

// "0x" + lowercase hex.
std::string to_0x(ByteView b);
// Parses a hex address (with/without 0x) into 20 bytes.
Result<Bytes> parse_address(std::string_view s);
// Parses a JSON-RPC quantity ("0x1a") into uint64.
Result<uint64_t> parse_quantity(const nlohmann::json& j);
// EIP-55 mixed-case checksum form of a 20-byte address ("0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed").
std::string to_checksum_address(ByteView addr20);
// "scheme://host[:port]" of a URL, dropping path/query/userinfo (RPC URLs often carry API keys in the path).
std::string redact_url(const std::string& url);

}  // namespace dstack::ethauth
