// Small C++ client for the guest agent's dstack.sock API (spec §7.2), used e.g. by the KMS for its own
// attestation. Transport: rpc::http_request("POST", "unix:<socket>:/<Method>", json).
#pragma once

#include <nlohmann/json.hpp>

#include <chrono>
#include <string>
#include <vector>

#include "base/bytes.h"
#include "base/result.h"

namespace dstack::guest {

struct QuoteResult {
  Bytes quote;
  std::string event_log;   // JSON array text
  Bytes report_data;       // 64 B
  std::string vm_config;
  Bytes attestation;       // may be empty (TDX)
};

struct KeyResult {
  Bytes key;
  std::vector<Bytes> signature_chain;
};

struct TlsKeyResult {
  std::string key_pem;
  std::vector<std::string> certificate_chain;
};

struct TlsKeyArgs {
  std::string subject;
  std::vector<std::string> alt_names;
  bool usage_ra_tls = false;
  bool usage_server_auth = false;
  bool usage_client_auth = false;
};

class GuestClient {
 public:
  // endpoint: "unix:/path/dstack.sock" or "/path/dstack.sock" or "http://host:port" (TCP base).
  // Empty => env DSTACK_AGENT_ADDRESS, else /var/run/dstack/dstack.sock if present, else /var/run/dstack.sock.
  explicit GuestClient(std::string endpoint = "", std::chrono::milliseconds timeout = std::chrono::seconds(30));

  const std::string& endpoint() const { return endpoint_; }

  // Raw call: POST /<method> with a JSON body; HTTP 400 => Error carrying the agent's "error" text.
  Result<nlohmann::json> call(const std::string& method, const nlohmann::json& request = nlohmann::json::object()) const;

  Result<QuoteResult> get_quote(ByteView report_data) const;       // report_data <= 64 bytes
  Result<Bytes> attest(ByteView report_data) const;                // VersionedAttestation bytes
  Result<nlohmann::json> info() const;                              // AppInfo JSON (spec §7.2)
  Result<KeyResult> get_key(const std::string& path, const std::string& purpose = "",
                            const std::string& algorithm = "secp256k1") const;
  Result<TlsKeyResult> get_tls_key(const TlsKeyArgs& args) const;
  Status emit_event(const std::string& event, ByteView payload) const;

 private:
  std::string endpoint_;
  std::chrono::milliseconds timeout_;
};

}  // namespace dstack::guest
