// The guest agent's RPC logic (spec §7.2-7.4) as plain functions JSON -> Result<JSON>, independent of HTTP.
// `serve()` in server.h mounts them: dstack.sock "/<Method>", tappd.sock "/prpc/Tappd.<Method>", external TCP
// "/prpc/Worker.<Method>" + GET /health.
#pragma once

#include <nlohmann/json.hpp>

#include <memory>
#include <string>

#include "base/result.h"
#include "guest/backend.h"
#include "guest/config.h"
#include "guest/event_log.h"
#include "guest/keys.h"
#include "crypto/p256.h"

namespace dstack::guest {

using Json = nlohmann::json;

inline constexpr const char* kAgentVersion = "0.5.8";  // API level we implement (SDK feature gates)
inline constexpr size_t kMaxRequestBody = 10 * 1024 * 1024;

class GuestService {
 public:
  // Builds the backend from config (auto: tdx only if the configfs-tsm dir exists, else simulator), loads or
  // (simulator, no keys file) generates the app keys, and on the simulator emits the boot events once.
  static Result<std::unique_ptr<GuestService>> create(const AgentConfig& cfg);
  GuestService(AgentConfig cfg, std::unique_ptr<TdxBackend> backend, AppKeys keys, std::string compose_text,
               std::string vm_config);

  // DstackGuest (dstack.sock)
  Result<Json> get_quote(const Json& req);
  Result<Json> attest(const Json& req);
  Result<Json> get_key(const Json& req);
  Result<Json> get_tls_key(const Json& req);
  Result<Json> info(bool external = false);
  Result<Json> sign(const Json& req);
  Result<Json> verify(const Json& req);
  Result<Json> version();
  Result<Json> emit_event(const Json& req);
  // Worker (external): quote whose report data commits to the app signing key (spec §7.4).
  Result<Json> get_attestation_for_app_key(const Json& req);
  // Tappd (tappd.sock)
  Result<Json> tdx_quote(const Json& req);
  Result<Json> raw_quote(const Json& req);
  Result<Json> derive_key(const Json& req);
  Result<Json> derive_k256_key(const Json& req);

  // Dispatch by service ("dstack" | "tappd" | "worker") and bare method name; unknown => Error.
  Result<Json> call(const std::string& service, const std::string& method, const Json& req);

  // Emits the simulator boot events (system-preparing ... system-ready) if the runtime log is empty.
  Status emit_boot_events_if_needed(const Bytes& app_id, const Bytes& instance_id);

  TdxBackend& backend() { return *backend_; }
  RuntimeEventLog& event_log() { return log_; }
  const AppKeys& keys() const { return keys_; }
  const AgentConfig& config() const { return cfg_; }

 private:
  struct QuoteBundle {
    Bytes quote;
    Bytes report_data;
    std::vector<attest::TdxEvent> boot_events;
    std::vector<attest::RuntimeEvent> runtime_events;
  };
  Result<QuoteBundle> quote_with_log(ByteView report_data64);
  std::string event_log_json(const QuoteBundle& q) const;
  // GetQuoteResponse JSON (quote, event_log, report_data, vm_config) for a padded 64-byte report_data.
  Result<Json> quote_response(ByteView report_data64);
  Result<Bytes> attestation_bytes(ByteView report_data64);
  struct DerivedKey {
    Bytes key;
    Bytes public_key;
    std::vector<Bytes> chain;
  };
  Result<DerivedKey> derive_app_key(const std::string& path, const std::string& purpose, const std::string& algo);
  Result<Json> issue_tls(const crypto::P256Key& key, const Json& req, bool ra_tls, bool server_auth,
                         bool client_auth, std::optional<int64_t> nb, std::optional<int64_t> na);

  AgentConfig cfg_;
  std::unique_ptr<TdxBackend> backend_;
  RuntimeEventLog log_;
  AppKeys keys_;
  std::string compose_text_;
  std::string vm_config_;
};

}  // namespace dstack::guest
