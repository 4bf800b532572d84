#include <gtest/gtest.h>

#include "attest/collateral.h"
#include "attest/quote.h"
#include "base/fs.h"

using namespace dstack;
using namespace dstack::attest;

namespace {

const std::string kDir = std::string(DSTACK_SHARED_DIR) + "/testdata/dcap/";

Bytes load(const std::string& name) {
  auto r = read_file_bytes(kDir + name);
  EXPECT_TRUE(r.ok()) << (r.ok() ? "" : r.error().message);
  return r.ok() ? *r : Bytes{};
}

Bytes load_hex(const std::string& name) {
  auto text = read_file(kDir + name);
  EXPECT_TRUE(text.ok());
  std::string s = *text;
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) s.pop_back();
  auto b = from_hex(s);
  EXPECT_TRUE(b.ok()) << (b.ok() ? "" : b.error().message);
  return b.ok() ? *b : Bytes{};
}

}  // namespace

TEST(Quote, ParsesTdxV4) {
  Bytes raw = load("tdx_quote");
  auto q = parse_quote(raw);
  ASSERT_TRUE(q.ok()) << q.error().message;
  EXPECT_EQ(q->header.version, 4);
  EXPECT_EQ(q->header.att_key_type, 2);
  EXPECT_EQ(q->header.tee_type, kTeeTypeTdx);
  EXPECT_TRUE(q->is_tdx());
  EXPECT_EQ(q->body_type, BodyType::TdReport10);
  EXPECT_EQ(hex(q->header.qe_vendor_id), "939a7233f79c4ca9940a0db3957f0607");  // Intel QE vendor id
  EXPECT_EQ(q->signed_length, 48u + 584u);
  EXPECT_EQ(q->signature_data_len, 4300u);
  EXPECT_EQ(q->trailing_bytes, raw.size() - (48 + 584 + 4 + 4300));
  // Spec §8.1 offsets: mr_td at 184, rtmr0 at 376, report_data at 568.
  EXPECT_EQ(hex(q->td_report.mr_td), to_hex(ByteView(raw).subspan(184, 48)));
  EXPECT_EQ(hex(q->td_report.rtmr0), to_hex(ByteView(raw).subspan(376, 48)));
  EXPECT_EQ(hex(q->td_report.rtmr3), to_hex(ByteView(raw).subspan(520, 48)));
  EXPECT_EQ(to_hex(q->report_data()), to_hex(ByteView(raw).subspan(568, 64)));
  EXPECT_EQ(q->signature.certification_data_type, kCertTypeQeReportCertData);
  EXPECT_EQ(q->signature.pck_cert_data_type, kCertTypePckCertChain);
  EXPECT_EQ(q->signature.qe_report_raw.size(), kEnclaveReportSize);
  std::string pem = to_string(q->signature.pck_cert_data);
  EXPECT_NE(pem.find("-----BEGIN CERTIFICATE-----"), std::string::npos);
  EXPECT_EQ(q->signature.qe_auth_data.size(), 32u);
}

TEST(Quote, ParsesTdxV5Td15) {
  Bytes raw = load("tdx_quote_outdated");
  auto q = parse_quote(raw);
  ASSERT_TRUE(q.ok()) << q.error().message;
  EXPECT_EQ(q->header.version, 5);
  EXPECT_EQ(q->body_type, BodyType::TdReport15);
  EXPECT_TRUE(q->td_report.is_td15);
  EXPECT_EQ(q->signed_length, 48u + 6u + 648u);
  // Body starts after the 6-byte body descriptor: mr_td at 48+6+136.
  EXPECT_EQ(hex(q->td_report.mr_td), to_hex(ByteView(raw).subspan(54 + 136, 48)));
  EXPECT_EQ(hex(q->td_report.mr_service_td), to_hex(ByteView(raw).subspan(54 + 600, 48)));
  EXPECT_EQ(q->trailing_bytes, 0u);
}

TEST(Quote, ParsesSgxV3) {
  Bytes raw = load("sgx_quote");
  auto q = parse_quote(raw);
  ASSERT_TRUE(q.ok()) << q.error().message;
  EXPECT_EQ(q->header.version, 3);
  EXPECT_TRUE(q->is_sgx());
  EXPECT_EQ(q->tee_type_name(), "SGX");
  EXPECT_EQ(q->signed_length, 48u + 384u);
  // Enclave report: mr_enclave at body offset 64, mr_signer at 128, isv_prod_id at 256.
  EXPECT_EQ(hex(q->sgx_report.mr_enclave), to_hex(ByteView(raw).subspan(48 + 64, 32)));
  EXPECT_EQ(hex(q->sgx_report.mr_signer), to_hex(ByteView(raw).subspan(48 + 128, 32)));
  EXPECT_EQ(q->sgx_report.isv_prod_id, raw[48 + 256] | (raw[48 + 257] << 8));
  EXPECT_EQ(q->signature.pck_cert_data_type, kCertTypePckCertChain);
  EXPECT_EQ(q->trailing_bytes, 0u);
}

TEST(Quote, ParsesHexQuotes) {
  for (const char* f : {"tdx-quote.hex", "quote-from-tappd.hex"}) {
    Bytes raw = load_hex(f);
    auto q = parse_quote(raw);
    ASSERT_TRUE(q.ok()) << f << ": " << q.error().message;
    EXPECT_TRUE(q->is_tdx()) << f;
  }
}

TEST(Quote, EveryTruncationIsAnError) {
  for (const char* f : {"tdx_quote", "sgx_quote", "tdx_quote_outdated"}) {
    Bytes raw = load(f);
    auto full = parse_quote(raw);
    ASSERT_TRUE(full.ok());
    size_t needed = full->signed_length + 4 + full->signature_data_len;
    for (size_t len = 0; len < needed; ++len) {
      // Exact-size copy so ASan catches any read past the end.
      Bytes cut(raw.begin(), raw.begin() + static_cast<long>(len));
      auto q = parse_quote(cut);
      ASSERT_FALSE(q.ok()) << f << " truncated to " << len << " parsed";
      ASSERT_NE(q.error().message.find("truncated at offset"), std::string::npos) << q.error().message;
    }
  }
}

TEST(Quote, TruncationMessageNamesOffsetAndField) {
  Bytes raw = load("tdx_quote");
  Bytes cut(raw.begin(), raw.begin() + 200);
  auto q = parse_quote(cut);
  ASSERT_FALSE(q.ok());
  EXPECT_EQ(q.error().message.rfind("quote truncated at offset 184 reading td_report.mr_td", 0), 0u)
      << q.error().message;
}

TEST(Quote, InnerLengthsAreBoundsChecked) {
  Bytes raw = load("tdx_quote");
  // Inflate the QE auth data size (inside certification data) beyond its container.
  size_t auth_size_off = 48 + 584 + 4 + 64 + 64 + 2 + 4 + 384 + 64;
  raw[auth_size_off] = 0xff;
  raw[auth_size_off + 1] = 0xff;
  auto q = parse_quote(raw);
  ASSERT_FALSE(q.ok());
  EXPECT_NE(q.error().message.find("qe_auth_data"), std::string::npos) << q.error().message;
}

TEST(Quote, RejectsUnknownVersionAndKeyType) {
  Bytes raw = load("tdx_quote");
  Bytes v = raw;
  v[0] = 9;
  auto q = parse_quote(v);
  ASSERT_FALSE(q.ok());
  EXPECT_NE(q.error().message.find("unsupported quote version 9"), std::string::npos);
  Bytes k = raw;
  k[2] = 3;
  q = parse_quote(k);
  ASSERT_FALSE(q.ok());
  EXPECT_NE(q.error().message.find("attestation key type 3"), std::string::npos);
}

TEST(Collateral, ParsesRealFilesAndRoundTrips) {
  for (const char* f : {"tdx_quote_collateral.json", "sgx_quote_collateral.json", "tdx_quote_outdated_collateral.json"}) {
    auto text = read_file(kDir + f);
    ASSERT_TRUE(text.ok());
    auto c = parse_collateral_json(*text);
    ASSERT_TRUE(c.ok()) << f << ": " << c.error().message;
    EXPECT_EQ(c->tcb_info_signature.size(), 64u);
    EXPECT_EQ(c->qe_identity_signature.size(), 64u);
    EXPECT_EQ(c->tcb_info.rfind("{\"id\":", 0), 0u);
    auto again = parse_collateral_json(collateral_to_json(*c));
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(collateral_digest(*again), collateral_digest(*c));
    EXPECT_EQ(again->tcb_info, c->tcb_info);
  }
}

TEST(Collateral, ErrorsNameTheField) {
  auto c = parse_collateral_json("{\"pck_crl_issuer_chain\":\"x\"}");
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.error().message.find("root_ca_crl"), std::string::npos);
  c = parse_collateral_json("not json");
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.error().message.find("not valid JSON"), std::string::npos);
}
