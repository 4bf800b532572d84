// dstack-verify kms against a stub KMS: an HTTPS pRPC server (src/rpc) serving GetMeta whose bootstrap_info
// carries a quote from a simulated TDX platform (src/attest/sim). Each test breaks one thing and checks that
// exactly the right check fails.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <thread>

#include <sys/wait.h>

#include "attest/attestation.h"
#include "attest/sim/platform.h"
#include "crypto/k256.h"
#include "crypto/p256.h"
#include "crypto/x509.h"
#include "rpc/http.h"
#include "rpc/prpc.h"
#include "verify/kms_check.h"

namespace fs = std::filesystem;
using namespace dstack;
using nlohmann::json;

namespace {

std::string make_tmpdir() {
  std::string t = (fs::temp_directory_path() / "kms-verify-test.XXXXXX").string();
  char* d = mkdtemp(t.data());
  EXPECT_NE(d, nullptr);
  return t;
}

crypto::Certificate make_ca(const crypto::P256Key& key) {
  crypto::CertSpec s;
  s.org_name = "Dstack";
  s.common_name = "Dstack KMS CA";
  s.is_ca = true;
  s.ca_path_len = 1;
  auto c = crypto::issue_certificate(s, key, key, nullptr);
  EXPECT_TRUE(c.ok()) << (c.ok() ? "" : c.error().message);
  return *c;
}

crypto::Certificate make_leaf(const crypto::P256Key& key, const crypto::P256Key& ca_key, const crypto::Certificate& ca) {
  crypto::CertSpec s;
  s.common_name = "kms.test.local";
  s.alt_names = {"kms.test.local"};
  s.usage_server_auth = true;
  auto c = crypto::issue_certificate(s, key, ca_key, &ca);
  EXPECT_TRUE(c.ok()) << (c.ok() ? "" : c.error().message);
  return *c;
}

// A KMS look-alike. Fields are public so tests can tamper with them before start().
struct StubKms {
  std::string dir = make_tmpdir();
  attest::sim::SimPlatform platform = *attest::sim::SimPlatform::create(dir + "/platform");
  crypto::P256Key ca_key = *crypto::P256Key::generate();
  crypto::Certificate ca_cert = make_ca(ca_key);
  crypto::P256Key rpc_key = *crypto::P256Key::generate();
  crypto::Certificate rpc_cert = make_leaf(rpc_key, ca_key, ca_cert);
  crypto::K256Key k256 = crypto::K256Key::generate();
  json meta;
  int delay_ms = 0;
  std::unique_ptr<rpc::HttpServer> server;
  rpc::PrpcService svc{"KMS."};

  StubKms() { meta = make_meta(platform, verify::kms_bootstrap_report_data(ca_key.spki_der(), k256.public_compressed())); }
  ~StubKms() {
    if (server) server->stop();
    std::error_code ec;
    fs::remove_all(dir, ec);
  }

  json make_meta(const attest::sim::SimPlatform& plat, const Bytes& report_data) {
    attest::sim::TdQuoteInput in;
    in.report_data = report_data;
    in.mr_td = Bytes(48, 0x11);
    in.rtmr3 = Bytes(48, 0x33);
    auto quote = plat.quote_tdx(in);
    EXPECT_TRUE(quote.ok()) << (quote.ok() ? "" : quote.error().message);
    attest::VersionedAttestation va;
    va.quote = *quote;
    va.report_data = report_data;
    va.config = "{}";
    auto att = va.to_bytes();
    EXPECT_TRUE(att.ok()) << (att.ok() ? "" : att.error().message);
    return json{{"ca_cert", ca_cert.to_pem()},
                {"allow_any_upgrade", true},
                {"k256_pubkey", to_hex(k256.public_compressed())},
                {"bootstrap_info",
                 {{"ca_pubkey", to_hex(ca_key.spki_der())},
                  {"k256_pubkey", to_hex(k256.public_compressed())},
                  {"attestation", to_hex(*att)}}},
                {"is_dev", true},
                {"gateway_app_id", "any"},
                {"kms_contract_address", nullptr},
                {"chain_id", nullptr},
                {"app_auth_implementation", nullptr}};
  }

  std::string start(const crypto::Certificate* tls_cert = nullptr, const crypto::P256Key* tls_key = nullptr) {
    svc.add("GetMeta", [this](const json&, const rpc::HttpRequest&) -> Result<json> {
      if (delay_ms) std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
      return meta;
    });
    server = std::make_unique<rpc::HttpServer>();
    svc.mount(*server, "/prpc");
    rpc::TlsServerConfig tls;
    tls.cert_chain_pem = (tls_cert ? *tls_cert : rpc_cert).to_pem();
    tls.key_pem = (tls_key ? *tls_key : rpc_key).to_pkcs8_pem();
    auto st = server->listen("127.0.0.1:0", tls);
    EXPECT_TRUE(st.ok()) << (st.ok() ? "" : st.error().message);
    server->start();
    return "https://127.0.0.1:" + std::to_string(server->bound_port(0));
  }

  verify::KmsCheckOptions opts(const std::string& url) const {
    verify::KmsCheckOptions o;
    o.url = url;
    o.sim_platform_dir = platform.dir();
    o.allow_sim_root = true;
    o.timeout = std::chrono::milliseconds(5000);
    return o;
  }
};

std::string failed(const verify::KmsReport& r) {
  std::string s;
  for (const auto& c : r.checks)
    if (!c.ok) s += (s.empty() ? "" : ",") + c.name;
  return s;
}

}  // namespace

TEST(KmsVerify, ReportDataMatchesIndependentKeccak) {
  // Expected value computed with js-sha3's keccak256 (node_modules/js-sha3), not with our crypto code.
  Bytes ca = *from_hex("3059301306072a8648ce3d020106082a8648ce3d03010703420004" + std::string(128, '1'));
  Bytes k = *from_hex("02" + std::string(64, '2'));
  Bytes rd = verify::kms_bootstrap_report_data(ca, k);
  ASSERT_EQ(rd.size(), 64u);
  EXPECT_EQ(to_hex(ByteView(rd).subspan(0, 32)), "5232cb3657dcccbd44ff8a87a88cc47ef2d1c80e541a8983557620e907deace7");
  EXPECT_EQ(Bytes(rd.begin() + 32, rd.end()), Bytes(32, 0));
}

TEST(KmsVerify, GenuineSimulatedKmsPasses) {
  StubKms kms;
  auto url = kms.start();
  auto r = verify::check_kms(kms.opts(url + "/"));
  EXPECT_TRUE(r.ok) << verify::report_to_text(r);
  EXPECT_EQ(failed(r), "");
  for (const char* name : {"get_meta", "response_time", "ca_cert", "k256_pubkey", "tls_cert", "bootstrap_info",
                           "ca_pubkey_match", "k256_match", "attestation", "report_data_binding", "quote_verified"})
    EXPECT_NE(r.find(name), nullptr) << name;
  EXPECT_EQ(r.tcb_status, "UpToDate");
  EXPECT_EQ(r.mr_td, std::string(96, '1'));
  EXPECT_EQ(r.rtmr3, std::string(96, '3'));
  EXPECT_GE(r.response_ms, 0);
  EXPECT_NE(verify::report_to_text(r).find("verdict: PASS"), std::string::npos);
  auto j = verify::report_to_json(r);
  EXPECT_EQ(j["verdict"], "PASS");
  EXPECT_EQ(j["get_meta"]["k256_pubkey"], to_hex(kms.k256.public_compressed()));
}

TEST(KmsVerify, SimulatedRootNeedsExplicitOptIn) {
  StubKms kms;
  auto url = kms.start();
  auto o = kms.opts(url);
  o.allow_sim_root = false;
  auto r = verify::check_kms(o);
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(failed(r), "quote_verified");
  EXPECT_NE(r.find("quote_verified")->detail.find("--allow-sim-root"), std::string::npos);
}

TEST(KmsVerify, NoTrustSourceFailsQuoteCheck) {
  StubKms kms;
  auto url = kms.start();
  auto o = kms.opts(url);
  o.sim_platform_dir.clear();
  auto r = verify::check_kms(o);
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(failed(r), "quote_verified");
  EXPECT_NE(r.find("quote_verified")->detail.find("--collateral"), std::string::npos);
}

TEST(KmsVerify, IntelRootRejectsSimulatedQuote) {
  StubKms kms;
  auto url = kms.start();
  auto o = kms.opts(url);
  o.sim_platform_dir.clear();
  auto cj = kms.platform.tdx_collateral_json(std::time(nullptr));
  ASSERT_TRUE(cj.ok());
  o.collateral = *attest::parse_collateral_json(*cj);  // collateral is fine, but the root is not Intel's
  auto r = verify::check_kms(o);
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(failed(r), "quote_verified");
}

TEST(KmsVerify, ServedK256DiffersFromAttestedOne) {
  StubKms kms;
  kms.meta["k256_pubkey"] = to_hex(crypto::K256Key::generate().public_compressed());
  auto url = kms.start();
  auto r = verify::check_kms(kms.opts(url));
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(failed(r), "k256_match,report_data_binding");
}

TEST(KmsVerify, QuoteBindsOtherKeys) {
  StubKms kms;
  auto other = crypto::K256Key::generate();
  kms.meta = kms.make_meta(kms.platform, verify::kms_bootstrap_report_data(kms.ca_key.spki_der(), other.public_compressed()));
  auto url = kms.start();
  auto r = verify::check_kms(kms.opts(url));
  EXPECT_FALSE(r.ok);
  // The quote itself is genuine; it just does not attest these keys.
  EXPECT_EQ(failed(r), "report_data_binding");
  EXPECT_TRUE(r.find("quote_verified")->ok);
}

TEST(KmsVerify, CaPubkeyMismatch) {
  StubKms kms;
  kms.meta["bootstrap_info"]["ca_pubkey"] = to_hex(crypto::P256Key::generate()->spki_der());
  auto url = kms.start();
  auto r = verify::check_kms(kms.opts(url));
  EXPECT_EQ(failed(r), "ca_pubkey_match");
}

TEST(KmsVerify, QuoteFromAnotherPlatformIsRejected) {
  StubKms kms;
  auto other = attest::sim::SimPlatform::create(kms.dir + "/other-platform");
  ASSERT_TRUE(other.ok());
  kms.meta = kms.make_meta(*other, verify::kms_bootstrap_report_data(kms.ca_key.spki_der(), kms.k256.public_compressed()));
  auto url = kms.start();
  auto r = verify::check_kms(kms.opts(url));  // trusts only kms.platform's root
  EXPECT_EQ(failed(r), "quote_verified");
}

TEST(KmsVerify, NullBootstrapInfoFails) {
  StubKms kms;
  kms.meta["bootstrap_info"] = nullptr;
  auto url = kms.start();
  auto r = verify::check_kms(kms.opts(url));
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(failed(r), "bootstrap_info");
}

TEST(KmsVerify, EmptyAttestationIsQuoteNull) {
  StubKms kms;
  kms.meta["bootstrap_info"]["attestation"] = "";
  auto url = kms.start();
  auto r = verify::check_kms(kms.opts(url));
  EXPECT_EQ(failed(r), "attestation");
  EXPECT_NE(r.find("attestation")->detail.find("quote_enabled"), std::string::npos);
}

TEST(KmsVerify, MissingCaCertAndKeys) {
  StubKms kms;
  kms.meta.erase("ca_cert");
  kms.meta["k256_pubkey"] = "";
  auto url = kms.start();
  auto r = verify::check_kms(kms.opts(url));
  EXPECT_FALSE(r.ok);
  EXPECT_FALSE(r.find("ca_cert")->ok);
  EXPECT_FALSE(r.find("k256_pubkey")->ok);
  EXPECT_FALSE(r.find("tls_cert")->ok);
}

TEST(KmsVerify, TlsCertFromAnotherCaFails) {
  StubKms kms;
  auto other_ca_key = *crypto::P256Key::generate();
  auto other_ca = make_ca(other_ca_key);
  auto key = *crypto::P256Key::generate();
  auto leaf = make_leaf(key, other_ca_key, other_ca);
  auto url = kms.start(&leaf, &key);
  auto r = verify::check_kms(kms.opts(url));
  EXPECT_EQ(failed(r), "tls_cert");
}

TEST(KmsVerify, SlowGetMetaFailsResponseTime) {
  StubKms kms;
  kms.delay_ms = 400;
  auto url = kms.start();
  auto o = kms.opts(url);
  o.max_response_ms = 200;
  auto r = verify::check_kms(o);
  EXPECT_EQ(failed(r), "response_time");
  EXPECT_GE(r.response_ms, 400);
}

TEST(KmsVerify, HangingGetMetaTimesOut) {
  StubKms kms;
  kms.delay_ms = 3000;
  auto url = kms.start();
  auto o = kms.opts(url);
  o.timeout = std::chrono::milliseconds(500);
  auto t0 = std::chrono::steady_clock::now();
  auto r = verify::check_kms(o);
  auto el = std::chrono::steady_clock::now() - t0;
  EXPECT_LT(el, std::chrono::milliseconds(2500));
  EXPECT_EQ(failed(r), "get_meta");
}

TEST(KmsVerify, ConnectionRefused) {
  uint16_t port;
  {
    rpc::HttpServer s;
    ASSERT_TRUE(s.listen("127.0.0.1:0").ok());
    port = s.bound_port(0);
  }  // closed again: nothing listens on `port` now
  verify::KmsCheckOptions o;
  o.url = "https://127.0.0.1:" + std::to_string(port);
  auto r = verify::check_kms(o);
  EXPECT_FALSE(r.ok);
  ASSERT_EQ(r.checks.size(), 1u);
  EXPECT_EQ(r.checks[0].name, "get_meta");
  EXPECT_NE(r.checks[0].detail.find("refused"), std::string::npos) << r.checks[0].detail;
}

TEST(KmsVerify, PlainHttpUrlRejected) {
  verify::KmsCheckOptions o;
  o.url = "http://127.0.0.1:9100";
  auto r = verify::check_kms(o);
  EXPECT_FALSE(r.ok);
  EXPECT_NE(r.checks.at(0).detail.find("https://"), std::string::npos);
}

TEST(KmsVerify, OfflineMetaBackup) {
  StubKms kms;
  verify::KmsCheckOptions o = kms.opts("");
  verify::KmsReport r;
  verify::check_meta(kms.meta, {}, o, r);
  EXPECT_TRUE(r.ok) << verify::report_to_text(r);
  EXPECT_EQ(r.find("tls_cert"), nullptr);  // no live connection, nothing to check
}

// ---- the CLI ----

struct Run {
  int code = -1;
  std::string out;
};

Run run(const std::string& args) {
  std::string cmd = std::string(DSTACK_BIN_DIR) + "/dstack-verify " + args + " 2>&1";
  Run r;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return r;
  std::array<char, 4096> buf{};
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  int st = pclose(p);
  r.code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}

TEST(KmsVerifyCli, ExitCodesAndOutput) {
  StubKms kms;
  auto url = kms.start();
  auto ok = run("kms --url " + url + " --sim-platform " + kms.platform.dir() + " --allow-sim-root");
  EXPECT_EQ(ok.code, 0) << ok.out;
  EXPECT_NE(ok.out.find("verdict: PASS"), std::string::npos) << ok.out;
  EXPECT_NE(ok.out.find("[PASS] report_data_binding"), std::string::npos) << ok.out;

  auto no_opt_in = run("kms --url " + url + " --sim-platform " + kms.platform.dir());
  EXPECT_EQ(no_opt_in.code, 1) << no_opt_in.out;
  EXPECT_NE(no_opt_in.out.find("[FAIL] quote_verified"), std::string::npos) << no_opt_in.out;
  EXPECT_NE(no_opt_in.out.find("verdict: FAIL"), std::string::npos);

  auto js = run("kms --json --url " + url + " --sim-platform " + kms.platform.dir() + " --allow-sim-root");
  EXPECT_EQ(js.code, 0) << js.out;
  auto j = json::parse(js.out, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << js.out;
  EXPECT_EQ(j["verdict"], "PASS");
  EXPECT_EQ(j["tcb_status"], "UpToDate");

  auto slow = run("kms --url " + url + " --max-ms 0 --sim-platform " + kms.platform.dir() + " --allow-sim-root");
  EXPECT_EQ(slow.code, 1);
  EXPECT_NE(slow.out.find("[FAIL] response_time"), std::string::npos) << slow.out;

  auto bad = run("kms --url " + url + " --root-ca /nonexistent.pem");
  EXPECT_EQ(bad.code, 2) << bad.out;
}

TEST(KmsVerifyCli, MetaFile) {
  StubKms kms;
  std::string f = kms.dir + "/getmeta.json";
  FILE* fp = fopen(f.c_str(), "w");
  ASSERT_NE(fp, nullptr);
  std::string s = kms.meta.dump();
  fwrite(s.data(), 1, s.size(), fp);
  fclose(fp);
  auto r = run("kms --meta-file " + f + " --sim-platform " + kms.platform.dir() + " --allow-sim-root");
  EXPECT_EQ(r.code, 0) << r.out;
  kms.meta["k256_pubkey"] = to_hex(crypto::K256Key::generate().public_compressed());
  fp = fopen(f.c_str(), "w");
  s = kms.meta.dump();
  fwrite(s.data(), 1, s.size(), fp);
  fclose(fp);
  r = run("kms --meta-file " + f + " --sim-platform " + kms.platform.dir() + " --allow-sim-root");
  EXPECT_EQ(r.code, 1) << r.out;
}
