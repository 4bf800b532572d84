// Simulated DCAP platform: quotes are byte-exact TDX v4 / SGX v3 and verify (as UpToDate) only when the verifier
// is told to trust the simulated root -- with our verifier (attest/verify.h) and independently with @phala/dcap-qvl.
#include <gtest/gtest.h>

#include <sys/stat.h>
#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>

#include "attest/collateral.h"
#include "attest/measurement.h"
#include "attest/quote.h"
#include "attest/sim/platform.h"
#include "attest/verify.h"
#include "base/fs.h"
#include "crypto/p256.h"
#include "crypto/x509.h"

using namespace dstack;
using namespace dstack::attest;
using namespace dstack::attest::sim;

namespace {

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "dstack-sim-test-XXXXXX").string();
    char* p = mkdtemp(tmpl.data());
    if (p) path_ = p;
  }
  ~TempDir() {
    std::error_code ec;
    if (!path_.empty()) std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

Bytes pattern(size_t n, uint8_t v) { return Bytes(n, v); }

TdQuoteInput sample_input() {
  TdQuoteInput in;
  in.report_data = to_bytes("hello sim");
  in.mr_td = pattern(48, 0xa1);
  in.mr_config_id = pattern(48, 0xc1);
  in.rtmr0 = pattern(48, 0xb0);
  in.rtmr1 = pattern(48, 0xb1);
  in.rtmr2 = pattern(48, 0xb2);
  in.rtmr3 = pattern(48, 0xb3);
  return in;
}

struct RunResult {
  int exit_code = -1;
  std::string output;
};

// Runs a command (stdout+stderr captured). Blocking is bounded: dcap-qvl is local and offline.
RunResult run(const std::string& cmd) {
  RunResult r;
  FILE* f = popen((cmd + " 2>&1").c_str(), "r");
  if (!f) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), f)) > 0) r.output.append(buf, n);
  int st = pclose(f);
  r.exit_code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}

std::string dcap_qvl_script() { return std::string(DSTACK_SOURCE_DIR) + "/node_modules/@phala/dcap-qvl/test_case.js"; }

RunResult dcap_qvl(const std::string& dir, ByteView quote, const std::string& collateral, int64_t now,
                   const std::optional<Bytes>& root_der) {
  EXPECT_TRUE(write_file_atomic(dir + "/q.bin", quote).ok());
  EXPECT_TRUE(write_file_atomic(dir + "/c.json", collateral).ok());
  std::string cmd = "timeout 120 /usr/bin/node '" + dcap_qvl_script() + "' verify --time " + std::to_string(now) +
                    " '" + dir + "/q.bin' '" + dir + "/c.json'";
  if (root_der) {
    EXPECT_TRUE(write_file_atomic(dir + "/root.der", ByteView(*root_der)).ok());
    cmd += " '" + dir + "/root.der'";
  }
  return run(cmd);
}

int64_t now_s() { return static_cast<int64_t>(std::time(nullptr)); }

}  // namespace

TEST(SimPlatform, CreateStoresKeysPrivatelyAndLoads) {
  TempDir t;
  ASSERT_FALSE(t.path().empty());
  std::string dir = t.path() + "/plat";
  auto p = SimPlatform::create(dir);
  ASSERT_TRUE(p.ok()) << p.error().message;
  for (const char* k : {"root-ca.key", "pck-ca.key", "pck.key", "tcb-signing.key", "qe-attestation.key"}) {
    struct stat st{};
    ASSERT_EQ(stat((dir + "/" + k).c_str(), &st), 0) << k;
    EXPECT_EQ(st.st_mode & 0777, 0600u) << k;
  }
  EXPECT_NE(p->root_ca_pem().find("BEGIN CERTIFICATE"), std::string::npos);
  auto pem_on_disk = read_file(dir + "/root-ca.pem");
  ASSERT_TRUE(pem_on_disk.ok());
  EXPECT_EQ(*pem_on_disk, p->root_ca_pem());
  auto root = crypto::Certificate::from_pem(p->root_ca_pem());
  ASSERT_TRUE(root.ok()) << root.error().message;
  EXPECT_NE(root->subject_cn().find("SIMULATED"), std::string::npos);
  EXPECT_NE(root->subject_cn().find("NOT INTEL"), std::string::npos);

  auto again = SimPlatform::create(dir);
  EXPECT_FALSE(again.ok());
  auto loaded = SimPlatform::load(dir);
  ASSERT_TRUE(loaded.ok()) << loaded.error().message;
  EXPECT_EQ(loaded->root_ca_der(), p->root_ca_der());
  EXPECT_EQ(loaded->ppid(), p->ppid());
  EXPECT_EQ(loaded->qe_id(), p->qe_id());
  EXPECT_FALSE(SimPlatform::load(t.path() + "/missing").ok());
}

TEST(SimPlatform, TdxQuoteLayout) {
  TempDir t;
  auto p = SimPlatform::create(t.path() + "/plat");
  ASSERT_TRUE(p.ok()) << p.error().message;
  auto in = sample_input();
  auto q = p->quote_tdx(in);
  ASSERT_TRUE(q.ok()) << q.error().message;
  const Bytes& b = *q;
  ASSERT_GT(b.size(), 1000u);
  EXPECT_EQ(to_hex(ByteView(b.data(), 8)), "0400020081000000");
  EXPECT_EQ(Bytes(b.begin() + 28, b.begin() + 44), p->qe_id());
  auto m = TdMeasurements::from_quote(b);
  ASSERT_TRUE(m.ok()) << m.error().message;
  EXPECT_EQ(m->mr_td, in.mr_td);
  EXPECT_EQ(m->mr_config_id, in.mr_config_id);
  EXPECT_EQ(m->rtmr0, in.rtmr0);
  EXPECT_EQ(m->rtmr3, in.rtmr3);
  EXPECT_EQ(m->tee_tcb_svn, p->tee_tcb_svn());
  Bytes rd = in.report_data;
  rd.resize(64, 0);
  EXPECT_EQ(m->report_data, rd);
  EXPECT_EQ(to_hex(m->td_attributes), "0000001000000000");
  // Signature length field covers the rest of the quote exactly.
  uint32_t sig_len = b[632] | (b[633] << 8) | (b[634] << 16) | (static_cast<uint32_t>(b[635]) << 24);
  EXPECT_EQ(636u + sig_len, b.size());
  // ECDSA signature over header+body by the attestation key embedded in the quote.
  ByteView sig(b.data() + 636, 64), key(b.data() + 700, 64);
  EXPECT_TRUE(crypto::ecdsa_p256_verify_raw(key, ByteView(b.data(), 632), sig));
  // Certification data type 6 (QE report certification data).
  EXPECT_EQ(b[764], 6);
  EXPECT_EQ(b[765], 0);

  TdQuoteInput bad = in;
  bad.mr_td = pattern(47, 0);
  EXPECT_FALSE(p->quote_tdx(bad).ok());
  bad = in;
  bad.report_data = pattern(65, 0);
  EXPECT_FALSE(p->quote_tdx(bad).ok());
}

TEST(SimPlatform, OurVerifierAcceptsOnlyWithOptIn) {
  TempDir t;
  auto p = SimPlatform::create(t.path() + "/plat");
  ASSERT_TRUE(p.ok()) << p.error().message;
  int64_t now = now_s();
  auto q = p->quote_tdx(sample_input());
  ASSERT_TRUE(q.ok());
  auto cj = p->tdx_collateral_json(now);
  ASSERT_TRUE(cj.ok()) << cj.error().message;
  auto coll = parse_collateral_json(*cj);
  ASSERT_TRUE(coll.ok()) << coll.error().message;

  auto parsed = parse_quote(*q);
  ASSERT_TRUE(parsed.ok()) << parsed.error().message;

  // Default trust (Intel root only): rejected.
  auto def = verify_quote(*q, *coll, now);
  EXPECT_FALSE(def.ok());

  TrustOptions trust;
  trust.trust_intel_root = false;
  trust.extra_root_pems = {p->root_ca_pem()};
  auto v = verify_quote(*q, *coll, now, trust);
  ASSERT_TRUE(v.ok()) << v.error().message;
  EXPECT_EQ(v->status, "UpToDate");
  EXPECT_EQ(v->ppid, p->ppid());
  EXPECT_EQ(v->fmspc, p->fmspc());

  // Validity window: now-1d .. now+30d.
  EXPECT_TRUE(verify_quote(*q, *coll, now + 29 * 86400, trust).ok());
  EXPECT_FALSE(verify_quote(*q, *coll, now + 31 * 86400, trust).ok());

  // Tampering with the signed region fails.
  Bytes tampered = *q;
  tampered[600] ^= 1;
  EXPECT_FALSE(verify_quote(tampered, *coll, now, trust).ok());

  // SGX quote + SGX collateral.
  SgxQuoteInput sin;
  sin.report_data = pattern(64, 0x42);
  sin.mr_enclave = pattern(32, 0xe1);
  auto sq = p->quote_sgx(sin);
  ASSERT_TRUE(sq.ok()) << sq.error().message;
  auto scj = p->sgx_collateral_json(now);
  ASSERT_TRUE(scj.ok());
  auto scoll = parse_collateral_json(*scj);
  ASSERT_TRUE(scoll.ok());
  auto sv = verify_quote(*sq, *scoll, now, trust);
  ASSERT_TRUE(sv.ok()) << sv.error().message;
  EXPECT_EQ(sv->status, "UpToDate");
  ASSERT_NE(sv->sgx_report(), nullptr);
}

TEST(SimPlatform, DcapQvlAcceptsTdxAndSgxQuotes) {
  ASSERT_TRUE(std::filesystem::exists(dcap_qvl_script())) << "missing " << dcap_qvl_script()
                                                          << " (run scripts/install-deps.sh)";
  TempDir t;
  auto p = SimPlatform::create(t.path() + "/plat");
  ASSERT_TRUE(p.ok()) << p.error().message;
  int64_t now = now_s();
  auto q = p->quote_tdx(sample_input());
  ASSERT_TRUE(q.ok());
  auto cj = p->tdx_collateral_json(now);
  ASSERT_TRUE(cj.ok());

  auto ok = dcap_qvl(t.path(), *q, *cj, now, p->root_ca_der());
  EXPECT_EQ(ok.exit_code, 0) << ok.output;
  EXPECT_NE(ok.output.find("Status: UpToDate"), std::string::npos) << ok.output;

  // Not trusted without the explicit root (dcap-qvl pins Intel's root by default).
  auto no_root = dcap_qvl(t.path(), *q, *cj, now, std::nullopt);
  EXPECT_EQ(no_root.exit_code, 1) << no_root.output;

  // A flipped report_data byte breaks the quote signature.
  Bytes tampered = *q;
  tampered[570] ^= 0x80;
  auto bad = dcap_qvl(t.path(), tampered, *cj, now, p->root_ca_der());
  EXPECT_EQ(bad.exit_code, 1) << bad.output;

  // Expired collateral.
  auto late = dcap_qvl(t.path(), *q, *cj, now + 31 * 86400, p->root_ca_der());
  EXPECT_EQ(late.exit_code, 1) << late.output;
  EXPECT_NE(late.output.find("expired"), std::string::npos) << late.output;

  SgxQuoteInput sin;
  sin.report_data = pattern(32, 0x42);
  auto sq = p->quote_sgx(sin);
  ASSERT_TRUE(sq.ok());
  auto scj = p->sgx_collateral_json(now);
  ASSERT_TRUE(scj.ok());
  auto sgx = dcap_qvl(t.path(), *sq, *scj, now, p->root_ca_der());
  EXPECT_EQ(sgx.exit_code, 0) << sgx.output;
  EXPECT_NE(sgx.output.find("Status: UpToDate"), std::string::npos) << sgx.output;
}

TEST(SimPlatform, CliInitQuoteCollateral) {
  std::string bin = std::string(DSTACK_BIN_DIR) + "/dstack-tdx-sim";
  ASSERT_TRUE(std::filesystem::exists(bin)) << bin;
  TempDir t;
  std::string d = t.path() + "/plat";
  auto init = run("'" + bin + "' init --dir '" + d + "'");
  ASSERT_EQ(init.exit_code, 0) << init.output;
  EXPECT_TRUE(file_exists(d + "/root-ca.pem"));
  std::string mrtd(96, 'a');
  auto quote = run("'" + bin + "' quote --dir '" + d + "' --report-data 0011 --mrtd " + mrtd + " --rtmr3 " +
                   std::string(96, 'b') + " --out '" + t.path() + "/q.bin'");
  ASSERT_EQ(quote.exit_code, 0) << quote.output;
  int64_t now = now_s();
  auto coll = run("'" + bin + "' collateral --dir '" + d + "' --time " + std::to_string(now) + " --out '" +
                  t.path() + "/c.json'");
  ASSERT_EQ(coll.exit_code, 0) << coll.output;
  auto qb = read_file_bytes(t.path() + "/q.bin");
  ASSERT_TRUE(qb.ok());
  auto m = TdMeasurements::from_quote(*qb);
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(to_hex(m->mr_td), mrtd);
  EXPECT_EQ(to_hex(m->rtmr3), std::string(96, 'b'));
  auto r = run("timeout 120 /usr/bin/node '" + dcap_qvl_script() + "' verify --time " + std::to_string(now) + " '" +
               t.path() + "/q.bin' '" + t.path() + "/c.json' '" + d + "/root-ca.der'");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("UpToDate"), std::string::npos) << r.output;
  auto badhex = run("'" + bin + "' quote --dir '" + d + "' --report-data zz --out '" + t.path() + "/x.bin'");
  EXPECT_NE(badhex.exit_code, 0);
}
