#include "kms/csr.h"

#include "attest/scale.h"

namespace dstack::kms {

Bytes encode_csr(const CertSigningRequest& csr) {
  attest::scale::Encoder e;
  e.str(csr.confirm).bytes(csr.pubkey);
  const CertConfig& c = csr.config;
  e.option_str(c.org_name).str(c.subject).str_vec(c.subject_alt_names);
  e.boolean(c.usage_server_auth).boolean(c.usage_client_auth).boolean(c.ext_quote);
  if (csr.version == 1) {
    e.bytes(csr.quote).bytes(csr.event_log);
  } else {
    e.boolean(c.ext_app_info).option_u64(c.not_before).option_u64(c.not_after);
    e.raw(csr.attestation);
  }
  return e.take();
}

Result<CertSigningRequest> decode_csr(ByteView data, uint32_t version) {
  if (version != 1 && version != 2)
    return make_error("Unsupported SignCert api_version " + std::to_string(version) + " (expected 1 or 2)");
  attest::scale::Decoder d(data);
  CertSigningRequest csr;
  csr.version = version;
  auto field = [](auto r, const char* name) {
    if (!r.ok()) return decltype(r)(r.error().wrap(std::string("CSR field ") + name));
    return r;
  };
  TRY_ASSIGN(csr.confirm, field(d.str(), "confirm"));
  TRY_ASSIGN(csr.pubkey, field(d.bytes(), "pubkey"));
  CertConfig& c = csr.config;
  TRY_ASSIGN(c.org_name, field(d.option_str(), "config.org_name"));
  TRY_ASSIGN(c.subject, field(d.str(), "config.subject"));
  TRY_ASSIGN(c.subject_alt_names, field(d.str_vec(), "config.subject_alt_names"));
  TRY_ASSIGN(c.usage_server_auth, field(d.boolean(), "config.usage_server_auth"));
  TRY_ASSIGN(c.usage_client_auth, field(d.boolean(), "config.usage_client_auth"));
  TRY_ASSIGN(c.ext_quote, field(d.boolean(), "config.ext_quote"));
  if (version == 1) {
    TRY_ASSIGN(csr.quote, field(d.bytes(), "quote"));
    TRY_ASSIGN(csr.event_log, field(d.bytes(), "event_log"));
    auto fin = d.finish();
    if (!fin.ok()) return fin.error().wrap("CSR V1");
  } else {
    TRY_ASSIGN(c.ext_app_info, field(d.boolean(), "config.ext_app_info"));
    TRY_ASSIGN(c.not_before, field(d.option_u64(), "config.not_before"));
    TRY_ASSIGN(c.not_after, field(d.option_u64(), "config.not_after"));
    csr.attestation = d.rest();
  }
  return csr;
}

}  // namespace dstack::kms
