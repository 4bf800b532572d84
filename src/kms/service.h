// The KMS main service (spec §2.2 service KMS) mounted at /prpc with trim prefix "KMS.", plus /health and
// /metrics. Attested methods take the caller's identity only from its verified RA-TLS client certificate.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "auth/auth.h"
#include "kms/cert_store.h"
#include "kms/config.h"
#include "kms/keys.h"
#include "kms/platform.h"
#include "rpc/prpc.h"

namespace dstack::kms {

struct KmsContext {
  KmsConfig cfg;
  RootKeys keys;
  std::optional<BootstrapInfo> bootstrap_info;  // from bootstrap-info.json
  std::shared_ptr<auth::AuthBackend> auth;
  std::shared_ptr<Attester> attester;           // null when attest_rpc_cert=false
  std::shared_ptr<Verifier> verifier;
};

class KmsService {
 public:
  explicit KmsService(KmsContext ctx);
  // Routes: /prpc/<Method>, /prpc/KMS.<Method>, GET /health, GET /metrics (if enabled).
  void mount(rpc::HttpServer& server);

  // GetMeta body (compact JSON). Never touches the network; cached while the auth info is unchanged.
  std::string get_meta_body();
  Result<rpc::Json> get_app_key(const rpc::Json& req, const rpc::HttpRequest& http);
  Result<rpc::Json> get_kms_key(const rpc::Json& req, const rpc::HttpRequest& http);
  Result<rpc::Json> get_app_env_encrypt_pubkey(const rpc::Json& req);
  Result<rpc::Json> get_temp_ca_cert();
  Result<rpc::Json> sign_cert(const rpc::Json& req);
  std::string metrics_text() const;
  // Requests answered from memory without blocking (GetMeta, /health): safe for ServerOptions::run_inline.
  static bool non_blocking(const rpc::HttpRequest& req);

 private:
  Status self_authorize();
  Result<auth::BootInfo> verify_caller(const rpc::HttpRequest& http);

  KmsContext ctx_;
  rpc::PrpcService prpc_{"KMS."};
  std::string ca_pem_, tmp_ca_pem_, tmp_ca_key_pem_, k256_pub_hex_, bootstrap_json_;

  std::mutex meta_mu_;
  std::shared_ptr<const std::string> meta_body_;
  uint64_t meta_version_ = ~0ull;
  int64_t meta_built_ms_ = 0;

  std::mutex self_mu_;
  std::optional<auth::BootInfo> self_boot_;

  std::atomic<uint64_t> att_requests_{0}, att_failures_{0}, getmeta_requests_{0};
};

}  // namespace dstack::kms
