// RA-TLS / VersionedAttestation verification (spec §5.5, §8.2, §8.4).
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include <cctype>
#include <ctime>

#include "attest/attestation.h"
#include "attest/collateral.h"
#include "attest/dcap_pki.h"
#include "attest/quote.h"
#include "attest/eventlog.h"
#include "attest/measurement.h"
#include "attest/verify.h"
#include "base/fs.h"
#include "crypto/hash.h"
#include "ratls/ratls.h"
#include "rpc/http.h"

namespace dstack::ratls {

CollateralSource CollateralSource::from_json(nlohmann::json collateral) {
  CollateralSource s;
  s.fetch = [c = std::move(collateral)](ByteView) -> Result<nlohmann::json> { return c; };
  return s;
}

Result<CollateralSource> CollateralSource::from_file(const std::string& path) {
  auto text = read_file(path);
  if (!text.ok()) return text.error().wrap("reading collateral file " + path);
  auto j = nlohmann::json::parse(*text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    return make_error("collateral file " + path + " is not a JSON object (expected dcap-qvl collateral JSON)");
  }
  return from_json(std::move(j));
}

namespace {

std::string pct_decode(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size() && std::isxdigit(static_cast<unsigned char>(s[i + 1])) &&
        std::isxdigit(static_cast<unsigned char>(s[i + 2]))) {
      out.push_back(static_cast<char>(std::stoi(std::string(s.substr(i + 1, 2)), nullptr, 16)));
      i += 2;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

// The exact text of the JSON object value of `key` in `body` (the signed bytes of tcbInfo / enclaveIdentity).
Result<std::string> raw_object(const std::string& body, const std::string& key) {
  auto k = body.find("\"" + key + "\"");
  if (k == std::string::npos) return make_error("PCCS response has no \"" + key + "\"");
  auto start = body.find('{', k);
  if (start == std::string::npos) return make_error("PCCS response: \"" + key + "\" is not an object");
  int depth = 0;
  bool in_str = false;
  for (size_t i = start; i < body.size(); ++i) {
    char c = body[i];
    if (in_str) {
      if (c == '\\') ++i;
      else if (c == '"') in_str = false;
      continue;
    }
    if (c == '"') in_str = true;
    else if (c == '{') ++depth;
    else if (c == '}' && --depth == 0) return body.substr(start, i - start + 1);
  }
  return make_error("PCCS response: unterminated \"" + key + "\" object");
}

Bytes hex_or_raw(const std::string& body) {
  std::string t = body;
  while (!t.empty() && std::isspace(static_cast<unsigned char>(t.back()))) t.pop_back();
  bool all_hex = !t.empty() && t.size() % 2 == 0 &&
                 t.find_first_not_of("0123456789abcdefABCDEF") == std::string::npos;
  if (all_hex) {
    auto b = from_hex(t);
    if (b.ok()) return *b;
  }
  return to_bytes(body);
}

Result<rpc::HttpClientResponse> pccs_get(const std::string& url, std::chrono::milliseconds timeout) {
  rpc::ClientOptions o;
  o.timeout = timeout;
  auto r = rpc::http_request("GET", url, "", o);
  if (!r.ok()) return r.error().wrap("PCCS request " + url);
  if (r->status != 200) {
    return make_error("PCCS request " + url + " answered HTTP " + std::to_string(r->status) + ": " +
                      r->body.substr(0, 200));
  }
  return r;
}

std::string header_of(const rpc::HttpClientResponse& r, std::initializer_list<const char*> names) {
  for (const char* n : names) {
    auto it = r.headers.find(n);
    if (it != r.headers.end()) return pct_decode(it->second);
  }
  return {};
}

// A PCCS answer {"<body_key>": {...}, "signature": "..."}: stores the object verbatim (its bytes are what the
// signature covers), the signature and the issuer chain header as <out>, <out>_signature, <out>_issuer_chain.
Status put_signed_object(nlohmann::json& j, const rpc::HttpClientResponse& r, const std::string& body_key,
                         const std::string& out, const char* what, std::initializer_list<const char*> chain_headers) {
  TRY_ASSIGN(std::string object, raw_object(r.body, body_key));
  auto parsed = nlohmann::json::parse(r.body, nullptr, false);
  if (parsed.is_discarded() || !parsed.contains("signature") || !parsed["signature"].is_string()) {
    return make_error(std::string("PCCS ") + what + " response has no signature");
  }
  j[out] = object;
  j[out + "_signature"] = parsed["signature"];
  j[out + "_issuer_chain"] = header_of(r, chain_headers);
  return Status::Ok();
}

Result<nlohmann::json> fetch_pccs(const std::string& base_in, std::chrono::milliseconds timeout, ByteView quote) {
  std::string base = base_in;
  while (!base.empty() && base.back() == '/') base.pop_back();
  TRY_ASSIGN(auto q, attest::parse_quote(quote));
  if (q.signature.pck_cert_data_type != attest::kCertTypePckCertChain) {
    return make_error("the quote carries no PCK certificate chain (certification data type " +
                      std::to_string(q.signature.pck_cert_data_type) + ")");
  }
  TRY_ASSIGN(auto chain, attest::pki::certs_from_pem(to_string(q.signature.pck_cert_data), "PCK chain"));
  if (chain.empty()) return make_error("the quote's PCK certificate chain is empty");
  TRY_ASSIGN(auto ext, attest::pki::parse_pck_extension(chain[0].get()));
  std::string ca = chain.size() > 1 && attest::pki::cert_cn(chain[1].get()).find("Platform") != std::string::npos
                       ? "platform" : "processor";
  std::string tee = q.is_tdx() ? "tdx" : "sgx";
  nlohmann::json j;
  TRY_ASSIGN(auto crl, pccs_get(base + "/sgx/certification/v4/pckcrl?ca=" + ca + "&encoding=der", timeout));
  j["pck_crl"] = to_hex(hex_or_raw(crl.body));
  j["pck_crl_issuer_chain"] = header_of(crl, {"sgx-pck-crl-issuer-chain"});
  TRY_ASSIGN(auto tcb, pccs_get(base + "/" + tee + "/certification/v4/tcb?fmspc=" + to_hex(ext.fmspc), timeout));
  TRY(put_signed_object(j, tcb, "tcbInfo", "tcb_info", "TCB info", {"tcb-info-issuer-chain", "sgx-tcb-info-issuer-chain"}));
  TRY_ASSIGN(auto qe, pccs_get(base + "/" + tee + "/certification/v4/qe/identity?update=standard", timeout));
  TRY(put_signed_object(j, qe, "enclaveIdentity", "qe_identity", "QE identity", {"sgx-enclave-identity-issuer-chain"}));
  TRY_ASSIGN(auto root, pccs_get(base + "/sgx/certification/v4/rootcacrl", timeout));
  j["root_ca_crl"] = to_hex(hex_or_raw(root.body));
  return j;
}

}  // namespace

CollateralSource CollateralSource::pccs(std::string base_url, std::chrono::milliseconds timeout) {
  CollateralSource s;
  s.fetch = [base_url = std::move(base_url), timeout](ByteView quote) -> Result<nlohmann::json> {
    auto r = fetch_pccs(base_url, timeout, quote);
    if (!r.ok()) return r.error().wrap("fetching collateral from PCCS " + base_url);
    return r;
  };
  return s;
}

namespace {

bool all_zero(ByteView b) {
  for (auto c : b) {
    if (c != 0) return false;
  }
  return true;
}

template <size_t N>
Bytes arr(const attest::ByteArray<N>& a) {
  return Bytes(a.begin(), a.end());
}

struct Stack {
  Bytes quote;
  std::vector<attest::RuntimeEvent> runtime_events;
  Bytes report_data;  // stack report data (empty for legacy certs: then taken from the quote)
  std::string config;
};

Result<VerifiedAttestation> verify_stack(const Stack& st, std::optional<ByteView> expected_report_data,
                                         const VerifyOptions& opts) {
  if (!opts.collateral.fetch) {
    return make_error("no collateral source configured for quote verification");
  }
  auto cj = opts.collateral.fetch(st.quote);
  if (!cj.ok()) return cj.error().wrap("obtaining quote collateral");
  auto coll = attest::parse_collateral_json(cj->dump());
  if (!coll.ok()) return coll.error().wrap("parsing quote collateral");

  attest::TrustOptions trust;
  if (!opts.trust.root_ca_pem.empty()) {
    trust.trust_intel_root = false;
    trust.extra_root_pems.push_back(opts.trust.root_ca_pem);
  }
  int64_t now = opts.now ? opts.now : static_cast<int64_t>(std::time(nullptr));
  auto rep = attest::verify_quote(st.quote, *coll, now, trust);
  if (!rep.ok()) return rep.error().wrap("quote verification failed");
  const attest::TdReport* td = rep->td_report();
  if (!td) return make_error("the attestation quote is not a TDX quote");

  // validate_tcb (spec §8.2 step 2).
  if ((td->td_attributes[0] & 1) && !opts.trust.allow_debug_td) {
    return make_error("the attested TD is a debug TD (td_attributes bit 0 set); refusing it");
  }
  if (!all_zero(ByteView(td->mr_signer_seam.data(), td->mr_signer_seam.size()))) {
    return make_error("the attested TD has a non-zero mr_signer_seam (not an Intel TDX module)");
  }
  if (td->is_td15 && !all_zero(ByteView(td->mr_service_td.data(), td->mr_service_td.size()))) {
    return make_error("the attested TD has a non-zero mr_service_td");
  }

  Bytes quote_rd = arr(td->report_data);
  if (!st.report_data.empty() && st.report_data != quote_rd) {
    return make_error("the quote's report_data does not match the attestation's report_data");
  }
  if (expected_report_data && !std::equal(quote_rd.begin(), quote_rd.end(), expected_report_data->begin(),
                                          expected_report_data->end())) {
    return make_error("the quote's report_data does not bind the expected value (for RA-TLS: "
                      "SHA512(\"ratls-cert:\" || certificate key SPKI))");
  }

  Bytes replayed = attest::replay_runtime_events(st.runtime_events);
  Bytes quoted_rtmr3 = arr(td->rtmr3);
  if (replayed != quoted_rtmr3) {
    return make_error("RTMR3 replayed from the runtime events (" + to_hex(replayed) +
                      ") does not match the quoted RTMR3 (" + to_hex(quoted_rtmr3) + ")");
  }

  auto bi = attest::compute_boot_info(st.quote, st.runtime_events, st.config, opts.use_boottime_mr);
  if (!bi.ok()) return bi.error().wrap("deriving the boot identity");

  VerifiedAttestation v;
  v.tcb_status = rep->status;
  v.advisory_ids = rep->advisory_ids;
  v.ppid = rep->ppid;
  v.tee_tcb_svn = arr(td->tee_tcb_svn);
  v.mr_seam = arr(td->mr_seam);
  v.mr_signer_seam = arr(td->mr_signer_seam);
  v.seam_attributes = arr(td->seam_attributes);
  v.td_attributes = arr(td->td_attributes);
  v.xfam = arr(td->xfam);
  v.mr_td = arr(td->mr_td);
  v.mr_config_id = arr(td->mr_config_id);
  v.mr_owner = arr(td->mr_owner);
  v.mr_owner_config = arr(td->mr_owner_config);
  v.rtmr0 = arr(td->rtmr0);
  v.rtmr1 = arr(td->rtmr1);
  v.rtmr2 = arr(td->rtmr2);
  v.rtmr3 = quoted_rtmr3;
  v.report_data = quote_rd;
  for (const auto& e : st.runtime_events) {
    v.runtime_events.push_back(RuntimeEvent{e.event, e.payload, static_cast<int>(e.version)});
  }
  v.vm_config = st.config;
  v.quote = st.quote;

  BootInfo& b = v.boot_info;
  b.tee_variant = bi->tee_variant.empty() ? "dstack-tdx" : bi->tee_variant;
  b.mr_aggregated = bi->mr_aggregated;
  b.os_image_hash = bi->os_image_hash;
  b.mr_system = bi->mr_system;
  b.app_id = bi->app_id;
  b.compose_hash = bi->compose_hash;
  b.instance_id = bi->instance_id;
  b.device_id = crypto::sha256(rep->ppid);
  b.key_provider_info = to_bytes(bi->key_provider_info);
  b.tcb_status = rep->status;
  b.advisory_ids = rep->advisory_ids;
  return v;
}

}  // namespace

Result<VerifiedAttestation> verify_attestation(ByteView versioned_attestation,
                                               std::optional<ByteView> expected_report_data,
                                               const VerifyOptions& opts) {
  auto va = attest::VersionedAttestation::from_bytes(versioned_attestation);
  if (!va.ok()) return va.error().wrap("decoding the attestation");
  Stack st{va->quote, va->runtime_events, va->report_data, va->config};
  return verify_stack(st, expected_report_data, opts);
}

Result<VerifiedAttestation> verify_legacy_attestation(ByteView quote, const std::optional<std::string>& event_log_json,
                                                      std::optional<ByteView> expected_report_data,
                                                      const VerifyOptions& opts) {
  Stack st;
  st.quote.assign(quote.begin(), quote.end());
  if (event_log_json) {
    auto events = attest::event_log_from_json(*event_log_json);
    if (!events.ok()) return events.error().wrap("parsing the legacy JSON event log");
    for (const auto& ev : *events) {
      if (ev.imr != 3) continue;
      auto re = attest::runtime_event_from_tdx_event(ev);
      if (!re.ok()) return re.error().wrap("legacy event log");
      st.runtime_events.push_back(std::move(*re));
    }
  }
  return verify_stack(st, expected_report_data, opts);
}

Result<crypto::P256Key> p256_public_key_from_spki(ByteView spki_der) {
  const unsigned char* p = spki_der.data();
  EVP_PKEY* pkey = d2i_PUBKEY(nullptr, &p, static_cast<long>(spki_der.size()));
  if (!pkey) return make_error("not a DER SubjectPublicKeyInfo");
  if (p != spki_der.data() + spki_der.size()) {
    EVP_PKEY_free(pkey);
    return make_error("trailing bytes after the SubjectPublicKeyInfo");
  }
  char group[64] = {0};
  size_t group_len = 0;
  if (EVP_PKEY_get_base_id(pkey) != EVP_PKEY_EC ||
      !EVP_PKEY_get_utf8_string_param(pkey, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group), &group_len) ||
      std::string_view(group, group_len) != "prime256v1") {
    EVP_PKEY_free(pkey);
    return make_error("the public key is not an ECDSA P-256 key");
  }
  return crypto::P256Key(pkey);
}

Result<VerifiedAttestation> verify_peer_attestation(ByteView cert_der, const VerifyOptions& opts) {
  auto cert = crypto::Certificate::from_der(cert_der);
  if (!cert.ok()) return cert.error().wrap("parsing the peer certificate");
  TRY_ASSIGN(CertExtensions ext, read_extensions(*cert));
  Bytes expected = ratls_report_data(cert->spki_der());
  if (ext.attestation) {
    return verify_attestation(*ext.attestation, ByteView(expected), opts);
  }
  if (ext.legacy_quote) return verify_legacy_attestation(*ext.legacy_quote, ext.legacy_event_log, ByteView(expected), opts);
  return make_error("No attestation provided");
}

}  // namespace dstack::ratls
