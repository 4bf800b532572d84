#include "guest/service.h"

#include <spdlog/spdlog.h>
#include <sys/stat.h>

#include <ctime>

#include "attest/attestation.h"
#include "attest/measurement.h"
#include "base/fs.h"
#include "crypto/ecdh.h"
#include "crypto/hash.h"
#include "crypto/k256.h"
#include "crypto/x509.h"
#include "ratls/ratls.h"
#include "rpc/prpc.h"

namespace dstack::guest {

namespace {

Result<Bytes> pad_report_data(const Bytes& rd) {
  if (rd.size() > 64) return make_error("Report data is too long");
  Bytes out = rd;
  out.resize(64, 0);
  return out;
}

Result<Bytes> req_hex(const Json& req, const char* field) { return rpc::get_hex(req, field); }
Result<std::string> req_str(const Json& req, const char* field) { return rpc::get_string(req, field); }
Result<bool> req_bool(const Json& req, const char* field) { return rpc::get_bool(req, field); }

Result<std::vector<std::string>> req_strings(const Json& req, const char* field) {
  std::vector<std::string> out;
  if (!req.contains(field) || req[field].is_null()) return out;
  if (req[field].is_string()) {
    out.push_back(req[field].get<std::string>());
    return out;
  }
  if (!req[field].is_array()) return make_error(std::string("field '") + field + "': expected an array of strings");
  for (const auto& v : req[field]) {
    if (!v.is_string()) return make_error(std::string("field '") + field + "': expected an array of strings");
    out.push_back(v.get<std::string>());
  }
  return out;
}

Result<std::optional<int64_t>> req_opt_u64(const Json& req, const char* field) {
  if (!req.contains(field) || req[field].is_null()) return std::optional<int64_t>{};
  TRY_ASSIGN(uint64_t v, rpc::get_u64(req, field));
  return std::optional<int64_t>(static_cast<int64_t>(v));
}

std::string read_vm_config(const std::string& sys_config_file) {
  if (!file_exists(sys_config_file)) return "";
  auto t = read_file(sys_config_file);
  if (!t.ok()) return "";
  auto j = Json::parse(*t, nullptr, false);
  if (j.is_object() && j.contains("vm_config") && j["vm_config"].is_string()) return j["vm_config"];
  return "";
}

}  // namespace

GuestService::GuestService(AgentConfig cfg, std::unique_ptr<TdxBackend> backend, AppKeys keys,
                           std::string compose_text, std::string vm_config)
    : cfg_(std::move(cfg)), backend_(std::move(backend)), log_(cfg_.event_log_dir, backend_.get()),
      keys_(std::move(keys)), compose_text_(std::move(compose_text)), vm_config_(std::move(vm_config)) {}

Result<std::unique_ptr<GuestService>> GuestService::create(const AgentConfig& cfg) {
  std::string kind = cfg.backend;
  if (kind == "auto") {
    struct stat st{};
    kind = (::stat(cfg.tsm_report_dir.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) ? "tdx" : "simulator";
    spdlog::info("backend=auto: {} {} => using the {} backend", cfg.tsm_report_dir,
                 kind == "tdx" ? "exists" : "is absent", kind);
  }
  std::unique_ptr<TdxBackend> backend;
  if (kind == "tdx") {
    TRY_ASSIGN(backend, make_real_backend(RealBackendConfig{cfg.tsm_report_dir, cfg.rtmr3_file, cfg.ccel_file}));
  } else {
    TRY(make_dirs(cfg.sim_state_dir, 0700));
    SimBackendConfig sc;
    sc.platform_dir = cfg.sim_platform_dir;
    sc.state_file = cfg.sim_state_dir + "/rtmr3";
    sc.mr_td = cfg.sim_mrtd;
    sc.mr_config_id = cfg.sim_mr_config_id;
    sc.rtmr0 = cfg.sim_rtmr0;
    sc.rtmr1 = cfg.sim_rtmr1;
    sc.rtmr2 = cfg.sim_rtmr2;
    TRY_ASSIGN(backend, make_sim_backend(sc));
    spdlog::warn("SIMULATED TDX: quotes are signed by the simulated platform in {} and verify only against its "
                 "root CA", cfg.sim_platform_dir);
  }

  AppKeys keys;
  if (file_exists(cfg.keys_file)) {
    TRY_ASSIGN(keys, AppKeys::load(cfg.keys_file));
  } else if (kind == "simulator" && cfg.sim_generate_keys) {
    TRY_ASSIGN(keys, generate_sim_app_keys());
    auto parent = std::filesystem::path(cfg.keys_file).parent_path().string();
    if (!parent.empty()) TRY(make_dirs(parent, 0700));
    TRY(write_file_atomic(cfg.keys_file, keys.to_json().dump(), 0600));
    spdlog::warn("no app keys file at {}: generated simulator app keys (key provider None) and wrote them there "
                 "(mode 0600)", cfg.keys_file);
  } else {
    return make_error("app keys file " + cfg.keys_file +
                      " does not exist (it is written at boot by dstack-util; check [default.core] keys_file)");
  }

  std::string compose;
  if (file_exists(cfg.compose_file)) {
    TRY_ASSIGN(compose, read_file(cfg.compose_file));
  } else {
    spdlog::warn("app compose file {} not found; compose hash is SHA256 of empty input", cfg.compose_file);
  }
  auto svc = std::make_unique<GuestService>(cfg, std::move(backend), std::move(keys), compose,
                                            read_vm_config(cfg.sys_config_file));
  if (kind == "simulator") {
    Bytes compose_hash = crypto::sha256(as_view(compose));
    Bytes app_id = cfg.sim_app_id.empty() ? Bytes(compose_hash.begin(), compose_hash.begin() + 20) : cfg.sim_app_id;
    Bytes instance_id = cfg.sim_instance_id.empty() ? crypto::random_bytes(20) : cfg.sim_instance_id;
    TRY(svc->emit_boot_events_if_needed(app_id, instance_id));
    // The persisted RTMR3 and the runtime event log must agree, or no quote would ever replay.
    TRY_ASSIGN(Bytes q, svc->backend().get_quote(Bytes(64, 0)));
    TRY_ASSIGN(auto m, attest::TdMeasurements::from_quote(q));
    TRY_ASSIGN(auto evs, svc->event_log().read());
    if (attest::replay_runtime_events(evs) != m.rtmr3) {
      return make_error("simulator state is inconsistent: the runtime event log in " + cfg.event_log_dir +
                        " does not replay to the RTMR3 kept in " + cfg.sim_state_dir +
                        "/rtmr3; remove both to start a fresh simulated boot");
    }
  }
  return svc;
}

Status GuestService::emit_boot_events_if_needed(const Bytes& app_id, const Bytes& instance_id) {
  TRY_ASSIGN(auto existing, log_.read());
  if (!existing.empty()) return Status::Ok();
  Bytes compose_hash = crypto::sha256(as_view(compose_text_));
  TRY(log_.emit(attest::events::kSystemPreparing, {}));
  TRY(log_.emit(attest::events::kAppId, app_id));
  TRY(log_.emit(attest::events::kComposeHash, compose_hash));
  TRY(log_.emit(attest::events::kInstanceId, instance_id));
  TRY(log_.emit(attest::events::kBootMrDone, {}));
  TRY(log_.emit(attest::events::kKeyProvider, as_view(keys_.key_provider_info())));
  TRY(log_.emit(attest::events::kStorageFs, as_view("ext4")));
  TRY(log_.emit(attest::events::kSystemReady, {}));
  spdlog::info("emitted simulated boot events (app_id {}, compose_hash {})", to_hex(app_id), to_hex(compose_hash));
  return Status::Ok();
}

Result<GuestService::QuoteBundle> GuestService::quote_with_log(ByteView rd) {
  QuoteBundle q;
  q.report_data.assign(rd.begin(), rd.end());
  // Read the log and quote while no event can be emitted in between (emit holds the same flock through
  // RuntimeEventLog's mutex; the simulator backend reads RTMR3 atomically).
  TRY_ASSIGN(q.runtime_events, log_.read());
  TRY_ASSIGN(q.quote, backend_->get_quote(rd));
  TRY_ASSIGN(q.boot_events, backend_->boot_event_log());
  // If an event was emitted between read() and get_quote(), re-read so the log replays to the quoted RTMR3.
  auto m = attest::TdMeasurements::from_quote(q.quote);
  if (m.ok() && attest::replay_runtime_events(q.runtime_events) != m->rtmr3) {
    TRY_ASSIGN(q.runtime_events, log_.read());
  }
  return q;
}

std::string GuestService::event_log_json(const QuoteBundle& q) const {
  std::vector<attest::TdxEvent> evs;
  for (const auto& e : q.boot_events) {
    attest::TdxEvent s = e;
    if (!(s.event_type == attest::kAcpiDataEventType)) s.event_payload.clear();  // RTMR0-2 payloads stripped
    evs.push_back(std::move(s));
  }
  // RTMR3 events keep payload AND digest (the SDK's replayRtmrs() replays digests of every IMR).
  for (const auto& r : q.runtime_events) evs.push_back(r.to_tdx_event());
  return attest::event_log_to_json(evs);
}

Result<Bytes> GuestService::attestation_bytes(ByteView rd) {
  TRY_ASSIGN(QuoteBundle q, quote_with_log(rd));
  attest::VersionedAttestation va;
  va.quote = q.quote;
  va.event_log = q.boot_events;
  va.runtime_events = q.runtime_events;
  va.report_data = q.report_data;
  va.config = vm_config_;
  return va.to_bytes();
}

Result<Json> GuestService::quote_response(ByteView rd) {
  TRY_ASSIGN(QuoteBundle q, quote_with_log(rd));
  Json out;
  out["quote"] = to_hex(q.quote);
  out["event_log"] = event_log_json(q);
  out["report_data"] = to_hex(rd);
  out["vm_config"] = vm_config_;
  return out;
}

Result<Json> GuestService::get_quote(const Json& req) {
  TRY_ASSIGN(Bytes rd0, req_hex(req, "report_data"));
  TRY_ASSIGN(Bytes rd, pad_report_data(rd0));
  return quote_response(rd);
}

Result<Json> GuestService::attest(const Json& req) {
  TRY_ASSIGN(Bytes rd0, req_hex(req, "report_data"));
  TRY_ASSIGN(Bytes rd, pad_report_data(rd0));
  TRY_ASSIGN(Bytes a, attestation_bytes(rd));
  return Json{{"attestation", to_hex(a)}};
}

Result<GuestService::DerivedKey> GuestService::derive_app_key(const std::string& path, const std::string& purpose,
                                                              const std::string& algo) {
  TRY_ASSIGN(Bytes derived, crypto::derive_key(keys_.k256_key, {as_view(path)}, 32));
  DerivedKey d;
  d.key = derived;
  if (algo == "secp256k1" || algo == "k256" || algo.empty()) {
    TRY_ASSIGN(auto k, crypto::K256Key::from_secret(derived));
    d.public_key = k.public_compressed();
  } else if (algo == "ed25519") {
    TRY_ASSIGN(d.public_key, crypto::ed25519_public(derived));
  } else {
    return make_error("unsupported algorithm \"" + algo + "\" (use secp256k1, k256 or ed25519)");
  }
  TRY_ASSIGN(auto app_key, crypto::K256Key::from_secret(keys_.k256_key));
  std::string msg = purpose + ":" + to_hex(d.public_key);
  TRY_ASSIGN(Bytes sig, app_key.sign_recoverable(crypto::keccak256(as_view(msg))));
  d.chain = {sig, keys_.k256_signature};
  return d;
}

Result<Json> GuestService::get_key(const Json& req) {
  TRY_ASSIGN(std::string path, req_str(req, "path"));
  TRY_ASSIGN(std::string purpose, req_str(req, "purpose"));
  TRY_ASSIGN(std::string algo, req_str(req, "algorithm"));
  TRY_ASSIGN(DerivedKey d, derive_app_key(path, purpose, algo));
  Json chain = Json::array();
  for (const auto& s : d.chain) chain.push_back(to_hex(s));
  return Json{{"key", to_hex(d.key)}, {"signature_chain", chain}};
}

Result<Json> GuestService::issue_tls(const crypto::P256Key& key, const Json& req, bool ra_tls, bool server_auth,
                                     bool client_auth, std::optional<int64_t> nb, std::optional<int64_t> na) {
  if (nb && na && !(*nb < *na)) return make_error("not_before must be earlier than not_after");
  std::string ca_key_pem = keys_.ca_key_pem();
  if (ca_key_pem.empty()) {
    return make_error("TLS certificates via the KMS (SignCert) are not supported by this agent yet; the key "
                      "provider has no local app CA key");
  }
  TRY_ASSIGN(auto ca_key, crypto::P256Key::from_pem(ca_key_pem));
  TRY_ASSIGN(auto ca_cert, crypto::Certificate::from_pem(keys_.ca_cert));
  TRY_ASSIGN(std::string subject, req_str(req, "subject"));
  TRY_ASSIGN(auto alt_names, req_strings(req, "alt_names"));
  ratls::RaTlsCertParams p;
  p.common_name = subject;
  p.alt_names = alt_names;
  p.usage_server_auth = server_auth;
  p.usage_client_auth = client_auth;
  p.not_before = nb;
  p.not_after = na;
  if (ra_tls) {
    TRY_ASSIGN(Bytes a, attestation_bytes(ratls::ratls_report_data(key.spki_der())));
    p.attestation = a;
  }
  TRY_ASSIGN(auto cert, ratls::issue_cert(p, key, ca_key, &ca_cert));
  Json chain = Json::array({cert.to_pem(), ca_cert.to_pem()});
  return Json{{"key", key.to_pkcs8_pem()}, {"certificate_chain", chain}};
}

Result<Json> GuestService::get_tls_key(const Json& req) {
  TRY_ASSIGN(bool ra_tls, req_bool(req, "usage_ra_tls"));
  TRY_ASSIGN(bool server_auth, req_bool(req, "usage_server_auth"));
  TRY_ASSIGN(bool client_auth, req_bool(req, "usage_client_auth"));
  TRY_ASSIGN(auto nb, req_opt_u64(req, "not_before"));
  TRY_ASSIGN(auto na, req_opt_u64(req, "not_after"));
  Bytes seed = crypto::random_bytes(32);
  TRY_ASSIGN(auto key, crypto::P256Key::derive(seed, {}));
  secure_wipe(seed);
  return issue_tls(key, req, ra_tls, server_auth, client_auth, nb, na);
}

Result<Json> GuestService::info(bool external) {
  Bytes zero(64, 0);
  TRY_ASSIGN(QuoteBundle q, quote_with_log(zero));
  TRY_ASSIGN(auto m, attest::TdMeasurements::from_quote(q.quote));
  auto bi = attest::compute_boot_info(m, q.runtime_events, vm_config_);
  if (!bi.ok()) return bi.error().wrap("computing the app identity from the local quote");
  Bytes device_id = crypto::sha256(backend_->ppid());
  Bytes compose_hash = crypto::sha256(as_view(compose_text_));
  std::string app_name;
  auto cj = Json::parse(compose_text_, nullptr, false);
  if (cj.is_object() && cj.contains("name") && cj["name"].is_string()) app_name = cj["name"];
  bool public_tcb = !(cj.is_object() && cj.contains("public_tcbinfo") && cj["public_tcbinfo"].is_boolean() &&
                      !cj["public_tcbinfo"].get<bool>());

  Json tcb;
  tcb["mrtd"] = to_hex(m.mr_td);
  tcb["rtmr0"] = to_hex(m.rtmr0);
  tcb["rtmr1"] = to_hex(m.rtmr1);
  tcb["rtmr2"] = to_hex(m.rtmr2);
  tcb["rtmr3"] = to_hex(m.rtmr3);
  tcb["mr_aggregated"] = to_hex(bi->mr_aggregated);
  tcb["os_image_hash"] = to_hex(bi->os_image_hash);
  tcb["compose_hash"] = to_hex(compose_hash);
  tcb["device_id"] = to_hex(device_id);
  tcb["event_log"] = Json::parse(event_log_json(q));
  tcb["app_compose"] = compose_text_;

  Json out;
  out["app_id"] = to_hex(bi->app_id);
  out["instance_id"] = to_hex(bi->instance_id);
  out["app_cert"] = "";  // upstream: background demo cert; not produced here
  out["tcb_info"] = (external && !public_tcb) ? std::string() : tcb.dump(2);
  out["app_name"] = app_name;
  out["device_id"] = to_hex(device_id);
  out["mr_aggregated"] = to_hex(bi->mr_aggregated);
  out["os_image_hash"] = to_hex(bi->os_image_hash);
  out["key_provider_info"] = bi->key_provider_info;
  out["compose_hash"] = to_hex(compose_hash);
  out["vm_config"] = (external && !public_tcb) ? std::string() : vm_config_;
  auto rd = [](const char* p) {
    auto r = read_file(p);
    std::string s = r.ok() ? *r : "";
    while (!s.empty() && s.back() == '\n') s.pop_back();
    return s;
  };
  out["cloud_vendor"] = rd("/sys/class/dmi/id/sys_vendor");
  out["cloud_product"] = rd("/sys/class/dmi/id/product_name");
  return out;
}

Result<Json> GuestService::sign(const Json& req) {
  TRY_ASSIGN(std::string algo, req_str(req, "algorithm"));
  TRY_ASSIGN(Bytes data, req_hex(req, "data"));
  std::string base = algo == "secp256k1_prehashed" ? "secp256k1" : algo;
  if (base != "secp256k1" && base != "ed25519") {
    return make_error("unsupported algorithm \"" + algo + "\" (use ed25519, secp256k1 or secp256k1_prehashed)");
  }
  TRY_ASSIGN(DerivedKey d, derive_app_key("vms", "signing", base));
  Bytes sig;
  if (algo == "ed25519") {
    TRY_ASSIGN(sig, crypto::ed25519_sign(d.key, data));
  } else {
    Bytes digest;
    if (algo == "secp256k1_prehashed") {
      if (data.size() != 32) return make_error("secp256k1_prehashed requires a 32-byte digest");
      digest = data;
    } else {
      digest = crypto::sha256(data);
    }
    TRY_ASSIGN(auto k, crypto::K256Key::from_secret(d.key));
    TRY_ASSIGN(sig, k.sign(digest));
  }
  Json chain = Json::array({to_hex(sig)});
  for (const auto& s : d.chain) chain.push_back(to_hex(s));
  return Json{{"signature", to_hex(sig)}, {"signature_chain", chain}, {"public_key", to_hex(d.public_key)}};
}

Result<Json> GuestService::verify(const Json& req) {
  TRY_ASSIGN(std::string algo, req_str(req, "algorithm"));
  TRY_ASSIGN(Bytes data, req_hex(req, "data"));
  TRY_ASSIGN(Bytes sig, req_hex(req, "signature"));
  TRY_ASSIGN(Bytes pk, req_hex(req, "public_key"));
  bool valid = false;
  if (algo == "ed25519") {
    valid = pk.size() == 32 && sig.size() == 64 && crypto::ed25519_verify(pk, data, sig);
  } else if (algo == "secp256k1" || algo == "secp256k1_prehashed") {
    Bytes digest = data;
    if (algo == "secp256k1") {
      digest = crypto::sha256(data);
    } else if (data.size() != 32) {
      return make_error("secp256k1_prehashed requires a 32-byte digest");
    }
    valid = crypto::k256_verify(pk, digest, sig);
  } else {
    return make_error("unsupported algorithm \"" + algo + "\" (use ed25519, secp256k1 or secp256k1_prehashed)");
  }
  return Json{{"valid", valid}};
}

Result<Json> GuestService::version() { return Json{{"version", kAgentVersion}, {"rev", "dstack-cpp"}}; }

Result<Json> GuestService::emit_event(const Json& req) {
  TRY_ASSIGN(std::string event, req_str(req, "event"));
  TRY_ASSIGN(Bytes payload, req_hex(req, "payload"));
  if (event.empty()) return make_error("event name must not be empty");
  TRY(log_.emit(event, payload));
  return Json(nullptr);
}

Result<Json> GuestService::get_attestation_for_app_key(const Json& req) {
  TRY_ASSIGN(std::string algo, req_str(req, "algorithm"));
  if (algo.empty()) algo = "secp256k1";
  std::string tag;
  if (algo == "ed25519") {
    tag = "dip1::ed25519-pk:";
  } else if (algo == "secp256k1" || algo == "k256") {
    algo = "secp256k1";
    tag = "dip1::secp256k1c-pk:";
  } else {
    return make_error("unsupported algorithm \"" + algo + "\" (use ed25519 or secp256k1)");
  }
  TRY_ASSIGN(DerivedKey d, derive_app_key("vms", "signing", algo));
  std::string b64 = base64_encode(d.public_key);
  for (auto& c : b64) {
    if (c == '+') c = '-';
    if (c == '/') c = '_';
  }
  while (!b64.empty() && b64.back() == '=') b64.pop_back();
  TRY_ASSIGN(Bytes rd, pad_report_data(to_bytes(tag + b64)));
  return quote_response(rd);
}

Result<Json> GuestService::tdx_quote(const Json& req) {
  TRY_ASSIGN(Bytes data, req_hex(req, "report_data"));
  TRY_ASSIGN(std::string hash, req_str(req, "hash_algorithm"));
  TRY_ASSIGN(std::string prefix, req_str(req, "prefix"));
  if (hash.empty()) hash = "sha512";
  if (prefix.empty()) prefix = "app-data";
  TRY_ASSIGN(Bytes rd, ratls::quote_content_report_data(prefix, data, hash));
  TRY_ASSIGN(QuoteBundle q, quote_with_log(rd));
  return Json{{"quote", to_hex(q.quote)},
              {"event_log", event_log_json(q)},
              {"hash_algorithm", hash},
              {"prefix", hash == "raw" ? std::string() : prefix}};
}

Result<Json> GuestService::raw_quote(const Json& req) {
  TRY_ASSIGN(Bytes data, req_hex(req, "report_data"));
  Json r = req;
  r["report_data"] = to_hex(data);
  r["hash_algorithm"] = "raw";
  return tdx_quote(r);
}

Result<Json> GuestService::derive_key(const Json& req) {
  TRY_ASSIGN(std::string path, req_str(req, "path"));
  TRY_ASSIGN(bool random_seed, req_bool(req, "random_seed"));
  TRY_ASSIGN(bool ra_tls, req_bool(req, "usage_ra_tls"));
  TRY_ASSIGN(bool server_auth, req_bool(req, "usage_server_auth"));
  TRY_ASSIGN(bool client_auth, req_bool(req, "usage_client_auth"));
  Bytes ikm = random_seed ? crypto::random_bytes(32) : keys_.k256_key;
  TRY_ASSIGN(auto key, crypto::P256Key::derive(ikm, {as_view(path)}));
  secure_wipe(ikm);
  return issue_tls(key, req, ra_tls, server_auth, client_auth, std::nullopt, std::nullopt);
}

Result<Json> GuestService::derive_k256_key(const Json& req) {
  TRY_ASSIGN(Json r, get_key(req));
  return Json{{"k256_key", r["key"]}, {"k256_signature_chain", r["signature_chain"]}};
}

Result<Json> GuestService::call(const std::string& service, const std::string& m, const Json& req) {
  if (service == "dstack") {
    if (m == "GetQuote") return get_quote(req);
    if (m == "Attest") return attest(req);
    if (m == "GetKey") return get_key(req);
    if (m == "GetTlsKey") return get_tls_key(req);
    if (m == "Info") return info(false);
    if (m == "Sign") return sign(req);
    if (m == "Verify") return verify(req);
    if (m == "Version") return version();
    if (m == "EmitEvent") return emit_event(req);
  } else if (service == "tappd") {
    if (m == "TdxQuote") return tdx_quote(req);
    if (m == "RawQuote") return raw_quote(req);
    if (m == "DeriveKey") return derive_key(req);
    if (m == "DeriveK256Key") return derive_k256_key(req);
    if (m == "Info") return info(false);
    if (m == "Version") return version();
  } else if (service == "worker") {
    if (m == "Info") return info(true);
    if (m == "Version") return version();
    if (m == "GetAttestationForAppKey") return get_attestation_for_app_key(req);
  }
  return make_error("Service not found: " + m);
}

}  // namespace dstack::guest
