#include "kms/bootstrap.h"

#include <spdlog/spdlog.h>

#include <chrono>
#include <thread>

#include "base/fs.h"
#include "kms/service.h"
#include "ratls/ratls.h"
#include "rpc/http.h"

namespace dstack::kms {

using rpc::Json;

namespace {
int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}
}  // namespace

Result<RootKeys> generate_root_keys() {
  TRY_ASSIGN(auto ca_key, crypto::P256Key::generate());
  TRY_ASSIGN(auto ca_cert, make_root_ca_cert(ca_key));
  TRY_ASSIGN(auto tmp_key, crypto::P256Key::generate());
  TRY_ASSIGN(auto tmp_cert, make_tmp_ca_cert(tmp_key));
  TRY_ASSIGN(auto rpc_key, crypto::P256Key::generate());
  return RootKeys{ca_key, ca_cert, tmp_key, tmp_cert, rpc_key, crypto::K256Key::generate()};
}

Result<BootstrapInfo> bootstrap_keys(CertStore& store, const std::string& domain, Attester* attester,
                                     const WriteHook& hook) {
  TRY(validate_domain(domain));
  TRY_ASSIGN(RootKeys keys, generate_root_keys());
  BootstrapInfo info;
  info.ca_pubkey = keys.ca_key.spki_der();
  info.k256_pubkey = keys.k256.public_compressed();
  if (attester) {
    Bytes rd = bootstrap_report_data(info.ca_pubkey, info.k256_pubkey);
    auto att = attester->attest(rd);
    if (!att.ok()) return att.error().wrap("bootstrap attestation (guest agent Attest)");
    info.attestation = std::move(att).value();
  }
  TRY_ASSIGN(auto artifacts, make_artifacts(keys, domain, info));
  auto st = store.commit(artifacts, hook);
  for (auto& a : artifacts) std::fill(a.content.begin(), a.content.end(), '\0');
  TRY(st);
  spdlog::info("bootstrap complete: root CA SPKI sha256 prefix {}, k256 pubkey {}",
               to_hex(ByteView(info.ca_pubkey).subspan(info.ca_pubkey.size() - 8)), to_hex(info.k256_pubkey));
  return info;
}

Result<Bytes> onboard_from(CertStore& store, const std::string& source_url_in, const std::string& domain,
                           const OnboardDeps& deps, const WriteHook& hook) {
  TRY(validate_domain(domain));
  if (!deps.attester) return make_error("Onboard needs the guest agent (attest_rpc_cert = true) for RA-TLS");
  if (!deps.verifier || !deps.auth) return make_error("Onboard needs an attestation verifier and an auth backend");
  std::string url = source_url_in;
  while (!url.empty() && url.back() == '/') url.pop_back();
  if (url.size() < 5 || url.compare(url.size() - 5, 5, "/prpc") != 0) url += "/prpc";

  // (a)+(b): temp CA from the source, capturing its server certificate without validation.
  rpc::ClientOptions insecure;
  insecure.timeout = deps.timeout;
  insecure.insecure_skip_verify = true;
  auto r = rpc::http_request("POST", url + "/GetTempCaCert?json", "{}", insecure);
  if (!r.ok()) return r.error().wrap("Onboard: GetTempCaCert from " + url);
  if (r->status != 200) return make_error("Onboard: GetTempCaCert from " + url + " failed: " + r->body.substr(0, 300));
  if (r->peer_cert_chain_der.empty()) return make_error("Onboard: source " + url + " presented no TLS certificate");
  Bytes source_leaf = r->peer_cert_chain_der.front();
  auto source_boot = deps.verifier->verify_cert(source_leaf, false);
  if (!source_boot.ok()) return source_boot.error().wrap("Onboard: source KMS attestation");
  auto j = Json::parse(r->body, nullptr, false);
  if (!j.is_object()) return make_error("Onboard: GetTempCaCert answer is not JSON");
  TRY_ASSIGN(std::string tmp_cert_pem, rpc::get_string(j, "temp_ca_cert"));
  TRY_ASSIGN(std::string tmp_key_pem, rpc::get_string(j, "temp_ca_key"));
  TRY_ASSIGN(std::string ca_cert_pem, rpc::get_string(j, "ca_cert"));
  TRY_ASSIGN(auto tmp_cert, crypto::Certificate::from_pem(tmp_cert_pem));
  TRY_ASSIGN(auto tmp_key, crypto::P256Key::from_pem(tmp_key_pem));
  TRY_ASSIGN(auto ca_cert, crypto::Certificate::from_pem(ca_cert_pem));

  // (c) RA-TLS client certificate signed by the source's temp CA.
  TRY_ASSIGN(auto client_key, crypto::P256Key::generate());
  auto att = deps.attester->attest(ratls_report_data(client_key.spki_der()));
  if (!att.ok()) return att.error().wrap("Onboard: own attestation");
  ratls::RaTlsCertParams p;
  p.common_name = "RA-TLS TEMP Cert";
  p.attestation = *att;
  TRY_ASSIGN(auto client_cert, ratls::issue_cert(p, client_key, tmp_key, &tmp_cert));

  // (d) is the source allowed to be a KMS?
  auto d = deps.auth->auth_kms(*source_boot);
  if (!d.ok()) return d.error().wrap("Onboard: authorizing the source KMS");
  if (!d->is_allowed) return make_error("Onboard: source KMS denied by auth backend: " + d->reason);

  // (e) GetKmsKey over mutual RA-TLS, pinned to the attested source certificate.
  TRY_ASSIGN(std::string vm_config, deps.attester->vm_config());
  rpc::ClientOptions mtls = insecure;
  mtls.client_cert_pem = client_cert.to_pem();
  mtls.client_key_pem = client_key.to_pkcs8_pem();
  auto kr = rpc::http_request("POST", url + "/GetKmsKey?json", Json{{"vm_config", vm_config}}.dump(), mtls);
  if (!kr.ok()) return kr.error().wrap("Onboard: GetKmsKey from " + url);
  if (kr->peer_cert_chain_der.empty() || kr->peer_cert_chain_der.front() != source_leaf)
    return make_error("Onboard: source KMS certificate changed between requests");
  auto kj = Json::parse(kr->body, nullptr, false);
  if (kr->status != 200) {
    std::string msg = kj.is_object() && kj.contains("error") ? kj["error"].dump() : kr->body.substr(0, 300);
    return make_error("Onboard: GetKmsKey refused by source: " + msg);
  }
  if (!kj.is_object() || !kj.contains("keys") || !kj["keys"].is_array() || kj["keys"].size() != 1)
    return make_error("Onboard: GetKmsKey must return exactly one key set");
  TRY_ASSIGN(std::string ca_key_pem, rpc::get_string(kj["keys"][0], "ca_key"));
  TRY_ASSIGN(Bytes k256_raw, rpc::get_hex(kj["keys"][0], "k256_key"));
  TRY_ASSIGN(std::string tmp_key_pem2, rpc::get_string(kj, "temp_ca_key"));
  TRY_ASSIGN(auto ca_key, crypto::P256Key::from_pem(ca_key_pem));
  TRY_ASSIGN(auto k256, crypto::K256Key::from_secret(k256_raw));
  TRY_ASSIGN(auto tmp_key2, crypto::P256Key::from_pem(tmp_key_pem2));
  secure_wipe(k256_raw);
  if (ca_key.spki_der() != ca_cert.spki_der()) return make_error("Onboard: received root CA key does not match ca_cert");
  if (tmp_key2.spki_der() != tmp_cert.spki_der()) return make_error("Onboard: received temp CA key does not match");
  TRY_ASSIGN(auto rpc_key, crypto::P256Key::generate());
  RootKeys keys{ca_key, ca_cert, tmp_key2, tmp_cert, rpc_key, k256};
  TRY_ASSIGN(auto artifacts, make_artifacts(keys, domain, std::nullopt));
  auto st = store.commit(artifacts, hook);
  for (auto& a : artifacts) std::fill(a.content.begin(), a.content.end(), '\0');
  TRY(st);
  spdlog::info("onboarded root keys from {}: k256 pubkey {}", url, to_hex(k256.public_compressed()));
  return k256.public_compressed();
}

std::shared_ptr<auth::AuthBackend> make_auth_backend(const KmsConfig& cfg) {
  if (cfg.auth_type == "dev") {
    spdlog::warn("auth_api type = dev: every attested CVM is allowed (development only)");
    return std::make_shared<auth::DevAuth>(cfg.dev_gateway_app_id);
  }
  if (cfg.auth_type == "file") return std::make_shared<auth::FilePolicyAuth>(cfg.file_policy_path);
  auth::WebhookOptions o;
  o.url = cfg.webhook_url;
  o.auth_timeout = cfg.webhook_timeout;
  o.info_timeout = cfg.webhook_info_timeout;
  o.refresh_interval = cfg.webhook_refresh;
  return std::make_shared<auth::WebhookAuth>(o);
}

namespace {

bool should_stop(const RunHooks& h) { return h.stop && h.stop->load(); }

Status self_authorize_once(const KmsConfig& cfg, Attester* attester, Verifier* verifier, auth::AuthBackend& auth) {
  if (!cfg.enforce_self_authorization) return Status::Ok();
  auto fail = [](const std::string& m) { return make_error("KMS self authorization failed: " + m); };
  if (!attester)
    return fail("no own attestation (attest_rpc_cert = false); set [core] enforce_self_authorization = false");
  Bytes zeros(64, 0);
  auto att = attester->attest(zeros);
  if (!att.ok()) return fail(att.error().message);
  auto boot = verifier->verify_attestation(*att, zeros);
  if (!boot.ok()) return fail("own attestation does not verify: " + boot.error().message);
  auto d = auth.auth_kms(*boot);
  if (!d.ok()) return fail(d.error().message);
  if (!d->is_allowed) return fail(d->reason);
  return Status::Ok();
}

// Onboarding server (plain HTTP) until Finish or keys exist + Finish.
Status run_onboarding(const KmsConfig& cfg, CertStore& store, Attester* attester, Verifier* verifier,
                      auth::AuthBackend& auth, const RunHooks& hooks) {
  std::atomic<bool> done{false};
  rpc::PrpcService svc("Onboard.");
  std::mutex op_mu;  // one key-writing operation at a time
  svc.add("Bootstrap", [&](const Json& req, const rpc::HttpRequest&) -> Result<Json> {
    std::lock_guard lk(op_mu);
    TRY_ASSIGN(std::string domain, rpc::get_string(req, "domain"));
    TRY(validate_domain(domain));
    TRY_ASSIGN(CertDirState st, store.inspect());
    if (st != CertDirState::Empty || file_exists(store.path("bootstrap-info.json")))
      return make_error("Bootstrap refused: keys already exist in " + store.dir());
    TRY(self_authorize_once(cfg, attester, verifier, auth));
    spdlog::info("Generating certificates...");
    TRY_ASSIGN(BootstrapInfo info, bootstrap_keys(store, domain, attester, hooks.bootstrap_hook));
    return Json{{"ca_pubkey", to_hex(info.ca_pubkey)},
                {"k256_pubkey", to_hex(info.k256_pubkey)},
                {"attestation", to_hex(info.attestation)}};
  });
  svc.add("Onboard", [&](const Json& req, const rpc::HttpRequest&) -> Result<Json> {
    std::lock_guard lk(op_mu);
    TRY_ASSIGN(std::string src, rpc::get_string(req, "source_url"));
    TRY_ASSIGN(std::string domain, rpc::get_string(req, "domain"));
    TRY_ASSIGN(CertDirState st, store.inspect());
    if (st != CertDirState::Empty) return make_error("Onboard refused: keys already exist in " + store.dir());
    OnboardDeps deps{attester, verifier, &auth};
    TRY_ASSIGN(Bytes pub, onboard_from(store, src, domain, deps, hooks.bootstrap_hook));
    return Json{{"k256_pubkey", to_hex(pub)}};
  });
  svc.add("GetAttestationInfo", [&](const Json&, const rpc::HttpRequest&) -> Result<Json> {
    if (!attester) return make_error("GetAttestationInfo needs the guest agent (attest_rpc_cert = true)");
    Bytes zeros(64, 0);
    TRY_ASSIGN(Bytes att, attester->attest(zeros));
    TRY_ASSIGN(auth::BootInfo b, verifier->verify_attestation(att, zeros));
    auto snap = auth.info();
    return Json{{"device_id", to_hex(b.device_id)},
                {"mr_aggregated", to_hex(b.mr_aggregated)},
                {"os_image_hash", to_hex(b.os_image_hash)},
                {"tee_variant", b.tee_variant},
                {"site_name", cfg.site_name},
                {"eth_rpc_url", snap.info ? snap.info->eth_rpc_url : ""},
                {"kms_contract_address", snap.info ? snap.info->kms_contract_addr : ""},
                {"ppid", ""}};
  });
  svc.add("Finish", [&](const Json&, const rpc::HttpRequest&) -> Result<Json> {
    done = true;
    return Json(nullptr);
  });
  rpc::HttpServer server(rpc::ServerOptions{});
  svc.mount(server, "/prpc");
  server.route("GET", "/finish", [&](const rpc::HttpRequest&) {
    done = true;
    return rpc::HttpResponse::text(200, "OK");
  });
  server.route("GET", "/health", [](const rpc::HttpRequest&) { return rpc::HttpResponse::text(200, "OK"); });
  server.route("GET", "/", [](const rpc::HttpRequest&) {
    rpc::HttpResponse r = rpc::HttpResponse::text(
        200,
        "<!doctype html><title>dstack KMS onboarding</title><h1>dstack KMS onboarding</h1>"
        "<p>POST /prpc/Onboard.Bootstrap?json {\"domain\":...} or /prpc/Onboard.Onboard?json "
        "{\"source_url\":...,\"domain\":...}, then GET /finish.</p>");
    r.content_type = "text/html; charset=utf-8";
    return r;
  });
  std::string addr = cfg.onboard_address + ":" + std::to_string(cfg.onboard_port);
  TRY(server.listen(addr));
  server.start();
  spdlog::info("Onboarding service listening on {}:{} (keys are missing; POST /prpc/Onboard.Bootstrap or "
               "Onboard, then GET /finish)",
               cfg.onboard_address, server.bound_port());
  if (hooks.on_listening) hooks.on_listening(server.bound_port());
  while (!done && !should_stop(hooks)) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  server.stop();
  if (should_stop(hooks)) return make_error("stopped during onboarding");
  spdlog::info("Onboarding finished");
  return Status::Ok();
}

// spec §3.4 step 2: rpc.crt fresh every start (with attestation); CA certs re-signed if expiring within a year.
Status update_certs(const KmsConfig& cfg, CertStore& store, RootKeys& keys, const std::string& domain,
                    Attester* attester) {
  int64_t horizon = unix_now() + 365LL * 86400;
  if (keys.ca_cert.not_after() < horizon) {
    spdlog::info("root CA certificate expires within a year; re-signing it");
    TRY_ASSIGN(keys.ca_cert, make_root_ca_cert(keys.ca_key));
    TRY(write_file_atomic(store.path("root-ca.crt"), keys.ca_cert.to_pem(), 0644));
  }
  if (keys.tmp_ca_cert.not_after() < horizon) {
    spdlog::info("temp CA certificate expires within a year; re-signing it");
    TRY_ASSIGN(keys.tmp_ca_cert, make_tmp_ca_cert(keys.tmp_ca_key));
    TRY(write_file_atomic(store.path("tmp-ca.crt"), keys.tmp_ca_cert.to_pem(), 0644));
  }
  std::optional<crypto::Certificate> rpc_cert;
  if (attester) {
    auto att = attester->attest(ratls_report_data(keys.rpc_key.spki_der()));
    if (!att.ok()) return att.error().wrap("attesting the RPC certificate (attest_rpc_cert = true)");
    ratls::RaTlsCertParams p;
    p.common_name = domain;
    p.alt_names = {domain};
    p.special_usage = "kms:rpc";
    p.attestation = *att;
    auto c = ratls::issue_cert(p, keys.rpc_key, keys.ca_key, &keys.ca_cert);
    if (!c.ok()) return c.error().wrap("issuing the attested RPC certificate");
    rpc_cert = std::move(c).value();
  } else {
    TRY_ASSIGN(auto c, make_rpc_cert(keys.rpc_key, domain, keys.ca_key, keys.ca_cert, std::nullopt));
    rpc_cert = c;
  }
  TRY(write_file_atomic(store.path("rpc.crt"), rpc_cert->to_pem(), 0644));
  (void)cfg;
  return Status::Ok();
}

}  // namespace

int run_kms(const KmsConfig& cfg, const RunHooks& hooks) {
  auto fatal = [](const std::string& m) {
    spdlog::error("{}", m);
    return 1;
  };
  spdlog::info("KMS initializing...");
  for (const auto& f : cfg.loaded_files) spdlog::info("config loaded from {}", f);
  if (cfg.image_verify)
    spdlog::warn("[core.image] verify = true is not implemented by this KMS; OS images are not re-measured");
  if (auto st = make_dirs(cfg.cert_dir, 0755); !st.ok()) return fatal("cannot create cert_dir: " + st.error().message);
  CertStore store(cfg.cert_dir);
  if (auto st = store.recover(); !st.ok()) return fatal("recovering cert_dir: " + st.error().message);

  auto auth = make_auth_backend(cfg);
  std::shared_ptr<Attester> attester;
  if (cfg.attest_rpc_cert) attester = make_guest_agent_attester(cfg.guest_agent);
  else spdlog::warn("attest_rpc_cert/quote_enabled = false: no TDX attestation for the KMS's own keys");
  auto verifier_r = make_ratls_verifier(cfg);
  if (!verifier_r.ok()) return fatal("attestation verifier: " + verifier_r.error().message);
  std::shared_ptr<Verifier> verifier = *verifier_r;

  auto state = store.inspect();
  if (!state.ok()) return fatal(state.error().message);
  if (*state == CertDirState::Empty) {
    if (!cfg.onboard_enabled)
      return fatal("no keys in " + cfg.cert_dir + " and [core.onboard] enabled = false; nothing to serve");
    if (!cfg.auto_bootstrap_domain.empty()) {
      spdlog::info("Auto-bootstrap enabled for domain {}", cfg.auto_bootstrap_domain);
      if (auto st = self_authorize_once(cfg, attester.get(), verifier.get(), *auth); !st.ok())
        return fatal(st.error().message);
      spdlog::info("Generating certificates...");
      auto info = bootstrap_keys(store, cfg.auto_bootstrap_domain, attester.get(), hooks.bootstrap_hook);
      if (!info.ok()) return fatal("auto-bootstrap failed: " + info.error().message);
    } else {
      if (auto st = run_onboarding(cfg, store, attester.get(), verifier.get(), *auth, hooks); !st.ok())
        return fatal(st.error().message);
      auto s2 = store.inspect();
      if (!s2.ok()) return fatal(s2.error().message);
      if (*s2 != CertDirState::KeysExist) return fatal("onboarding finished but no keys were created");
    }
  } else {
    spdlog::info("keys found in {}", cfg.cert_dir);
  }

  auto keys = store.load();
  if (!keys.ok()) return fatal(keys.error().message);
  std::string domain = cfg.auto_bootstrap_domain;
  if (domain.empty()) {
    auto d = store.read_domain();
    if (!d.ok()) return fatal("no domain: set KMS_DOMAIN / auto_bootstrap_domain or write " + store.path("rpc-domain"));
    domain = *d;
  }
  if (auto st = update_certs(cfg, store, *keys, domain, attester.get()); !st.ok())
    return fatal("updating certificates: " + st.error().message);

  std::optional<BootstrapInfo> binfo;
  if (file_exists(store.path("bootstrap-info.json"))) {
    auto text = read_file(store.path("bootstrap-info.json"));
    auto b = text.ok() ? parse_bootstrap_info(*text) : Result<BootstrapInfo>(text.error());
    if (b.ok()) binfo = *b;
    else spdlog::warn("ignoring bootstrap-info.json: {}", b.error().message);
  }

  rpc::ServerOptions so;
  so.threads = cfg.workers;
  so.run_inline = &KmsService::non_blocking;
  so.extra_headers.push_back({"X-App-Version", "dstack-kms-cpp/0.1.0"});
  rpc::HttpServer server(so);
  KmsService svc(KmsContext{cfg, *keys, binfo, auth, attester, verifier});
  svc.mount(server);
  rpc::TlsServerConfig tls;
  auto cert_pem = read_file(cfg.rpc_tls_certs);
  auto key_pem = read_file(cfg.rpc_tls_key);
  auto ca_pem = read_file(cfg.rpc_mutual_ca);
  if (!cert_pem.ok() || !key_pem.ok() || !ca_pem.ok())
    return fatal("reading RPC TLS files ([rpc.tls] key/certs, [rpc.tls.mutual] ca_certs)");
  tls.cert_chain_pem = *cert_pem;
  tls.key_pem = *key_pem;
  tls.client_ca_pem = *ca_pem;
  tls.require_client_cert = cfg.rpc_mutual_mandatory;
  std::string addr = cfg.rpc_address + ":" + std::to_string(cfg.rpc_port);
  if (auto st = server.listen(addr, tls); !st.ok()) return fatal("RPC server on " + addr + ": " + st.error().message);
  server.start();
  spdlog::info("RPC server listening on {}:{}", cfg.rpc_address, server.bound_port());
  if (hooks.on_listening) hooks.on_listening(server.bound_port());
  while (!should_stop(hooks)) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  spdlog::info("shutting down");
  server.stop();
  return 0;
}

}  // namespace dstack::kms
