// Intel DCAP quote parsing: TDX quote v4 (TD report 1.0 / 1.5), TDX quote v5 (body descriptor) and SGX quote
// v3. Field names follow Intel's "SGX/TDX DCAP Quoting Library API" (appendix: quote format). Parsing is
// bounds-checked: malformed input yields an Error naming the offset and the field, never an out-of-bounds read.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>

#include "base/bytes.h"
#include "base/result.h"

namespace dstack::attest {

inline constexpr uint32_t kTeeTypeSgx = 0x00000000;
inline constexpr uint32_t kTeeTypeTdx = 0x00000081;
inline constexpr uint16_t kAttKeyTypeEcdsaP256 = 2;

inline constexpr size_t kQuoteHeaderSize = 48;
inline constexpr size_t kEnclaveReportSize = 384;
inline constexpr size_t kTdReport10Size = 584;
inline constexpr size_t kTdReport15Size = 648;

// Certification data types (QE certification data / PCK certification data).
inline constexpr uint16_t kCertTypePckCertChain = 5;     // concatenated PEM: PCK leaf, PCK CA, root
inline constexpr uint16_t kCertTypeQeReportCertData = 6; // QE report + sig + auth data + inner cert data

template <size_t N>
using ByteArray = std::array<uint8_t, N>;

enum class BodyType : uint16_t { SgxEnclave = 1, TdReport10 = 2, TdReport15 = 3 };

// 48-byte quote header. For SGX v3 the u32 at offset 4 is reserved (0 == SGX) and is reported as tee_type.
struct QuoteHeader {
  uint16_t version = 0;
  uint16_t att_key_type = 0;
  uint32_t tee_type = 0;
  uint16_t qe_svn = 0;   // v4: "reserved"; v3: QE SVN
  uint16_t pce_svn = 0;  // v4: "reserved"; v3: PCE SVN
  ByteArray<16> qe_vendor_id{};
  ByteArray<20> user_data{};  // first 16 bytes: QE ID (platform-unique for the QE)
};

// SGX enclave report body (384 bytes): the ISV enclave in SGX quotes and the QE report in every quote.
struct EnclaveReport {
  ByteArray<16> cpu_svn{};
  uint32_t misc_select = 0;
  ByteArray<28> reserved1{};
  ByteArray<16> attributes{};
  ByteArray<32> mr_enclave{};
  ByteArray<32> reserved2{};
  ByteArray<32> mr_signer{};
  ByteArray<96> reserved3{};
  uint16_t isv_prod_id = 0;
  uint16_t isv_svn = 0;
  ByteArray<60> reserved4{};
  ByteArray<64> report_data{};
};

// TD report body: TD 1.0 (584 bytes); TD 1.5 adds tee_tcb_svn2 and mr_service_td (648 bytes).
struct TdReport {
  ByteArray<16> tee_tcb_svn{};
  ByteArray<48> mr_seam{};
  ByteArray<48> mr_signer_seam{};
  ByteArray<8> seam_attributes{};
  ByteArray<8> td_attributes{};
  ByteArray<8> xfam{};
  ByteArray<48> mr_td{};
  ByteArray<48> mr_config_id{};
  ByteArray<48> mr_owner{};
  ByteArray<48> mr_owner_config{};
  ByteArray<48> rtmr0{};
  ByteArray<48> rtmr1{};
  ByteArray<48> rtmr2{};
  ByteArray<48> rtmr3{};
  ByteArray<64> report_data{};
  // TD 1.5 only (zero for TD 1.0):
  bool is_td15 = false;
  ByteArray<16> tee_tcb_svn2{};
  ByteArray<48> mr_service_td{};
};

// ECDSA-P256 quote signature data (v3 layout, and v4/v5 with certification data type 6).
struct QuoteSignatureData {
  ByteArray<64> ecdsa_signature{};      // raw r||s over header||body (the "signed region")
  ByteArray<64> ecdsa_attestation_key{}; // raw X||Y of the attestation key
  uint16_t certification_data_type = 0;  // outer type: 6 for v4/v5; for v3 the PCK data type directly
  EnclaveReport qe_report;
  Bytes qe_report_raw;                   // 384 bytes as signed by the PCK key
  ByteArray<64> qe_report_signature{};
  Bytes qe_auth_data;
  uint16_t pck_cert_data_type = 0;       // 5 = PEM PCK cert chain
  Bytes pck_cert_data;                   // the certification data body (PEM text for type 5)
};

struct Quote {
  QuoteHeader header;
  BodyType body_type = BodyType::SgxEnclave;
  EnclaveReport sgx_report;  // valid when body_type == SgxEnclave
  TdReport td_report;        // valid when body_type is TdReport10/TdReport15
  uint32_t signature_data_len = 0;
  QuoteSignatureData signature;
  size_t signed_length = 0;  // bytes [0, signed_length) are covered by ecdsa_signature
  size_t trailing_bytes = 0;  // ignored bytes after the signature data

  bool is_tdx() const { return header.tee_type == kTeeTypeTdx; }
  bool is_sgx() const { return header.tee_type == kTeeTypeSgx; }
  // 64-byte report data of the attested TD / enclave.
  ByteView report_data() const;
  std::string tee_type_name() const;  // "TDX" / "SGX"
};

// Parses a raw quote: SGX v3 (tee_type 0), TDX v4 (TD report 1.0 body) and TDX v5 (body type 2 = TD 1.0,
// 3 = TD 1.5). Bytes after the declared signature data (padding some quote providers add) are ignored and
// counted in Quote::trailing_bytes.
Result<Quote> parse_quote(ByteView raw);

// Hex helpers for printing fixed-size fields.
template <size_t N>
std::string hex(const ByteArray<N>& a) {
  return to_hex(ByteView(a.data(), a.size()));
}

}  // namespace dstack::attest
