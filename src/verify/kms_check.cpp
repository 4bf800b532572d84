#include "verify/kms_check.h"

#include <chrono>
#include <ctime>
#include <sstream>

#include "attest/attestation.h"
#include "attest/quote.h"
#include "attest/sim/platform.h"
#include "crypto/hash.h"
#include "crypto/k256.h"
#include "crypto/x509.h"
#include "rpc/http.h"

namespace dstack::verify {

namespace {

using Json = nlohmann::json;

void add(KmsReport& r, std::string name, bool ok, std::string detail) {
  r.checks.push_back(CheckItem{std::move(name), ok, std::move(detail)});
}

std::string base_url(std::string url) {
  while (!url.empty() && url.back() == '/') url.pop_back();
  if (url.size() >= 5 && url.compare(url.size() - 5, 5, "/prpc") == 0) url.resize(url.size() - 5);
  return url;
}

// A string field that holds hex; empty optional when absent / wrong type.
Result<Bytes> hex_field(const Json& obj, const char* name) {
  if (!obj.is_object() || !obj.contains(name) || obj[name].is_null())
    return make_error(std::string(name) + " is missing");
  if (!obj[name].is_string()) return make_error(std::string(name) + " is not a hex string");
  auto b = from_hex(obj[name].get<std::string>());
  if (!b.ok()) return b.error().wrap(name);
  return b;
}

std::string short_hex(ByteView b) {
  std::string h = to_hex(b);
  return h.size() > 24 ? h.substr(0, 16) + "..." + h.substr(h.size() - 8) : h;
}

// Quote verification against the configured trust source. Fills report fields; returns the check detail.
Result<attest::VerifiedReport> verify_quote_bytes(ByteView quote, const KmsCheckOptions& o, KmsReport& r) {
  int64_t now = o.now_unix ? o.now_unix : static_cast<int64_t>(std::time(nullptr));
  if (!o.sim_platform_dir.empty()) {
    if (!o.allow_sim_root)
      return make_error("refusing to trust the SIMULATED platform root CA in " + o.sim_platform_dir +
                        " without --allow-sim-root (a simulated quote proves nothing about real hardware)");
    TRY_ASSIGN(auto plat, attest::sim::SimPlatform::load(o.sim_platform_dir));
    TRY_ASSIGN(std::string cj, plat.tdx_collateral_json(now));
    TRY_ASSIGN(attest::Collateral coll, attest::parse_collateral_json(cj));
    attest::TrustOptions t = o.trust;
    t.trust_intel_root = false;
    t.extra_root_pems = {plat.root_ca_pem()};
    r.trust_root = "SIMULATED platform " + o.sim_platform_dir + " (not Intel)";
    return attest::verify_quote(quote, coll, now, t);
  }
  if (!o.collateral)
    return make_error(
        "no collateral to verify the quote: pass --collateral FILE (Intel PCS/PCCS collateral for this quote, "
        "optionally --root-ca PEM) or, for a simulated deployment, --sim-platform DIR --allow-sim-root");
  r.trust_root = o.trust.trust_intel_root ? "Intel SGX Root CA" : "custom root CA (--root-ca)";
  return attest::verify_quote(quote, *o.collateral, now, o.trust);
}

}  // namespace

Bytes kms_bootstrap_report_data(ByteView ca_pubkey, ByteView k256_pubkey) {
  std::string msg = "dstack-kms-genereted-keys-v1:" + to_hex(ca_pubkey) + ";" + to_hex(k256_pubkey) + ";";
  Bytes rd = crypto::keccak256(as_view(msg));
  rd.resize(64, 0);
  return rd;
}

const CheckItem* KmsReport::find(const std::string& name) const {
  for (const auto& c : checks)
    if (c.name == name) return &c;
  return nullptr;
}

namespace {
void check_meta_impl(const Json& meta, const std::vector<Bytes>& tls_chain, const KmsCheckOptions& o, KmsReport& r) {
  // 1. ca_cert
  std::optional<crypto::Certificate> ca;
  if (!meta.is_object() || !meta.contains("ca_cert") || !meta["ca_cert"].is_string() ||
      meta["ca_cert"].get<std::string>().empty()) {
    add(r, "ca_cert", false, "GetMeta has no ca_cert: the KMS has no root CA (bootstrap did not run?)");
  } else {
    auto c = crypto::Certificate::from_pem(meta["ca_cert"].get<std::string>());
    if (!c.ok()) {
      add(r, "ca_cert", false, "ca_cert is not a PEM certificate: " + c.error().message);
    } else {
      ca = *c;
      add(r, "ca_cert", true, "CN=" + c->subject_cn() + (c->is_ca() ? ", CA" : ", NOT a CA certificate"));
    }
  }
  // 2. k256_pubkey
  Bytes k256;
  {
    auto k = hex_field(meta, "k256_pubkey");
    if (!k.ok()) {
      add(r, "k256_pubkey", false, "GetMeta " + k.error().message + ": no Ethereum root signing key");
    } else if (k->size() != 33 || !crypto::k256_compress(*k).ok()) {
      add(r, "k256_pubkey", false, "k256_pubkey is not a 33-byte compressed secp256k1 point: " + to_hex(*k));
    } else {
      k256 = *k;
      add(r, "k256_pubkey", true, to_hex(k256));
    }
  }
  // 3. TLS certificate of the endpoint signed by the root CA (live checks only).
  if (!tls_chain.empty() || !o.url.empty()) {
    if (tls_chain.empty()) {
      add(r, "tls_cert", false, "the server presented no TLS certificate");
    } else if (!ca) {
      add(r, "tls_cert", false, "cannot check the TLS certificate without a valid ca_cert");
    } else {
      auto leaf = crypto::Certificate::from_der(tls_chain.front());
      if (!leaf.ok()) add(r, "tls_cert", false, "unparseable TLS certificate: " + leaf.error().message);
      else if (!leaf->signed_by(*ca))
        add(r, "tls_cert", false, "the TLS certificate (CN=" + leaf->subject_cn() +
                                      ") is NOT signed by the served root CA: another server answers on this port?");
      else add(r, "tls_cert", true, "CN=" + leaf->subject_cn() + ", signed by the root CA");
    }
  }
  // 4. bootstrap_info
  if (!meta.is_object() || !meta.contains("bootstrap_info") || !meta["bootstrap_info"].is_object()) {
    add(r, "bootstrap_info", false,
        "bootstrap_info is null: the KMS holds no bootstrap-info.json, so nothing binds its keys to a TDX quote "
        "(quote_enabled/attest_rpc_cert = false, guest agent unreachable at bootstrap, or keys onboarded)");
    return;
  }
  const Json& bi = meta["bootstrap_info"];
  auto ca_pub = hex_field(bi, "ca_pubkey");
  auto bk256 = hex_field(bi, "k256_pubkey");
  auto att_bytes = hex_field(bi, "attestation");
  if (!ca_pub.ok() || !bk256.ok() || !att_bytes.ok()) {
    std::string why = !ca_pub.ok() ? ca_pub.error().message : !bk256.ok() ? bk256.error().message
                                                                            : att_bytes.error().message;
    add(r, "bootstrap_info", false, "bootstrap_info " + why);
    return;
  }
  add(r, "bootstrap_info", true,
      "ca_pubkey " + std::to_string(ca_pub->size()) + " B, k256_pubkey " + std::to_string(bk256->size()) +
          " B, attestation " + std::to_string(att_bytes->size()) + " B");
  // 5. key consistency
  if (!ca) add(r, "ca_pubkey_match", false, "no valid ca_cert to compare with");
  else if (ca->spki_der() != *ca_pub)
    add(r, "ca_pubkey_match", false, "bootstrap_info.ca_pubkey (" + short_hex(*ca_pub) +
                                         ") != SPKI of the served ca_cert (" + short_hex(ca->spki_der()) + ")");
  else add(r, "ca_pubkey_match", true, "bootstrap_info.ca_pubkey == SPKI(ca_cert)");
  if (k256.empty()) add(r, "k256_match", false, "no valid k256_pubkey to compare with");
  else if (k256 != *bk256)
    add(r, "k256_match", false,
        "bootstrap_info.k256_pubkey (" + to_hex(*bk256) + ") != k256_pubkey (" + to_hex(k256) + ")");
  else add(r, "k256_match", true, "bootstrap_info.k256_pubkey == k256_pubkey");
  // 6. attestation -> quote
  if (att_bytes->empty()) {
    add(r, "attestation", false,
        "bootstrap_info.attestation is empty (\"quote\": null): the KMS bootstrapped without a quote; check "
        "quote_enabled/attest_rpc_cert = true and that /var/run/dstack.sock exists inside the CVM");
    return;
  }
  auto att = attest::VersionedAttestation::from_bytes(*att_bytes);
  if (!att.ok()) {
    add(r, "attestation", false, "cannot decode bootstrap_info.attestation: " + att.error().message);
    return;
  }
  auto q = attest::parse_quote(att->quote);
  if (!q.ok()) {
    add(r, "attestation", false, "cannot parse the TDX quote in the attestation: " + q.error().message);
    return;
  }
  if (!q->is_tdx()) {
    add(r, "attestation", false, "the attestation quote is " + q->tee_type_name() + ", expected TDX");
    return;
  }
  add(r, "attestation", true,
      "VersionedAttestation V0, TDX quote v" + std::to_string(q->header.version) + " (" +
          std::to_string(att->quote.size()) + " B), " + std::to_string(att->event_log.size()) + " event log entries");
  const auto& td = q->td_report;
  r.mr_td = attest::hex(td.mr_td);
  r.rtmr0 = attest::hex(td.rtmr0);
  r.rtmr1 = attest::hex(td.rtmr1);
  r.rtmr2 = attest::hex(td.rtmr2);
  r.rtmr3 = attest::hex(td.rtmr3);
  r.mr_config_id = attest::hex(td.mr_config_id);
  r.report_data = attest::hex(td.report_data);
  // 7. binding: recompute from the SERVED keys (not from bootstrap_info), so a mismatch anywhere shows up.
  Bytes ca_spki = ca ? ca->spki_der() : *ca_pub;
  Bytes k = k256.empty() ? *bk256 : k256;
  Bytes expected = kms_bootstrap_report_data(ca_spki, k);
  Bytes in_quote(td.report_data.begin(), td.report_data.end());
  if (in_quote != expected)
    add(r, "report_data_binding", false,
        "quote report_data " + short_hex(in_quote) + " != keccak256(\"dstack-kms-genereted-keys-v1:\" + "
        "hex(ca_pubkey) + \";\" + hex(k256_pubkey) + \";\") || 0^32 = " + short_hex(expected) +
        ": the quote does not attest these keys");
  else if (att->report_data != expected)
    add(r, "report_data_binding", false, "the attestation's report_data field differs from the quote's");
  else add(r, "report_data_binding", true, "quote report_data = keccak256(ca_pubkey, k256_pubkey) || 0^32");
  // 8. DCAP verification
  auto v = verify_quote_bytes(att->quote, o, r);
  if (!v.ok()) {
    add(r, "quote_verified", false, v.error().message);
    return;
  }
  r.tcb_status = v->status;
  r.advisory_ids = v->advisory_ids;
  add(r, "quote_verified", true, "TCB status " + v->status + ", root: " + r.trust_root);
}

}  // namespace

void check_meta(const Json& meta, const std::vector<Bytes>& tls_chain, const KmsCheckOptions& o, KmsReport& r) {
  check_meta_impl(meta, tls_chain, o, r);
  bool all = !r.checks.empty();
  for (const auto& c : r.checks) all = all && c.ok;
  r.ok = all;
}

KmsReport check_kms(const KmsCheckOptions& o) {
  KmsReport r;
  r.url = base_url(o.url);
  r.get_meta = nullptr;
  if (r.url.rfind("https://", 0) != 0) {
    add(r, "get_meta", false, "--url must be https://HOST:PORT (the KMS RPC endpoint uses TLS), got " + o.url);
    return r;
  }
  rpc::ClientOptions co;
  co.timeout = o.timeout;
  // No CA check: the KMS's root CA is self-signed; trust comes from the quote (see kms_check.h).
  co.insecure_skip_verify = true;
  auto t0 = std::chrono::steady_clock::now();
  auto resp = rpc::http_request("POST", r.url + "/prpc/KMS.GetMeta?json", "{}", co);
  auto t1 = std::chrono::steady_clock::now();
  double ms = std::chrono::duration<double, std::milli>(t1 - t0).count();
  if (!resp.ok()) {
    std::string hint;
    const std::string& m = resp.error().message;
    if (m.find("refused") != std::string::npos)
      hint = " (nothing listens there: is the KMS CVM running and its port mapped? check `vmm-cli lsvm` and "
             "/api/instances/<name>)";
    else if (m.find("timed out") != std::string::npos || m.find("timeout") != std::string::npos)
      hint = " (GetMeta hangs: see OPERATIONS.md 'GetMeta hangs or times out')";
    add(r, "get_meta", false, "GetMeta at " + r.url + " failed after " + std::to_string(static_cast<int>(ms)) +
                                  " ms: " + m + hint);
    return r;
  }
  if (resp->status != 200) {
    add(r, "get_meta", false, "GetMeta returned HTTP " + std::to_string(resp->status) + ": " + resp->body.substr(0, 300));
    return r;
  }
  Json meta = Json::parse(resp->body, nullptr, false);
  if (meta.is_discarded() || !meta.is_object()) {
    add(r, "get_meta", false, "GetMeta body is not a JSON object: " + resp->body.substr(0, 200));
    return r;
  }
  r.get_meta = meta;
  r.response_ms = ms;
  add(r, "get_meta", true, "HTTP 200 from " + r.url + "/prpc/KMS.GetMeta");
  std::ostringstream t;
  t.setf(std::ios::fixed);
  t.precision(1);
  t << ms << " ms (limit " << o.max_response_ms << " ms)";
  add(r, "response_time", ms < static_cast<double>(o.max_response_ms),
      ms < static_cast<double>(o.max_response_ms) ? t.str() : t.str() + ": GetMeta is slow; see OPERATIONS.md");
  check_meta(meta, resp->peer_cert_chain_der, o, r);
  return r;
}

std::string report_to_text(const KmsReport& r) {
  std::ostringstream s;
  s << "KMS " << (r.url.empty() ? std::string("(offline GetMeta)") : r.url) << "\n";
  if (r.get_meta.is_object()) {
    auto field = [&](const char* k) {
      if (!r.get_meta.contains(k)) return;
      const Json& v = r.get_meta[k];
      s << "  " << k << ": " << (v.is_string() ? v.get<std::string>() : v.dump()) << "\n";
    };
    for (const char* k : {"k256_pubkey", "is_dev", "allow_any_upgrade", "gateway_app_id", "kms_contract_address",
                          "chain_id", "app_auth_implementation"})
      field(k);
  }
  if (!r.mr_td.empty()) {
    s << "  mr_td: " << r.mr_td << "\n  rtmr0: " << r.rtmr0 << "\n  rtmr1: " << r.rtmr1 << "\n  rtmr2: " << r.rtmr2
      << "\n  rtmr3: " << r.rtmr3 << "\n  mr_config_id: " << r.mr_config_id << "\n  report_data: " << r.report_data
      << "\n";
  }
  if (!r.tcb_status.empty()) {
    s << "  tcb_status: " << r.tcb_status;
    if (!r.advisory_ids.empty()) {
      s << " (advisories:";
      for (const auto& a : r.advisory_ids) s << " " << a;
      s << ")";
    }
    s << "\n";
  }
  s << "checks:\n";
  for (const auto& c : r.checks) s << "  [" << (c.ok ? "PASS" : "FAIL") << "] " << c.name << ": " << c.detail << "\n";
  s << "verdict: " << (r.ok ? "PASS" : "FAIL") << "\n";
  return s.str();
}

nlohmann::ordered_json report_to_json(const KmsReport& r) {
  nlohmann::ordered_json j;
  j["url"] = r.url;
  j["ok"] = r.ok;
  j["verdict"] = r.ok ? "PASS" : "FAIL";
  j["response_ms"] = r.response_ms;
  auto checks = nlohmann::ordered_json::array();
  for (const auto& c : r.checks) checks.push_back({{"name", c.name}, {"ok", c.ok}, {"detail", c.detail}});
  j["checks"] = checks;
  j["tcb_status"] = r.tcb_status;
  j["advisory_ids"] = r.advisory_ids;
  j["trust_root"] = r.trust_root;
  j["mr_td"] = r.mr_td;
  j["rtmr0"] = r.rtmr0;
  j["rtmr1"] = r.rtmr1;
  j["rtmr2"] = r.rtmr2;
  j["rtmr3"] = r.rtmr3;
  j["mr_config_id"] = r.mr_config_id;
  j["report_data"] = r.report_data;
  j["get_meta"] = r.get_meta;
  return j;
}

}  // namespace dstack::verify
