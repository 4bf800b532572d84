#include <gtest/gtest.h>

#include "attest/collateral.h"
#include "attest/quote.h"
#include "attest/verify.h"
#include "base/fs.h"

using namespace dstack;
using namespace dstack::attest;

namespace {

const std::string kDir = std::string(DSTACK_SHARED_DIR) + "/testdata/dcap/";
constexpr int64_t kTdxTime = 1750331763;
constexpr int64_t kSgxTime = 1750334171;

Bytes load(const std::string& name) {
  auto r = read_file_bytes(kDir + name);
  EXPECT_TRUE(r.ok()) << (r.ok() ? "" : r.error().message);
  return r.ok() ? *r : Bytes{};
}

Collateral load_collateral(const std::string& name) {
  auto text = read_file(kDir + name);
  EXPECT_TRUE(text.ok());
  auto c = parse_collateral_json(text.ok() ? *text : "");
  EXPECT_TRUE(c.ok()) << (c.ok() ? "" : c.error().message);
  return c.ok() ? *c : Collateral{};
}

// Time inside the outdated sample's collateral window: one hour after the TCB info issueDate.
int64_t outdated_time(const Collateral& c) {
  auto pos = c.tcb_info.find("\"issueDate\":\"");
  EXPECT_NE(pos, std::string::npos);
  auto t = parse_iso8601_utc(c.tcb_info.substr(pos + 13, 20));
  EXPECT_TRUE(t.ok());
  return *t + 3600;
}

std::string verify_error(ByteView quote, const Collateral& c, int64_t now) {
  auto r = verify_quote(quote, c, now);
  if (r.ok()) return "";
  return r.error().message;
}

}  // namespace

TEST(Verify, TdxSampleIsUpToDate) {
  Bytes quote = load("tdx_quote");
  auto r = verify_quote(quote, load_collateral("tdx_quote_collateral.json"), kTdxTime);
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->status, "UpToDate");
  EXPECT_EQ(r->tee_type, kTeeTypeTdx);
  EXPECT_EQ(r->ppid.size(), 16u);
  EXPECT_EQ(to_hex(r->fmspc), "b0c06f000000");
  ASSERT_NE(r->td_report(), nullptr);
  EXPECT_EQ(hex(r->td_report()->mr_td), to_hex(ByteView(quote).subspan(184, 48)));
}

TEST(Verify, SgxSampleNeedsConfigurationAndSwHardening) {
  auto r = verify_quote(load("sgx_quote"), load_collateral("sgx_quote_collateral.json"), kSgxTime);
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->status, "ConfigurationAndSWHardeningNeeded");
  EXPECT_FALSE(r->advisory_ids.empty());
  EXPECT_EQ(r->tee_type, kTeeTypeSgx);
  ASSERT_NE(r->sgx_report(), nullptr);
  EXPECT_EQ(to_hex(r->fmspc), "00a067110000");
}

// The "outdated" sample (TDX v5, TD 1.5 body) with its collateral: every signature, chain and CRL verifies, but
// the PCK certificate's SGX TCB components (3,3,2,2,4,1,0,3,...) are below every TCB level of this TCB info
// (all require component 8 >= 5). Intel's QVL reports TCB_NOT_SUPPORTED and @phala/dcap-qvl "No matching TCB
// level found"; we fail the same way.
TEST(Verify, OutdatedSampleMatchesNoTcbLevel) {
  Collateral c = load_collateral("tdx_quote_outdated_collateral.json");
  Bytes quote = load("tdx_quote_outdated");
  auto r = verify_quote(quote, c, outdated_time(c));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("TCB not supported"), std::string::npos) << r.error().message;
  // Tampering is still caught before TCB matching.
  Bytes t = quote;
  t[300] ^= 1;
  auto r2 = verify_quote(t, c, outdated_time(c));
  ASSERT_FALSE(r2.ok());
  EXPECT_NE(r2.error().message.find("quote signature is invalid"), std::string::npos) << r2.error().message;
}

TEST(Verify, TodayIsExpired) {
  int64_t now = static_cast<int64_t>(time(nullptr));
  for (auto [q, c] : {std::pair{"tdx_quote", "tdx_quote_collateral.json"},
                      std::pair{"sgx_quote", "sgx_quote_collateral.json"},
                      std::pair{"tdx_quote_outdated", "tdx_quote_outdated_collateral.json"}}) {
    std::string err = verify_error(load(q), load_collateral(c), now);
    EXPECT_NE(err.find("expired"), std::string::npos) << q << ": " << err;
  }
  // One second after nextUpdate of the TDX TCB info (2025-07-19T10:16:03Z).
  std::string err = verify_error(load("tdx_quote"), load_collateral("tdx_quote_collateral.json"), 1752920164);
  EXPECT_NE(err.find("expired"), std::string::npos) << err;
  // Before the collateral was issued.
  err = verify_error(load("tdx_quote"), load_collateral("tdx_quote_collateral.json"), 1750000000);
  EXPECT_NE(err.find("not yet valid"), std::string::npos) << err;
}

TEST(Verify, FlippingAnySignedQuoteByteFails) {
  Bytes quote = load("tdx_quote");
  Collateral c = load_collateral("tdx_quote_collateral.json");
  QuoteVerifier v;  // cached collateral: same verdicts, faster loop
  ASSERT_TRUE(v.verify(quote, c, kTdxTime).ok());
  auto q = parse_quote(quote);
  ASSERT_TRUE(q.ok());
  for (size_t i = 0; i < q->signed_length; ++i) {
    Bytes t = quote;
    t[i] ^= 0x01;
    auto r = v.verify(t, c, kTdxTime);
    ASSERT_FALSE(r.ok()) << "byte " << i << " flipped still verifies";
    ASSERT_FALSE(r.error().message.empty());
  }
  // A body byte (mr_td) gives the quote-signature reason.
  Bytes t = quote;
  t[200] ^= 0x80;
  auto r = v.verify(t, c, kTdxTime);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("quote signature is invalid"), std::string::npos) << r.error().message;
}

TEST(Verify, TamperedSignatureDataFails) {
  Bytes quote = load("tdx_quote");
  Collateral c = load_collateral("tdx_quote_collateral.json");
  const size_t sig = 48 + 584 + 4;  // start of signature data
  struct Case {
    size_t off;
    const char* expect;
  } cases[] = {
      {sig + 10, "quote signature is invalid"},                  // ECDSA signature
      {sig + 64 + 5, "QE report data does not match"},           // attestation key
      {sig + 128 + 6 + 100, "QE report signature is invalid"},   // QE report body
      {sig + 128 + 6 + 384 + 3, "QE report signature is invalid"},  // QE report signature
      {sig + 128 + 6 + 384 + 64 + 2 + 1, "QE report data does not match"},  // QE auth data
  };
  for (const auto& cs : cases) {
    Bytes t = quote;
    t[cs.off] ^= 0x04;
    std::string err = verify_error(t, c, kTdxTime);
    EXPECT_NE(err.find(cs.expect), std::string::npos) << "offset " << cs.off << ": " << err;
  }
}

TEST(Verify, TamperedCollateralFails) {
  Bytes quote = load("tdx_quote");
  const Collateral good = load_collateral("tdx_quote_collateral.json");
  for (size_t i = 0; i < 64; i += 7) {
    Collateral c = good;
    c.tcb_info_signature[i] ^= 0x01;
    EXPECT_NE(verify_error(quote, c, kTdxTime).find("TCB info signature is invalid"), std::string::npos);
    c = good;
    c.qe_identity_signature[i] ^= 0x01;
    EXPECT_NE(verify_error(quote, c, kTdxTime).find("QE identity signature is invalid"), std::string::npos);
  }
  Collateral c = good;
  auto pos = c.tcb_info.find("UpToDate");
  ASSERT_NE(pos, std::string::npos);
  c.tcb_info[pos] = 'D';  // "DpToDate": still JSON, signature must fail
  EXPECT_NE(verify_error(quote, c, kTdxTime).find("TCB info signature is invalid"), std::string::npos);
  c = good;
  c.pck_crl[c.pck_crl.size() - 5] ^= 0x01;  // CRL signature
  EXPECT_FALSE(verify_quote(quote, c, kTdxTime).ok());
  c = good;
  c.root_ca_crl[c.root_ca_crl.size() - 5] ^= 0x01;
  EXPECT_FALSE(verify_quote(quote, c, kTdxTime).ok());
  // Wrong collateral for the quote type.
  EXPECT_NE(verify_error(quote, load_collateral("sgx_quote_collateral.json"), kTdxTime).find("collateral"),
            std::string::npos);
}

TEST(Verify, UntrustedRootIsRejectedUnlessOptedIn) {
  Bytes quote = load("tdx_quote");
  Collateral c = load_collateral("tdx_quote_collateral.json");
  TrustOptions none;
  none.trust_intel_root = false;
  auto r = verify_quote(quote, c, kTdxTime, none);
  ASSERT_FALSE(r.ok());
  // Opting in to Intel's root as an "extra" root behaves like the default.
  TrustOptions extra;
  extra.trust_intel_root = false;
  extra.extra_root_pems.push_back(intel_sgx_root_ca_pem());
  r = verify_quote(quote, c, kTdxTime, extra);
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->status, "UpToDate");
}

TEST(Verify, CacheGivesSameVerdictsAndRespectsTime) {
  Bytes quote = load("tdx_quote");
  Collateral c = load_collateral("tdx_quote_collateral.json");
  QuoteVerifier v;
  for (int i = 0; i < 3; ++i) {
    auto r = v.verify(quote, c, kTdxTime + i);
    ASSERT_TRUE(r.ok()) << r.error().message;
    EXPECT_EQ(r->status, "UpToDate");
  }
  // Cached collateral must not hide expiry.
  auto r = v.verify(quote, c, 1752920164);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("expired"), std::string::npos);
  // Nor a tampered collateral with a different digest.
  Collateral bad = c;
  bad.qe_identity_signature[0] ^= 1;
  EXPECT_FALSE(v.verify(quote, bad, kTdxTime).ok());
  EXPECT_TRUE(v.verify(quote, c, kTdxTime).ok());
}

TEST(Verify, TruncatedQuotesFailCleanly) {
  Bytes quote = load("sgx_quote");
  Collateral c = load_collateral("sgx_quote_collateral.json");
  QuoteVerifier v;
  for (size_t len = 0; len < quote.size(); len += 13) {
    Bytes cut(quote.begin(), quote.begin() + static_cast<long>(len));
    EXPECT_FALSE(v.verify(cut, c, kSgxTime).ok()) << len;
  }
}

TEST(Verify, Iso8601) {
  auto t = parse_iso8601_utc("2025-07-19T10:16:03Z");
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(*t, 1752920163);
  EXPECT_FALSE(parse_iso8601_utc("2025-07-19").ok());
  EXPECT_FALSE(parse_iso8601_utc("2025-13-19T10:16:03Z").ok());
}
