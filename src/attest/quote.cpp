#include "attest/quote.h"

#include <cstring>

namespace dstack::attest {
namespace {

// Little-endian, bounds-checked cursor over the quote bytes. Every read names the field so that a
// truncated quote produces "quote truncated at offset N reading <field> (needs K bytes, M left)".
class Reader {
 public:
  // `base` is the absolute quote offset of data[0], so errors report quote offsets.
  Reader(ByteView data, size_t base) : data_(data), base_(base) {}

  size_t offset() const { return off_; }
  size_t remaining() const { return data_.size() - off_; }

  Status need(size_t n, const char* field) const {
    if (n > remaining()) {
      return make_error("quote truncated at offset " + std::to_string(base_ + off_) + " reading " + field +
                        " (needs " + std::to_string(n) + " bytes, " + std::to_string(remaining()) + " left)");
    }
    return Status::Ok();
  }
  Result<uint16_t> u16(const char* field) {
    TRY(need(2, field));
    uint16_t v = static_cast<uint16_t>(data_[off_] | (data_[off_ + 1] << 8));
    off_ += 2;
    return v;
  }
  Result<uint32_t> u32(const char* field) {
    TRY(need(4, field));
    uint32_t v = static_cast<uint32_t>(data_[off_]) | (static_cast<uint32_t>(data_[off_ + 1]) << 8) |
                 (static_cast<uint32_t>(data_[off_ + 2]) << 16) | (static_cast<uint32_t>(data_[off_ + 3]) << 24);
    off_ += 4;
    return v;
  }
  template <size_t N>
  Status arr(ByteArray<N>& out, const char* field) {
    TRY(need(N, field));
    std::memcpy(out.data(), data_.data() + off_, N);
    off_ += N;
    return Status::Ok();
  }
  Result<ByteView> take(size_t n, const char* field) {
    TRY(need(n, field));
    ByteView v = data_.subspan(off_, n);
    off_ += n;
    return v;
  }

 private:
  ByteView data_;
  size_t base_ = 0;
  size_t off_ = 0;
};

#define R_U16(dst, r, f) TRY_ASSIGN(dst, (r).u16(f))
#define R_U32(dst, r, f) TRY_ASSIGN(dst, (r).u32(f))
#define R_ARR(dst, r, f) TRY((r).arr(dst, f))

Status read_header(Reader& r, QuoteHeader& h) {
  R_U16(h.version, r, "header.version");
  R_U16(h.att_key_type, r, "header.att_key_type");
  R_U32(h.tee_type, r, "header.tee_type");
  R_U16(h.qe_svn, r, "header.qe_svn");
  R_U16(h.pce_svn, r, "header.pce_svn");
  R_ARR(h.qe_vendor_id, r, "header.qe_vendor_id");
  R_ARR(h.user_data, r, "header.user_data");
  return Status::Ok();
}

Status read_enclave_report(Reader& r, EnclaveReport& e, const std::string& p) {
  // Field names are built with the prefix so a truncated QE report says "qe_report.mr_signer".
  std::string n;
  auto f = [&](const char* name) -> const char* { n = p + name; return n.c_str(); };
  R_ARR(e.cpu_svn, r, f("cpu_svn"));
  R_U32(e.misc_select, r, f("misc_select"));
  R_ARR(e.reserved1, r, f("reserved1"));
  R_ARR(e.attributes, r, f("attributes"));
  R_ARR(e.mr_enclave, r, f("mr_enclave"));
  R_ARR(e.reserved2, r, f("reserved2"));
  R_ARR(e.mr_signer, r, f("mr_signer"));
  R_ARR(e.reserved3, r, f("reserved3"));
  R_U16(e.isv_prod_id, r, f("isv_prod_id"));
  R_U16(e.isv_svn, r, f("isv_svn"));
  R_ARR(e.reserved4, r, f("reserved4"));
  R_ARR(e.report_data, r, f("report_data"));
  return Status::Ok();
}

Status read_td_report(Reader& r, TdReport& t, bool td15) {
  R_ARR(t.tee_tcb_svn, r, "td_report.tee_tcb_svn");
  R_ARR(t.mr_seam, r, "td_report.mr_seam");
  R_ARR(t.mr_signer_seam, r, "td_report.mr_signer_seam");
  R_ARR(t.seam_attributes, r, "td_report.seam_attributes");
  R_ARR(t.td_attributes, r, "td_report.td_attributes");
  R_ARR(t.xfam, r, "td_report.xfam");
  R_ARR(t.mr_td, r, "td_report.mr_td");
  R_ARR(t.mr_config_id, r, "td_report.mr_config_id");
  R_ARR(t.mr_owner, r, "td_report.mr_owner");
  R_ARR(t.mr_owner_config, r, "td_report.mr_owner_config");
  R_ARR(t.rtmr0, r, "td_report.rtmr0");
  R_ARR(t.rtmr1, r, "td_report.rtmr1");
  R_ARR(t.rtmr2, r, "td_report.rtmr2");
  R_ARR(t.rtmr3, r, "td_report.rtmr3");
  R_ARR(t.report_data, r, "td_report.report_data");
  t.is_td15 = td15;
  if (td15) {
    R_ARR(t.tee_tcb_svn2, r, "td_report.tee_tcb_svn2");
    R_ARR(t.mr_service_td, r, "td_report.mr_service_td");
  }
  return Status::Ok();
}

// QE report certification data (type 6) body, or the v3 layout directly after the attestation key.
Status read_qe_section(Reader& r, QuoteSignatureData& s) {
  TRY(read_enclave_report(r, s.qe_report, "qe_report."));
  R_ARR(s.qe_report_signature, r, "qe_report_signature");
  uint16_t auth_len = 0;
  R_U16(auth_len, r, "qe_auth_data.size");
  TRY_ASSIGN(ByteView auth, r.take(auth_len, "qe_auth_data"));
  s.qe_auth_data.assign(auth.begin(), auth.end());
  R_U16(s.pck_cert_data_type, r, "pck_cert_data.type");
  uint32_t cert_len = 0;
  R_U32(cert_len, r, "pck_cert_data.size");
  TRY_ASSIGN(ByteView cert, r.take(cert_len, "pck_cert_data"));
  s.pck_cert_data.assign(cert.begin(), cert.end());
  return Status::Ok();
}

}  // namespace

ByteView Quote::report_data() const {
  if (is_tdx()) return ByteView(td_report.report_data.data(), td_report.report_data.size());
  return ByteView(sgx_report.report_data.data(), sgx_report.report_data.size());
}

std::string Quote::tee_type_name() const {
  if (is_tdx()) return "TDX";
  if (is_sgx()) return "SGX";
  return "unknown(" + std::to_string(header.tee_type) + ")";
}

Result<Quote> parse_quote(ByteView raw) {
  Reader r(raw, 0);
  Quote q;
  TRY(read_header(r, q.header));
  const auto& h = q.header;
  if (h.att_key_type != kAttKeyTypeEcdsaP256) {
    return make_error("quote: unsupported attestation key type " + std::to_string(h.att_key_type) +
                      " (only 2 = ECDSA-256-with-P-256 is supported)");
  }
  if (h.version == 3) {
    if (h.tee_type != kTeeTypeSgx) {
      return make_error("quote: version 3 quote with tee_type " + std::to_string(h.tee_type) + " (expected SGX = 0)");
    }
    q.body_type = BodyType::SgxEnclave;
    TRY(read_enclave_report(r, q.sgx_report, "enclave_report."));
  } else if (h.version == 4) {
    if (h.tee_type != kTeeTypeTdx) {
      return make_error("quote: version 4 quote with tee_type " + std::to_string(h.tee_type) +
                        " (only TDX = 0x81 is supported for v4)");
    }
    q.body_type = BodyType::TdReport10;
    TRY(read_td_report(r, q.td_report, false));
  } else if (h.version == 5) {
    if (h.tee_type != kTeeTypeTdx) {
      return make_error("quote: version 5 quote with tee_type " + std::to_string(h.tee_type) +
                        " (only TDX = 0x81 is supported for v5)");
    }
    uint16_t body_type = 0;
    uint32_t body_size = 0;
    R_U16(body_type, r, "body.type");
    R_U32(body_size, r, "body.size");
    if (body_type == 2 && body_size == kTdReport10Size) {
      q.body_type = BodyType::TdReport10;
      TRY(read_td_report(r, q.td_report, false));
    } else if (body_type == 3 && body_size == kTdReport15Size) {
      q.body_type = BodyType::TdReport15;
      TRY(read_td_report(r, q.td_report, true));
    } else {
      return make_error("quote: unsupported v5 body type " + std::to_string(body_type) + " with size " +
                        std::to_string(body_size) + " (expected 2/584 or 3/648)");
    }
  } else {
    return make_error("quote: unsupported quote version " + std::to_string(h.version) +
                      " (supported: 3 = SGX, 4 and 5 = TDX)");
  }
  q.signed_length = r.offset();

  R_U32(q.signature_data_len, r, "signature_data_len");
  TRY_ASSIGN(ByteView sig_bytes, r.take(q.signature_data_len, "signature_data"));
  q.trailing_bytes = r.remaining();

  // Parse the signature data inside its declared length, reporting absolute offsets.
  size_t base = q.signed_length + 4;
  Reader s(sig_bytes, base);
  auto& sd = q.signature;
  R_ARR(sd.ecdsa_signature, s, "ecdsa_signature");
  R_ARR(sd.ecdsa_attestation_key, s, "ecdsa_attestation_key");
  if (h.version == 3) {
    size_t qe_off = s.offset();
    TRY(read_qe_section(s, sd));
    sd.qe_report_raw.assign(sig_bytes.begin() + qe_off, sig_bytes.begin() + qe_off + kEnclaveReportSize);
    sd.certification_data_type = sd.pck_cert_data_type;
  } else {
    R_U16(sd.certification_data_type, s, "certification_data.type");
    uint32_t cd_len = 0;
    R_U32(cd_len, s, "certification_data.size");
    if (sd.certification_data_type != kCertTypeQeReportCertData) {
      return make_error("quote: unsupported certification data type " + std::to_string(sd.certification_data_type) +
                        " (expected 6 = QE report certification data)");
    }
    TRY_ASSIGN(ByteView cd, s.take(cd_len, "certification_data"));
    Reader c(cd, base + s.offset() - cd_len);
    TRY(read_qe_section(c, sd));
    sd.qe_report_raw.assign(cd.begin(), cd.begin() + kEnclaveReportSize);
  }
  return q;
}

}  // namespace dstack::attest
