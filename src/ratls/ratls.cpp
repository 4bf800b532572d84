#include "ratls/ratls.h"

#include <zlib.h>

#include <ctime>

#include "attest/attestation.h"
#include "attest/eventlog.h"
#include "crypto/hash.h"

namespace dstack::ratls {

namespace {
constexpr std::string_view kElgzMagic = "ELGZv1";
constexpr size_t kMaxEventLogSize = 16 * 1024;

Result<std::string> gunzip_limited(ByteView data, size_t limit) {
  z_stream zs{};
  if (inflateInit2(&zs, 15 + 32) != Z_OK) return make_error("zlib init failed");
  zs.next_in = const_cast<Bytef*>(data.data());
  zs.avail_in = static_cast<uInt>(data.size());
  std::string out;
  char buf[4096];
  int rc = Z_OK;
  while (rc != Z_STREAM_END) {
    zs.next_out = reinterpret_cast<Bytef*>(buf);
    zs.avail_out = sizeof(buf);
    rc = inflate(&zs, Z_NO_FLUSH);
    if (rc != Z_OK && rc != Z_STREAM_END) {
      inflateEnd(&zs);
      return make_error("corrupt gzip data in the event log extension");
    }
    out.append(buf, sizeof(buf) - zs.avail_out);
    if (out.size() > limit) {
      inflateEnd(&zs);
      return make_error("event log extension larger than 16 KiB after decompression");
    }
    if (rc == Z_OK && zs.avail_in == 0 && zs.avail_out != 0) {
      inflateEnd(&zs);
      return make_error("truncated gzip data in the event log extension");
    }
  }
  inflateEnd(&zs);
  return out;
}

Bytes hash_by_name(std::string_view name, ByteView data, bool* ok) {
  *ok = true;
  if (name == "sha256") return crypto::sha256(data);
  if (name == "sha384") return crypto::sha384(data);
  if (name == "sha512" || name.empty()) return crypto::sha512(data);
  if (name == "sha3-256") return crypto::sha3_256(data);
  if (name == "sha3-384") return crypto::sha3_384(data);
  if (name == "sha3-512") return crypto::sha3_512(data);
  if (name == "keccak256") return crypto::keccak256(data);
  if (name == "keccak384") return crypto::keccak384(data);
  if (name == "keccak512") return crypto::keccak512(data);
  *ok = false;
  return {};
}
}  // namespace

Bytes ratls_report_data(ByteView spki_der) {
  return crypto::sha512(concat({as_view("ratls-cert:"), spki_der}));
}

Result<Bytes> quote_content_report_data(std::string_view tag, ByteView content, std::string_view hash) {
  if (hash == "raw") {
    if (content.size() != 64) {
      return make_error("report data for hash algorithm \"raw\" must be exactly 64 bytes, got " +
                        std::to_string(content.size()));
    }
    return Bytes(content.begin(), content.end());
  }
  bool ok = false;
  Bytes msg = concat({as_view(tag), as_view(":"), content});
  Bytes out = hash_by_name(hash, msg, &ok);
  if (!ok) {
    return make_error("unsupported hash algorithm \"" + std::string(hash) +
                      "\" (use sha256, sha384, sha512, sha3-256, sha3-384, sha3-512, keccak256, keccak384, "
                      "keccak512 or raw)");
  }
  out.resize(64, 0);
  return out;
}

Result<crypto::Certificate> issue_cert(const RaTlsCertParams& p, const crypto::P256Key& subject_key,
                                       const crypto::P256Key& issuer_key, const crypto::Certificate* issuer) {
  crypto::CertSpec spec;
  spec.org_name = p.org_name;
  spec.common_name = p.common_name;
  spec.alt_names = p.alt_names;
  spec.is_ca = p.is_ca;
  spec.ca_path_len = p.ca_path_len;
  spec.usage_server_auth = p.usage_server_auth;
  spec.usage_client_auth = p.usage_client_auth;
  if (p.not_before) spec.not_before = *p.not_before;
  spec.not_after = p.not_after;
  if (p.attestation) {
    auto va = attest::VersionedAttestation::from_bytes(*p.attestation);
    if (!va.ok()) return va.error().wrap("RA-TLS certificate: decoding the attestation");
    Bytes expected = ratls_report_data(subject_key.spki_der());
    if (va->report_data != expected) {
      return make_error(
          "RA-TLS certificate: the attestation's report_data is not SHA512(\"ratls-cert:\" || certificate key "
          "SPKI); request the attestation for this key");
    }
    TRY_ASSIGN(Bytes stripped, va->stripped().to_bytes());
    spec.extensions[kOidAttestation] = std::move(stripped);
  }
  if (p.app_id) spec.extensions[kOidAppId] = *p.app_id;
  if (p.special_usage) spec.extensions[kOidSpecialUsage] = to_bytes(*p.special_usage);
  if (p.app_info) spec.extensions[kOidAppInfo] = *p.app_info;
  if (p.legacy_quote) spec.extensions[kOidTdxQuote] = *p.legacy_quote;
  if (p.legacy_event_log) spec.extensions[kOidEventLog] = to_bytes(*p.legacy_event_log);
  return crypto::issue_certificate(spec, subject_key, issuer_key, issuer);
}

Result<CertExtensions> read_extensions(const crypto::Certificate& cert) {
  CertExtensions ext;
  ext.attestation = cert.extension(kOidAttestation);
  ext.legacy_quote = cert.extension(kOidTdxQuote);
  if (auto el = cert.extension(kOidEventLog)) {
    std::string_view s(reinterpret_cast<const char*>(el->data()), el->size());
    if (s.substr(0, kElgzMagic.size()) == kElgzMagic) {
      TRY_ASSIGN(ext.legacy_event_log,
                 gunzip_limited(ByteView(*el).subspan(kElgzMagic.size()), kMaxEventLogSize));
    } else {
      ext.legacy_event_log = std::string(s);
    }
  }
  ext.app_id = cert.extension(kOidAppId);
  if (auto u = cert.extension(kOidSpecialUsage)) ext.special_usage = to_string(*u);
  ext.app_info = cert.extension(kOidAppInfo);
  return ext;
}

Result<CertExtensions> read_extensions(ByteView cert_der) {
  auto cert = crypto::Certificate::from_der(cert_der);
  if (!cert.ok()) return cert.error().wrap("parsing the peer certificate");
  return read_extensions(*cert);
}

// ---- BootInfo ----

nlohmann::json BootInfo::to_webhook_json() const {
  nlohmann::json j;
  j["teeVariant"] = tee_variant;
  j["mrAggregated"] = to_hex(mr_aggregated);
  j["osImageHash"] = to_hex(os_image_hash);
  j["mrSystem"] = to_hex(mr_system);
  j["appId"] = to_hex(app_id);
  j["composeHash"] = to_hex(compose_hash);
  j["instanceId"] = to_hex(instance_id);
  j["deviceId"] = to_hex(device_id);
  j["keyProviderInfo"] = to_hex(key_provider_info);
  j["tcbStatus"] = tcb_status;
  j["advisoryIds"] = advisory_ids;
  return j;
}

Result<BootInfo> BootInfo::from_webhook_json(const nlohmann::json& j) {
  if (!j.is_object()) return make_error("BootInfo JSON must be an object");
  BootInfo b;
  auto str = [&](const char* key, std::string& out) -> Status {
    if (!j.contains(key) || j[key].is_null()) return Status::Ok();
    if (!j[key].is_string()) return make_error(std::string("BootInfo field ") + key + " must be a string");
    out = j[key].get<std::string>();
    return Status::Ok();
  };
  auto hex = [&](const char* key, Bytes& out) -> Status {
    std::string s;
    TRY(str(key, s));
    auto r = from_hex(s);
    if (!r.ok()) return r.error().wrap(std::string("BootInfo field ") + key);
    out = std::move(*r);
    return Status::Ok();
  };
  TRY(str("teeVariant", b.tee_variant));
  if (b.tee_variant.empty()) b.tee_variant = "dstack-tdx";
  TRY(hex("mrAggregated", b.mr_aggregated));
  TRY(hex("osImageHash", b.os_image_hash));
  TRY(hex("mrSystem", b.mr_system));
  TRY(hex("appId", b.app_id));
  TRY(hex("composeHash", b.compose_hash));
  TRY(hex("instanceId", b.instance_id));
  TRY(hex("deviceId", b.device_id));
  TRY(hex("keyProviderInfo", b.key_provider_info));
  TRY(str("tcbStatus", b.tcb_status));
  if (j.contains("advisoryIds") && !j["advisoryIds"].is_null()) {
    if (!j["advisoryIds"].is_array()) return make_error("BootInfo field advisoryIds must be an array");
    for (const auto& a : j["advisoryIds"]) {
      if (!a.is_string()) return make_error("BootInfo field advisoryIds must hold strings");
      b.advisory_ids.push_back(a.get<std::string>());
    }
  }
  return b;
}

}  // namespace dstack::ratls
