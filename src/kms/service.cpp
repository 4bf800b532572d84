#include "kms/service.h"

#include "kms/csr.h"
#include "ratls/ratls.h"

#include <spdlog/spdlog.h>

#include <chrono>

namespace dstack::kms {

using rpc::Json;

namespace {
int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}
uint64_t now_unix() {
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count());
}
}  // namespace

KmsService::KmsService(KmsContext ctx) : ctx_(std::move(ctx)) {
  ca_pem_ = ctx_.keys.ca_cert.to_pem();
  tmp_ca_pem_ = ctx_.keys.tmp_ca_cert.to_pem();
  tmp_ca_key_pem_ = ctx_.keys.tmp_ca_key.to_pkcs8_pem();
  k256_pub_hex_ = to_hex(ctx_.keys.k256.public_compressed());
  prpc_.add("GetMeta", [this](const Json&, const rpc::HttpRequest&) -> Result<Json> {
    return Json::parse(get_meta_body());
  });
  prpc_.add("GetAppKey", [this](const Json& r, const rpc::HttpRequest& h) { return get_app_key(r, h); });
  prpc_.add("GetKmsKey", [this](const Json& r, const rpc::HttpRequest& h) { return get_kms_key(r, h); });
  prpc_.add("GetAppEnvEncryptPubKey",
            [this](const Json& r, const rpc::HttpRequest&) { return get_app_env_encrypt_pubkey(r); });
  prpc_.add("GetTempCaCert", [this](const Json&, const rpc::HttpRequest&) { return get_temp_ca_cert(); });
  prpc_.add("SignCert", [this](const Json& r, const rpc::HttpRequest&) { return sign_cert(r); });
}

void KmsService::mount(rpc::HttpServer& server) {
  // Fast path for the hot, public GetMeta: a pre-serialized body, no JSON work per request.
  auto meta = [this](const rpc::HttpRequest& req) {
    if (req.method != "GET" && req.method != "POST")
      return rpc::HttpResponse::error(405, "method " + req.method + " not allowed; use GET or POST");
    getmeta_requests_.fetch_add(1, std::memory_order_relaxed);
    return rpc::HttpResponse::json(200, get_meta_body());
  };
  server.route("*", "/prpc/GetMeta", meta);
  server.route("*", "/prpc/KMS.GetMeta", meta);
  prpc_.mount(server, "/prpc");
  server.route("GET", "/health", [](const rpc::HttpRequest&) { return rpc::HttpResponse::text(200, "OK"); });
  if (ctx_.cfg.metrics_enabled)
    server.route("GET", "/metrics", [this](const rpc::HttpRequest&) {
      auto r = rpc::HttpResponse::text(200, metrics_text());
      r.content_type = "text/plain; version=0.0.4; charset=utf-8";
      return r;
    });
}

std::string KmsService::get_meta_body() {
  auth::InfoSnapshot snap;
  bool need;
  int64_t t = now_ms();
  {
    std::lock_guard lk(meta_mu_);
    // DevAuth/WebhookAuth bump `version` on change; the file policy is re-read at most once a second.
    need = !meta_body_ || t - meta_built_ms_ > 1000;
    if (!need) return *meta_body_;
  }
  snap = ctx_.auth->info();
  {
    std::lock_guard lk(meta_mu_);
    if (meta_body_ && snap.version == meta_version_ && ctx_.auth->type() != "file") {
      meta_built_ms_ = t;
      return *meta_body_;
    }
  }
  Json j;
  j["ca_cert"] = ca_pem_;
  j["allow_any_upgrade"] = ctx_.auth->is_dev();
  j["k256_pubkey"] = k256_pub_hex_;
  if (ctx_.bootstrap_info)
    j["bootstrap_info"] = {{"ca_pubkey", to_hex(ctx_.bootstrap_info->ca_pubkey)},
                           {"k256_pubkey", to_hex(ctx_.bootstrap_info->k256_pubkey)},
                           {"attestation", to_hex(ctx_.bootstrap_info->attestation)}};
  else
    j["bootstrap_info"] = nullptr;
  j["is_dev"] = ctx_.auth->is_dev();
  if (snap.info) {
    j["gateway_app_id"] = snap.info->gateway_app_id;
    j["kms_contract_address"] = snap.info->kms_contract_addr;
    j["chain_id"] = snap.info->chain_id;
    j["app_auth_implementation"] = snap.info->app_implementation;
  } else {
    j["gateway_app_id"] = nullptr;
    j["kms_contract_address"] = nullptr;
    j["chain_id"] = nullptr;
    j["app_auth_implementation"] = nullptr;
  }
  // Extension (not upstream): how current the auth-api fields above are. GetMeta never waits for the webhook.
  Json st = {{"type", ctx_.auth->type()}, {"fresh", snap.fresh}};
  st["last_success_unix"] = snap.last_success_unix ? Json(snap.last_success_unix) : Json(nullptr);
  st["last_error"] = snap.last_error.empty() ? Json(nullptr) : Json(snap.last_error);
  j["auth_api_status"] = st;
  auto body = std::make_shared<const std::string>(j.dump());
  std::lock_guard lk(meta_mu_);
  meta_body_ = body;
  meta_version_ = snap.version;
  meta_built_ms_ = t;
  return *body;
}

Status KmsService::self_authorize() {
  if (!ctx_.cfg.enforce_self_authorization) return Status::Ok();
  auto fail = [](const std::string& why) { return make_error("KMS self authorization failed: " + why); };
  std::optional<auth::BootInfo> boot;
  {
    std::lock_guard lk(self_mu_);
    boot = self_boot_;
  }
  if (!boot) {
    if (!ctx_.attester)
      return fail("no own attestation (attest_rpc_cert = false); set [core] enforce_self_authorization = false "
                  "for a KMS outside a TEE");
    if (!ctx_.verifier) return fail("no attestation verifier configured");
    Bytes zeros(64, 0);
    auto att = ctx_.attester->attest(zeros);
    if (!att.ok()) return fail(att.error().message);
    auto b = ctx_.verifier->verify_attestation(*att, zeros);
    if (!b.ok()) return fail("own attestation does not verify: " + b.error().message);
    std::lock_guard lk(self_mu_);
    self_boot_ = *b;
    boot = *b;
  }
  auto d = ctx_.auth->auth_kms(*boot);
  if (!d.ok()) return fail(d.error().message);
  if (!d->is_allowed) return fail(d->reason);
  return Status::Ok();
}

Result<auth::BootInfo> KmsService::verify_caller(const rpc::HttpRequest& http) {
  if (!http.peer_cert_der || http.peer_cert_der->empty())
    return make_error("No attestation provided: connect with an RA-TLS client certificate issued by the KMS temp CA "
                      "(see GetTempCaCert)");
  auto cert = crypto::Certificate::from_der(*http.peer_cert_der);
  if (!cert.ok()) return cert.error().wrap("client certificate");
  if (!cert->signed_by(ctx_.keys.tmp_ca_cert))
    return make_error("client certificate is not signed by this KMS's temp CA");
  if (!ctx_.verifier) return make_error("no attestation verifier configured");
  auto b = ctx_.verifier->verify_cert(*http.peer_cert_der, false);
  if (!b.ok()) return b.error().wrap("client attestation verification failed");
  return b;
}

Result<Json> KmsService::get_app_key(const Json& req, const rpc::HttpRequest& http) {
  att_requests_++;
  auto r = [&]() -> Result<Json> {
    TRY_ASSIGN(uint64_t api_version, rpc::get_u64(req, "api_version"));
    if (api_version > 1) return make_error("Unsupported API version: " + std::to_string(api_version));
    TRY(self_authorize());
    TRY_ASSIGN(auth::BootInfo boot, verify_caller(http));
    auto d = ctx_.auth->auth_app(boot);
    if (!d.ok()) return d.error().wrap("Boot authorization failed");
    if (!d->is_allowed) return make_error("Boot denied: " + d->reason);
    TRY_ASSIGN(AppKeys k, derive_app_keys(ctx_.keys.ca_key, ctx_.keys.k256, boot.app_id, boot.instance_id));
    spdlog::info("GetAppKey: issued keys to app {} instance {}", to_hex(boot.app_id), to_hex(boot.instance_id));
    Json out = {{"ca_cert", ca_pem_},
                {"disk_crypt_key", to_hex(k.disk_crypt_key)},
                {"env_crypt_key", to_hex(k.env_crypt_key)},
                {"k256_key", to_hex(k.k256_key)},
                {"k256_signature", to_hex(k.k256_signature)},
                {"tproxy_app_id", d->gateway_app_id},
                {"gateway_app_id", d->gateway_app_id},
                {"os_image_hash", to_hex(boot.os_image_hash)}};
    secure_wipe(k.disk_crypt_key);
    secure_wipe(k.env_crypt_key);
    secure_wipe(k.k256_key);
    return out;
  }();
  if (!r.ok()) {
    att_failures_++;
    spdlog::warn("GetAppKey from {} refused: {}", http.remote, r.error().message);
  }
  return r;
}

Result<Json> KmsService::get_kms_key(const Json&, const rpc::HttpRequest& http) {
  att_requests_++;
  auto r = [&]() -> Result<Json> {
    TRY(self_authorize());
    TRY_ASSIGN(auth::BootInfo boot, verify_caller(http));
    auto d = ctx_.auth->auth_kms(boot);
    if (!d.ok()) return d.error().wrap("KMS authorization failed");
    if (!d->is_allowed) return make_error("Boot denied: " + d->reason);
    spdlog::info("GetKmsKey: handing root keys to KMS with mr_aggregated {}", to_hex(boot.mr_aggregated));
    return Json{{"temp_ca_key", tmp_ca_key_pem_},
                {"keys", Json::array({Json{{"ca_key", ctx_.keys.ca_key.to_pkcs8_pem()},
                                           {"k256_key", to_hex(ctx_.keys.k256.secret())}}})}};
  }();
  if (!r.ok()) {
    att_failures_++;
    spdlog::warn("GetKmsKey from {} refused: {}", http.remote, r.error().message);
  }
  return r;
}

Result<Json> KmsService::get_app_env_encrypt_pubkey(const Json& req) {
  TRY_ASSIGN(Bytes app_id, rpc::get_hex(req, "app_id"));
  if (app_id.size() != 20) return make_error("Invalid app_id: expected 20 bytes, got " + std::to_string(app_id.size()));
  TRY(self_authorize());
  TRY_ASSIGN(EnvPubKey k, app_env_pubkey(ctx_.keys.ca_key, ctx_.keys.k256, app_id, now_unix()));
  return Json{{"public_key", to_hex(k.public_key)},
              {"signature", to_hex(k.signature)},
              {"timestamp", k.timestamp},
              {"signature_v1", to_hex(k.signature_v1)}};
}

Result<Json> KmsService::get_temp_ca_cert() {
  TRY(self_authorize());
  return Json{{"temp_ca_cert", tmp_ca_pem_}, {"temp_ca_key", tmp_ca_key_pem_}, {"ca_cert", ca_pem_}};
}

Result<Json> KmsService::sign_cert(const Json& req) {
  att_requests_++;
  auto r = [&]() -> Result<Json> {
    TRY_ASSIGN(uint64_t api_version, rpc::get_u64(req, "api_version"));
    if (api_version != 1 && api_version != 2)
      return make_error("Unsupported API version: " + std::to_string(api_version) + " (SignCert takes 1 or 2)");
    TRY_ASSIGN(Bytes csr_bytes, rpc::get_hex(req, "csr"));
    TRY_ASSIGN(Bytes signature, rpc::get_hex(req, "signature"));
    auto csr = decode_csr(csr_bytes, static_cast<uint32_t>(api_version));
    if (!csr.ok()) return csr.error().wrap("Invalid CSR");
    if (csr->confirm != kCsrConfirm)
      return make_error("Invalid CSR: confirm word is \"" + csr->confirm + "\", expected \"" + kCsrConfirm + "\"");
    auto subject_key = ratls::p256_public_key_from_spki(csr->pubkey);
    if (!subject_key.ok()) return subject_key.error().wrap("Invalid CSR pubkey");
    if (!crypto::ecdsa_p256_verify_der(csr->pubkey, csr_bytes, signature))
      return make_error("Invalid CSR signature: it does not verify with the CSR pubkey (expected ECDSA-P256-SHA256, "
                        "ASN.1 DER, over the SCALE-encoded CSR)");
    TRY(self_authorize());
    if (!ctx_.verifier) return make_error("no attestation verifier configured");
    Bytes expected = ratls_report_data(csr->pubkey);
    auto boot = csr->version == 1
                    ? ctx_.verifier->verify_legacy_boot_attestation(csr->quote, to_string(csr->event_log), expected)
                    : ctx_.verifier->verify_boot_attestation(csr->attestation, expected);
    if (!boot.ok()) return boot.error().wrap("CSR attestation verification failed");
    if (boot->app_id.size() != 20)
      return make_error("CSR attestation carries no 20-byte app id (got " + std::to_string(boot->app_id.size()) +
                        " bytes)");
    auto d = ctx_.auth->auth_app(*boot);
    if (!d.ok()) return d.error().wrap("Boot authorization failed");
    if (!d->is_allowed) return make_error("Boot denied: " + d->reason);

    TRY_ASSIGN(crypto::P256Key app_ca_key, derive_app_ca_key(ctx_.keys.ca_key, boot->app_id));
    ratls::RaTlsCertParams ca;
    ca.org_name = "Dstack";
    ca.common_name = "Dstack App CA";
    ca.is_ca = true;
    ca.ca_path_len = 0;
    ca.app_id = boot->app_id;
    ca.special_usage = "app:ca";
    auto app_ca = ratls::issue_cert(ca, app_ca_key, ctx_.keys.ca_key, &ctx_.keys.ca_cert);
    if (!app_ca.ok()) return app_ca.error().wrap("issuing the App CA certificate");

    const CertConfig& c = csr->config;
    ratls::RaTlsCertParams leaf;
    leaf.org_name = c.org_name;
    leaf.common_name = c.subject;
    leaf.alt_names = c.subject_alt_names;
    leaf.usage_server_auth = c.usage_server_auth;
    leaf.usage_client_auth = c.usage_client_auth;
    leaf.app_id = boot->app_id;
    leaf.special_usage = "app:custom";
    if (c.not_before) leaf.not_before = static_cast<int64_t>(*c.not_before);
    if (c.not_after) leaf.not_after = static_cast<int64_t>(*c.not_after);
    if (c.not_before && c.not_after && *c.not_before >= *c.not_after)
      return make_error("Invalid CSR: not_before must be earlier than not_after");
    if (c.ext_quote) {
      if (csr->version == 1) {
        leaf.legacy_quote = csr->quote;
        if (!csr->event_log.empty()) leaf.legacy_event_log = to_string(csr->event_log);
      } else {
        leaf.attestation = csr->attestation;
      }
    }
    if (c.ext_app_info)
      spdlog::warn("SignCert: ext_app_info requested for app {}; the app info extension is not supported and omitted",
                   to_hex(boot->app_id));
    auto cert = ratls::issue_cert(leaf, *subject_key, app_ca_key, &*app_ca);
    if (!cert.ok()) return cert.error().wrap("issuing the certificate");
    spdlog::info("SignCert: issued certificate CN={} for app {}", c.subject, to_hex(boot->app_id));
    return Json{{"certificate_chain", Json::array({cert->to_pem(), app_ca->to_pem(), ca_pem_})}};
  }();
  if (!r.ok()) {
    att_failures_++;
    spdlog::warn("SignCert refused: {}", r.error().message);
  }
  return r;
}

bool KmsService::non_blocking(const rpc::HttpRequest& req) {
  return req.path == "/prpc/KMS.GetMeta" || req.path == "/prpc/GetMeta" || req.path == "/health";
}

std::string KmsService::metrics_text() const {
  std::string s;
  s += "# HELP dstack_kms_attestation_requests_total Attested RPC requests (GetAppKey, GetKmsKey, SignCert).\n";
  s += "# TYPE dstack_kms_attestation_requests_total counter\n";
  s += "dstack_kms_attestation_requests_total " + std::to_string(att_requests_.load()) + "\n";
  s += "# HELP dstack_kms_attestation_failures_total Attested RPC requests that failed.\n";
  s += "# TYPE dstack_kms_attestation_failures_total counter\n";
  s += "dstack_kms_attestation_failures_total " + std::to_string(att_failures_.load()) + "\n";
  s += "# HELP dstack_kms_getmeta_requests_total GetMeta requests.\n";
  s += "# TYPE dstack_kms_getmeta_requests_total counter\n";
  s += "dstack_kms_getmeta_requests_total " + std::to_string(getmeta_requests_.load()) + "\n";
  auto snap = ctx_.auth->info();
  s += "# HELP dstack_kms_auth_info_fresh 1 if the last auth-api info refresh succeeded.\n";
  s += "# TYPE dstack_kms_auth_info_fresh gauge\n";
  s += "dstack_kms_auth_info_fresh " + std::string(snap.fresh ? "1" : "0") + "\n";
  return s;
}

}  // namespace dstack::kms
