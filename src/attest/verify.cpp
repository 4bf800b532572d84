#include "attest/verify.h"

#include <algorithm>
#include <cstdio>
#include <ctime>
#include <list>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>

#include "attest/dcap_pki.h"
#include "crypto/hash.h"

namespace dstack::attest {
namespace {

using pki::Window;

// ---------------------------------------------------------------------------------------------------------
// TCB info (v2/v3) and QE identity (v2) as published by Intel PCS.

struct TcbLevel {
  std::vector<uint8_t> sgx_components;  // 16
  std::vector<uint8_t> tdx_components;  // 16 for TDX TCB info, else empty
  uint16_t pce_svn = 0;
  std::string status;
  std::vector<std::string> advisory_ids;
};

struct IsvLevel {  // QE identity / TDX module identity level
  uint16_t isv_svn = 0;
  std::string status;
  std::vector<std::string> advisory_ids;
};

struct TdxModuleIdentity {
  std::string id;
  Bytes mrsigner, attributes, attributes_mask;
  std::vector<IsvLevel> levels;
};

struct TcbInfo {
  std::string id;  // "SGX" / "TDX" (v3); empty for v2
  int version = 0;
  int64_t issue_date = 0, next_update = 0;
  std::string issue_date_text, next_update_text;
  Bytes fmspc, pce_id;
  std::vector<TcbLevel> levels;
  bool has_tdx_module = false;
  TdxModuleIdentity tdx_module;  // the "tdxModule" object (no levels)
  std::vector<TdxModuleIdentity> tdx_module_identities;
};

struct QeIdentity {
  std::string id;
  int version = 0;
  int64_t issue_date = 0, next_update = 0;
  std::string issue_date_text, next_update_text;
  Bytes miscselect, miscselect_mask, attributes, attributes_mask, mrsigner;
  uint16_t isv_prod_id = 0;
  std::vector<IsvLevel> levels;
};

using json = nlohmann::json;

Bytes hex_field(const json& j, const char* key) {
  auto b = from_hex(j.at(key).get<std::string>());
  if (!b.ok()) throw std::runtime_error(std::string("field \"") + key + "\" is not hex");
  return *b;
}

std::vector<std::string> advisories(const json& lvl) {
  std::vector<std::string> out;
  if (lvl.contains("advisoryIDs")) out = lvl.at("advisoryIDs").get<std::vector<std::string>>();
  return out;
}

int64_t date_field(const json& j, const char* key, std::string& text) {
  text = j.at(key).get<std::string>();
  auto t = parse_iso8601_utc(text);
  if (!t.ok()) throw std::runtime_error(std::string("field \"") + key + "\": " + t.error().message);
  return *t;
}

std::vector<IsvLevel> isv_levels(const json& arr) {
  std::vector<IsvLevel> out;
  for (const auto& l : arr) {
    IsvLevel lv;
    lv.isv_svn = l.at("tcb").at("isvsvn").get<uint16_t>();
    lv.status = l.at("tcbStatus").get<std::string>();
    lv.advisory_ids = advisories(l);
    out.push_back(std::move(lv));
  }
  return out;
}

Result<TcbInfo> parse_tcb_info(const std::string& text) {
  try {
    json j = json::parse(text);
    if (j.contains("tcbInfo") && j.at("tcbInfo").is_object()) j = j.at("tcbInfo");
    TcbInfo t;
    t.id = j.value("id", std::string());
    t.version = j.at("version").get<int>();
    t.issue_date = date_field(j, "issueDate", t.issue_date_text);
    t.next_update = date_field(j, "nextUpdate", t.next_update_text);
    t.fmspc = hex_field(j, "fmspc");
    t.pce_id = hex_field(j, "pceId");
    for (const auto& l : j.at("tcbLevels")) {
      TcbLevel lv;
      const json& tcb = l.at("tcb");
      if (tcb.contains("sgxtcbcomponents")) {
        for (const auto& c : tcb.at("sgxtcbcomponents")) lv.sgx_components.push_back(c.at("svn").get<uint8_t>());
      } else {  // TCB info v2: sgxtcbcomp01svn .. sgxtcbcomp16svn
        for (int i = 1; i <= 16; ++i) {
          char key[32];
          std::snprintf(key, sizeof key, "sgxtcbcomp%02dsvn", i);
          lv.sgx_components.push_back(tcb.at(key).get<uint8_t>());
        }
      }
      if (tcb.contains("tdxtcbcomponents")) {
        for (const auto& c : tcb.at("tdxtcbcomponents")) lv.tdx_components.push_back(c.at("svn").get<uint8_t>());
      }
      if (lv.sgx_components.size() != 16) throw std::runtime_error("tcb level needs 16 sgxtcbcomponents");
      if (!lv.tdx_components.empty() && lv.tdx_components.size() != 16) {
        throw std::runtime_error("tcb level needs 16 tdxtcbcomponents");
      }
      lv.pce_svn = tcb.at("pcesvn").get<uint16_t>();
      lv.status = l.at("tcbStatus").get<std::string>();
      lv.advisory_ids = advisories(l);
      t.levels.push_back(std::move(lv));
    }
    if (j.contains("tdxModule")) {
      const json& m = j.at("tdxModule");
      t.has_tdx_module = true;
      t.tdx_module.mrsigner = hex_field(m, "mrsigner");
      t.tdx_module.attributes = hex_field(m, "attributes");
      t.tdx_module.attributes_mask = hex_field(m, "attributesMask");
    }
    if (j.contains("tdxModuleIdentities")) {
      for (const auto& m : j.at("tdxModuleIdentities")) {
        TdxModuleIdentity id;
        id.id = m.at("id").get<std::string>();
        id.mrsigner = hex_field(m, "mrsigner");
        id.attributes = hex_field(m, "attributes");
        id.attributes_mask = hex_field(m, "attributesMask");
        id.levels = isv_levels(m.at("tcbLevels"));
        t.tdx_module_identities.push_back(std::move(id));
      }
    }
    return t;
  } catch (const std::exception& e) {
    return make_error(std::string("TCB info: malformed JSON: ") + e.what());
  }
}

Result<QeIdentity> parse_qe_identity(const std::string& text) {
  try {
    json j = json::parse(text);
    if (j.contains("enclaveIdentity") && j.at("enclaveIdentity").is_object()) j = j.at("enclaveIdentity");
    QeIdentity q;
    q.id = j.at("id").get<std::string>();
    q.version = j.at("version").get<int>();
    q.issue_date = date_field(j, "issueDate", q.issue_date_text);
    q.next_update = date_field(j, "nextUpdate", q.next_update_text);
    q.miscselect = hex_field(j, "miscselect");
    q.miscselect_mask = hex_field(j, "miscselectMask");
    q.attributes = hex_field(j, "attributes");
    q.attributes_mask = hex_field(j, "attributesMask");
    q.mrsigner = hex_field(j, "mrsigner");
    q.isv_prod_id = j.at("isvprodid").get<uint16_t>();
    q.levels = isv_levels(j.at("tcbLevels"));
    if (q.miscselect.size() != 4 || q.miscselect_mask.size() != 4) throw std::runtime_error("miscselect must be 4 bytes");
    if (q.attributes.size() != 16 || q.attributes_mask.size() != 16) throw std::runtime_error("attributes must be 16 bytes");
    if (q.mrsigner.size() != 32) throw std::runtime_error("mrsigner must be 32 bytes");
    return q;
  } catch (const std::exception& e) {
    return make_error(std::string("QE identity: malformed JSON: ") + e.what());
  }
}

std::string fmt_time(int64_t t) {
  time_t tt = static_cast<time_t>(t);
  struct tm tm {};
  gmtime_r(&tt, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return std::to_string(t) + " (" + buf + ")";
}

// ---------------------------------------------------------------------------------------------------------
// TCB status convergence (Intel QVL TcbLevelCheck / TdxModuleCheck).

int severity(const std::string& s) {
  static const char* order[] = {"UpToDate", "SWHardeningNeeded", "ConfigurationNeeded",
                                "ConfigurationAndSWHardeningNeeded", "OutOfDate", "OutOfDateConfigurationNeeded",
                                "Revoked"};
  for (int i = 0; i < 7; ++i)
    if (s == order[i]) return i;
  return -1;
}

// Combines the platform (TCB level) status with a QE or TDX module status.
std::string converge(const std::string& platform, const std::string& other) {
  if (other == "OutOfDate") {
    if (platform == "UpToDate" || platform == "SWHardeningNeeded") return "OutOfDate";
    if (platform == "ConfigurationNeeded" || platform == "ConfigurationAndSWHardeningNeeded") {
      return "OutOfDateConfigurationNeeded";
    }
  }
  if (other == "Revoked") return "Revoked";
  return platform;
}

void add_advisories(std::vector<std::string>& out, const std::vector<std::string>& in) {
  for (const auto& a : in)
    if (std::find(out.begin(), out.end(), a) == out.end()) out.push_back(a);
}

bool masked_equal(ByteView a, ByteView b, ByteView mask) {
  if (a.size() != b.size() || a.size() != mask.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if ((a[i] & mask[i]) != (b[i] & mask[i])) return false;
  return true;
}

template <size_t N>
ByteView bv(const ByteArray<N>& a) {
  return ByteView(a.data(), N);
}

// ---------------------------------------------------------------------------------------------------------
// Cached state.

struct CollateralState {
  TcbInfo tcb_info;
  QeIdentity qe_identity;
  std::vector<pki::CrlPtr> crls;  // root CA CRL, PCK CRL
  Window window;
};

struct PckState {
  pki::X509Ptr leaf;
  pki::PkeyPtr leaf_key;
  pki::PckExtension ext;
  Window window;
};

Status check_collateral_dates(const char* what, int64_t issue, const std::string& issue_text, int64_t next,
                              const std::string& next_text, int64_t now) {
  if (now > next) {
    return make_error(std::string("collateral expired: ") + what + " nextUpdate " + next_text +
                      " is before the verification time " + fmt_time(now) + "; fetch fresh collateral");
  }
  if (now < issue) {
    return make_error(std::string("collateral not yet valid: ") + what + " issueDate " + issue_text +
                      " is after the verification time " + fmt_time(now));
  }
  return Status::Ok();
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------

Result<int64_t> parse_iso8601_utc(std::string_view s) {
  int Y, M, D, h, m, sec;
  char tail[8] = {0};
  std::string str(s);
  int n = std::sscanf(str.c_str(), "%4d-%2d-%2dT%2d:%2d:%2d%7s", &Y, &M, &D, &h, &m, &sec, tail);
  if (n != 7 || (std::string(tail) != "Z" && std::string(tail) != "+00:00")) {
    return make_error("not an ISO 8601 UTC time (YYYY-MM-DDTHH:MM:SSZ): \"" + str + "\"");
  }
  if (M < 1 || M > 12 || D < 1 || D > 31 || h > 23 || m > 59 || sec > 60) {
    return make_error("ISO 8601 time out of range: \"" + str + "\"");
  }
  struct tm tm {};
  tm.tm_year = Y - 1900;
  tm.tm_mon = M - 1;
  tm.tm_mday = D;
  tm.tm_hour = h;
  tm.tm_min = m;
  tm.tm_sec = sec;
  return static_cast<int64_t>(timegm(&tm));
}

struct QuoteVerifier::Impl {
  TrustOptions trust;
  size_t max_entries;
  std::vector<pki::X509Ptr> roots;
  std::optional<Error> roots_error;

  std::mutex mu;
  std::map<Bytes, std::shared_ptr<const CollateralState>> collateral_cache;
  std::map<Bytes, std::shared_ptr<const PckState>> pck_cache;

  Impl(TrustOptions t, size_t max) : trust(std::move(t)), max_entries(max) {
    auto add = [&](const std::string& pem, const std::string& what) {
      auto certs = pki::certs_from_pem(pem, what);
      if (!certs.ok()) {
        roots_error = certs.error();
        return;
      }
      for (auto& c : *certs) roots.push_back(c);
    };
    if (trust.trust_intel_root) add(intel_sgx_root_ca_pem(), "Intel SGX Root CA");
    for (const auto& pem : trust.extra_root_pems) add(pem, "extra trusted root");
    if (roots.empty() && !roots_error) roots_error = make_error("no trusted root CA configured");
  }

  template <typename M, typename V>
  void store(M& cache, const Bytes& key, V value) {
    if (max_entries == 0) return;
    std::lock_guard<std::mutex> lock(mu);
    if (cache.size() >= max_entries) cache.erase(cache.begin());
    cache[key] = std::move(value);
  }
  template <typename M>
  auto lookup(M& cache, const Bytes& key, int64_t now) -> typename M::mapped_type {
    if (max_entries == 0) return nullptr;
    std::lock_guard<std::mutex> lock(mu);
    auto it = cache.find(key);
    if (it == cache.end() || !it->second->window.contains(now)) return nullptr;
    return it->second;
  }

  Result<std::shared_ptr<const CollateralState>> collateral_state(const Collateral& c, const Bytes& key, int64_t now) {
    if (auto hit = lookup(collateral_cache, key, now)) return hit;
    auto st = std::make_shared<CollateralState>();
    TRY_ASSIGN(st->tcb_info, parse_tcb_info(c.tcb_info));
    TRY_ASSIGN(st->qe_identity, parse_qe_identity(c.qe_identity));
    const auto& ti = st->tcb_info;
    const auto& qi = st->qe_identity;
    TRY(check_collateral_dates("TCB info", ti.issue_date, ti.issue_date_text, ti.next_update, ti.next_update_text, now));
    TRY(check_collateral_dates("QE identity", qi.issue_date, qi.issue_date_text, qi.next_update, qi.next_update_text,
                               now));
    st->window.narrow(ti.issue_date, ti.next_update);
    st->window.narrow(qi.issue_date, qi.next_update);

    TRY_ASSIGN(auto root_crl, pki::crl_from_der(c.root_ca_crl, "root CA CRL"));
    TRY_ASSIGN(auto pck_crl, pki::crl_from_der(c.pck_crl, "PCK CRL"));
    st->crls = {root_crl, pck_crl};

    // PCK CRL issuer chain (also proves the PCK CRL's issuer descends from the root).
    TRY_ASSIGN(auto crl_chain, pki::certs_from_pem(c.pck_crl_issuer_chain, "PCK CRL issuer chain"));
    TRY(pki::verify_chain(crl_chain, roots, st->crls, now, "PCK CRL issuer chain", st->window));

    // TCB info: issuer chain + signature over the exact JSON text.
    TRY_ASSIGN(auto tcb_chain, pki::certs_from_pem(c.tcb_info_issuer_chain, "TCB info issuer chain"));
    TRY(pki::verify_chain(tcb_chain, roots, st->crls, now, "TCB info issuer chain", st->window));
    if (!pki::verify_raw_sig(pki::cert_pubkey(tcb_chain[0]).get(), as_view(c.tcb_info), c.tcb_info_signature)) {
      return make_error("TCB info signature is invalid (not signed by \"" + pki::cert_cn(tcb_chain[0].get()) +
                        "\"): the collateral was altered or is corrupt");
    }
    // QE identity.
    TRY_ASSIGN(auto qe_chain, pki::certs_from_pem(c.qe_identity_issuer_chain, "QE identity issuer chain"));
    TRY(pki::verify_chain(qe_chain, roots, st->crls, now, "QE identity issuer chain", st->window));
    if (!pki::verify_raw_sig(pki::cert_pubkey(qe_chain[0]).get(), as_view(c.qe_identity), c.qe_identity_signature)) {
      return make_error("QE identity signature is invalid (not signed by \"" + pki::cert_cn(qe_chain[0].get()) +
                        "\"): the collateral was altered or is corrupt");
    }
    std::shared_ptr<const CollateralState> out = st;
    store(collateral_cache, key, out);
    return out;
  }

  Result<std::shared_ptr<const PckState>> pck_state(const Quote& q, const CollateralState& cs, const Bytes& ckey,
                                                    int64_t now) {
    const auto& sd = q.signature;
    if (sd.pck_cert_data_type != kCertTypePckCertChain) {
      return make_error("quote: unsupported PCK certification data type " + std::to_string(sd.pck_cert_data_type) +
                        " (only 5 = PEM PCK certificate chain is supported)");
    }
    Bytes key = crypto::sha256(concat({ckey, sd.pck_cert_data}));
    if (auto hit = lookup(pck_cache, key, now)) return hit;
    auto st = std::make_shared<PckState>();
    st->window = cs.window;
    TRY_ASSIGN(auto chain, pki::certs_from_pem(to_string(sd.pck_cert_data), "PCK certificate chain in quote"));
    if (chain.size() < 2) return make_error("PCK certificate chain in quote is too short (needs leaf and CA)");
    TRY(pki::verify_chain(chain, roots, cs.crls, now, "PCK certificate chain", st->window));
    st->leaf = chain[0];
    st->leaf_key = pki::cert_pubkey(chain[0]);
    TRY_ASSIGN(st->ext, pki::parse_pck_extension(chain[0].get()));
    std::shared_ptr<const PckState> out = st;
    store(pck_cache, key, out);
    return out;
  }

  Result<VerifiedReport> verify(ByteView raw, const Collateral& c, int64_t now) {
    if (roots_error) return roots_error->wrap("trusted roots");
    TRY_ASSIGN(Quote q, parse_quote(raw));
    Bytes ckey = concat({collateral_digest(c)});
    TRY_ASSIGN(auto cs, collateral_state(c, ckey, now));
    const TcbInfo& ti = cs->tcb_info;
    const QeIdentity& qi = cs->qe_identity;

    if (q.is_tdx()) {
      if (ti.id != "TDX" || ti.version < 3) {
        return make_error("collateral mismatch: TDX quote but TCB info id is \"" + ti.id + "\" version " +
                          std::to_string(ti.version) + " (need TDX TCB info v3)");
      }
      if (qi.id != "TD_QE") return make_error("collateral mismatch: TDX quote but QE identity id is \"" + qi.id + "\"");
    } else {
      if (!(ti.id == "SGX" || ti.id.empty())) {
        return make_error("collateral mismatch: SGX quote but TCB info id is \"" + ti.id + "\"");
      }
      if (qi.id != "QE") return make_error("collateral mismatch: SGX quote but QE identity id is \"" + qi.id + "\"");
    }

    TRY_ASSIGN(auto pck, pck_state(q, *cs, ckey, now));
    const auto& sd = q.signature;

    // QE report signed by the PCK key.
    if (!pki::verify_raw_sig(pck->leaf_key.get(), sd.qe_report_raw, bv(sd.qe_report_signature))) {
      return make_error("QE report signature is invalid (must be signed by the PCK certificate's key)");
    }
    // QE report data binds the attestation key and QE auth data.
    Bytes h = crypto::sha256(concat({bv(sd.ecdsa_attestation_key), sd.qe_auth_data}));
    if (!std::equal(h.begin(), h.end(), sd.qe_report.report_data.begin())) {
      return make_error("QE report data does not match SHA-256(attestation key || QE auth data)");
    }
    // Quote signature over header || body by the attestation key.
    TRY_ASSIGN(auto att_key, pki::pkey_from_xy(bv(sd.ecdsa_attestation_key)));
    if (!pki::verify_raw_sig(att_key.get(), raw.first(q.signed_length), bv(sd.ecdsa_signature))) {
      return make_error("quote signature is invalid: header/report body do not match the attestation key's signature");
    }

    // QE identity policy.
    const auto& qr = sd.qe_report;
    if (!std::equal(qi.mrsigner.begin(), qi.mrsigner.end(), qr.mr_signer.begin())) {
      return make_error("QE identity mismatch: QE MRSIGNER " + hex(qr.mr_signer) + " != expected " +
                        to_hex(qi.mrsigner));
    }
    if (qr.isv_prod_id != qi.isv_prod_id) {
      return make_error("QE identity mismatch: QE ISVPRODID " + std::to_string(qr.isv_prod_id) + " != expected " +
                        std::to_string(qi.isv_prod_id));
    }
    uint8_t misc[4] = {static_cast<uint8_t>(qr.misc_select), static_cast<uint8_t>(qr.misc_select >> 8),
                       static_cast<uint8_t>(qr.misc_select >> 16), static_cast<uint8_t>(qr.misc_select >> 24)};
    if (!masked_equal(ByteView(misc, 4), qi.miscselect, qi.miscselect_mask)) {
      return make_error("QE identity mismatch: masked MISCSELECT differs");
    }
    if (!masked_equal(bv(qr.attributes), qi.attributes, qi.attributes_mask)) {
      return make_error("QE identity mismatch: masked ATTRIBUTES differ");
    }
    const IsvLevel* qe_level = nullptr;
    for (const auto& l : qi.levels) {
      if (qr.isv_svn >= l.isv_svn) {
        qe_level = &l;
        break;
      }
    }
    if (qe_level == nullptr) {
      return make_error("QE ISVSVN " + std::to_string(qr.isv_svn) + " is below every TCB level of the QE identity");
    }

    // Platform identity vs TCB info.
    const auto& ext = pck->ext;
    if (ext.fmspc != ti.fmspc) {
      return make_error("collateral mismatch: PCK certificate FMSPC " + to_hex(ext.fmspc) + " != TCB info FMSPC " +
                        to_hex(ti.fmspc));
    }
    if (!ext.pce_id.empty() && ext.pce_id != ti.pce_id) {
      return make_error("collateral mismatch: PCK certificate PCEID " + to_hex(ext.pce_id) + " != TCB info PCEID " +
                        to_hex(ti.pce_id));
    }

    // TCB level matching.
    const TcbLevel* sgx_level = nullptr;
    const TcbLevel* tdx_level = nullptr;
    const auto& svn = q.td_report.tee_tcb_svn;
    for (const auto& l : ti.levels) {
      bool sgx_ok = ext.pce_svn >= l.pce_svn;
      for (size_t i = 0; i < 16 && sgx_ok; ++i) sgx_ok = ext.sgx_tcb_components[i] >= l.sgx_components[i];
      if (!sgx_ok) continue;
      if (sgx_level == nullptr) sgx_level = &l;
      if (!q.is_tdx()) break;
      if (l.tdx_components.size() != 16) return make_error("TCB info: TDX TCB level without tdxtcbcomponents");
      bool tdx_ok = true;
      for (size_t i = (svn[1] > 0 ? 2 : 0); i < 16 && tdx_ok; ++i) tdx_ok = svn[i] >= l.tdx_components[i];
      if (tdx_ok) {
        tdx_level = &l;
        break;
      }
    }
    if (sgx_level == nullptr) {
      return make_error("TCB not supported: no TCB level in the TCB info matches the PCK certificate's SGX TCB "
                        "(PCESVN " + std::to_string(ext.pce_svn) + ")");
    }
    VerifiedReport out;
    std::string status;
    if (q.is_tdx()) {
      if (tdx_level == nullptr) {
        return make_error("TCB not supported: no TCB level in the TCB info matches the quote's TEE_TCB_SVN " +
                          hex(svn));
      }
      status = tdx_level->status;
      out.platform_status = tdx_level->status;
      add_advisories(out.advisory_ids, tdx_level->advisory_ids);
      // TDX module identity.
      const auto& td = q.td_report;
      if (svn[1] > 0) {
        char id[16];
        std::snprintf(id, sizeof id, "TDX_%02X", svn[1]);
        const TdxModuleIdentity* mod = nullptr;
        for (const auto& m : ti.tdx_module_identities) {
          std::string up = m.id;
          std::transform(up.begin(), up.end(), up.begin(), ::toupper);
          if (up == id) mod = &m;
        }
        if (mod == nullptr) return make_error(std::string("TDX module mismatch: TCB info has no identity ") + id);
        if (mod->mrsigner.size() != 48 || !std::equal(mod->mrsigner.begin(), mod->mrsigner.end(), td.mr_signer_seam.begin())) {
          return make_error(std::string("TDX module mismatch: MRSIGNERSEAM differs from ") + id + " mrsigner");
        }
        if (!masked_equal(bv(td.seam_attributes), mod->attributes, mod->attributes_mask)) {
          return make_error(std::string("TDX module mismatch: masked SEAMATTRIBUTES differ from ") + id);
        }
        const IsvLevel* ml = nullptr;
        for (const auto& l : mod->levels) {
          if (svn[0] >= l.isv_svn) {
            ml = &l;
            break;
          }
        }
        if (ml == nullptr) {
          return make_error("TCB not supported: TDX module ISVSVN " + std::to_string(svn[0]) + " is below every " +
                            "level of " + id);
        }
        out.tdx_module_status = ml->status;
        add_advisories(out.advisory_ids, ml->advisory_ids);
        status = converge(status, ml->status);
      } else if (ti.has_tdx_module) {
        const auto& mod = ti.tdx_module;
        if (mod.mrsigner.size() != 48 || !std::equal(mod.mrsigner.begin(), mod.mrsigner.end(), td.mr_signer_seam.begin())) {
          return make_error("TDX module mismatch: MRSIGNERSEAM differs from the TCB info tdxModule mrsigner");
        }
        if (!masked_equal(bv(td.seam_attributes), mod.attributes, mod.attributes_mask)) {
          return make_error("TDX module mismatch: masked SEAMATTRIBUTES differ from the TCB info tdxModule");
        }
      }
    } else {
      status = sgx_level->status;
      out.platform_status = sgx_level->status;
      add_advisories(out.advisory_ids, sgx_level->advisory_ids);
    }
    out.qe_status = qe_level->status;
    add_advisories(out.advisory_ids, qe_level->advisory_ids);
    status = converge(status, qe_level->status);
    if (severity(status) < 0) return make_error("TCB info: unrecognised TCB status \"" + status + "\"");
    if (status == "Revoked") return make_error("TCB status is Revoked: the platform's TCB has been revoked by Intel");

    if (!trust.allow_debug) {
      if (q.is_tdx() && (q.td_report.td_attributes[0] & 0x01)) {
        return make_error("debug TD (TD_ATTRIBUTES.TUD set): not accepted unless TrustOptions.allow_debug");
      }
      if (q.is_sgx() && (q.sgx_report.attributes[0] & 0x02)) {
        return make_error("debug enclave (ATTRIBUTES.DEBUG set): not accepted unless TrustOptions.allow_debug");
      }
    }

    out.status = status;
    out.tee_type = q.header.tee_type;
    out.ppid = ext.ppid;
    out.fmspc = ext.fmspc;
    out.cpu_svn = ext.cpu_svn;
    out.pce_svn = ext.pce_svn;
    out.quote = std::move(q);
    return out;
  }
};

QuoteVerifier::QuoteVerifier(TrustOptions trust, size_t max_entries)
    : impl_(std::make_unique<Impl>(std::move(trust), max_entries)) {}
QuoteVerifier::~QuoteVerifier() = default;

Result<VerifiedReport> QuoteVerifier::verify(ByteView quote, const Collateral& collateral, int64_t now_unix) {
  return impl_->verify(quote, collateral, now_unix);
}

void QuoteVerifier::clear_cache() {
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->collateral_cache.clear();
  impl_->pck_cache.clear();
}

Result<VerifiedReport> verify_quote(ByteView quote, const Collateral& collateral, int64_t now_unix,
                                    const TrustOptions& trust) {
  QuoteVerifier v(trust, 0);
  return v.verify(quote, collateral, now_unix);
}

}  // namespace dstack::attest
