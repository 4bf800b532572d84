// Local key provider (spec §12): key derivation, sealing key file, provider logic, TCP server behaviour and
// the full guest flow (X25519 keypair -> TDX quote from the simulated platform -> provider -> verify the SGX
// provider quote -> open the sealed key), plus the dstack-key-provider binary.
#include <gtest/gtest.h>

#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <ctime>
#include <filesystem>
#include <future>
#include <thread>

#include "attest/quote.h"
#include "attest/sim/platform.h"
#include "base/fs.h"
#include "crypto/ecdh.h"
#include "crypto/hash.h"
#include "keyprovider/client.h"
#include "keyprovider/protocol.h"
#include "keyprovider/provider.h"

using namespace dstack;
using namespace dstack::keyprovider;
using dstack::attest::sim::SimPlatform;
using dstack::attest::sim::TdQuoteInput;
using namespace std::chrono_literals;

namespace {

struct TempDir {
  std::string path;
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "dstack-kp-test-XXXXXX").string();
    char* p = ::mkdtemp(tmpl.data());
    EXPECT_NE(p, nullptr);
    path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
};

Bytes filled(size_t n, uint8_t v) { return Bytes(n, v); }

struct Guest {
  crypto::X25519KeyPair kp = crypto::x25519_generate();
  Bytes report_data() const {
    Bytes rd = kp.public_key;
    rd.resize(64, 0);
    return rd;
  }
};

TdQuoteInput td_input(const Guest& g, uint8_t rtmr3_byte = 0x33) {
  TdQuoteInput in;
  in.report_data = g.report_data();
  in.mr_td = filled(48, 0x11);
  in.rtmr0 = filled(48, 0xa0);
  in.rtmr1 = filled(48, 0xa1);
  in.rtmr2 = filled(48, 0xa2);
  in.rtmr3 = filled(48, rtmr3_byte);
  return in;
}

OpenOptions guest_options(const SimPlatform& p) {
  OpenOptions o;
  auto json = p.sgx_collateral_json(std::time(nullptr));
  EXPECT_TRUE(json.ok()) << json.error().message;
  auto col = attest::parse_collateral_json(*json);
  EXPECT_TRUE(col.ok()) << col.error().message;
  o.collateral = *col;
  o.trust.trust_intel_root = false;
  o.trust.extra_root_pems = {p.root_ca_pem()};
  return o;
}

// A provider on a fresh simulated platform, serving on an ephemeral loopback port.
struct Fixture {
  TempDir tmp;
  SimPlatform platform;
  ProviderConfig cfg;
  std::shared_ptr<KeyProvider> provider;
  std::unique_ptr<Server> server;

  static SimPlatform make_platform(const std::string& dir) {
    auto p = SimPlatform::create(dir);
    EXPECT_TRUE(p.ok()) << p.error().message;
    return std::move(*p);
  }
  explicit Fixture(int io_timeout_ms = 30000, int max_conn = 32)
      : platform(make_platform(tmp.path + "/platform")) {
    cfg.listen = "127.0.0.1:0";
    cfg.sealing_key_file = tmp.path + "/keys/sealing.key";
    cfg.sim_platform_dir = tmp.path + "/platform";
    cfg.trust_sim_root = true;
    cfg.trust_intel_root = false;
    cfg.io_timeout_ms = io_timeout_ms;
    cfg.max_connections = max_conn;
    auto kp = KeyProvider::create(cfg);
    EXPECT_TRUE(kp.ok()) << kp.error().message;
    provider = *kp;
    auto s = Server::start(provider, cfg.listen, max_conn, io_timeout_ms);
    EXPECT_TRUE(s.ok()) << s.error().message;
    server = std::move(*s);
  }
  uint16_t port() const { return server->port(); }
  Bytes quote(const TdQuoteInput& in) const {
    auto q = platform.quote_tdx(in);
    EXPECT_TRUE(q.ok()) << q.error().message;
    return *q;
  }
};

// Sends raw bytes on a fresh connection and reads back one frame (or the error reading it).
Result<std::string> raw_exchange(uint16_t port, ByteView bytes, std::chrono::milliseconds timeout = 5000ms) {
  auto deadline = detail::Clock::now() + timeout;
  TRY_ASSIGN(int fd, detail::connect_tcp("127.0.0.1", port, deadline));
  auto r = [&]() -> Result<std::string> {
    TRY(detail::write_all(fd, bytes, deadline));
    return detail::read_frame(fd, deadline);
  }();
  // After the answer the server closes the connection: the next read sees EOF.
  if (r.ok()) {
    uint8_t b;
    Status eof = detail::read_exact(fd, &b, 1, deadline);
    if (eof.ok() || eof.error().message.find("closed by peer") == std::string::npos)
      r = make_error("connection was not closed after the answer");
  }
  ::close(fd);
  return r;
}

Bytes frame_of(std::string_view s) {
  auto f = encode_frame(s);
  EXPECT_TRUE(f.ok());
  return *f;
}

}  // namespace

// ---- key derivation -------------------------------------------------------------------------------------

TEST(KeyProviderDerive, FormulaAndSensitivityToEveryMeasurement) {
  Bytes sk = filled(32, 0x5a);
  attest::TdReport td;
  for (size_t i = 0; i < 48; ++i) {
    td.mr_td[i] = uint8_t(i);
    td.rtmr0[i] = uint8_t(i + 1);
    td.rtmr1[i] = uint8_t(i + 2);
    td.rtmr2[i] = uint8_t(i + 3);
    td.rtmr3[i] = uint8_t(i + 4);
  }
  Bytes k = derive_sealing_key(sk, td);
  ASSERT_EQ(k.size(), 32u);
  // SHA256(sealing_key || mr_td || rtmr0 || rtmr1 || rtmr2 || rtmr3), written out independently.
  Bytes pre = sk;
  for (auto* f : {&td.mr_td, &td.rtmr0, &td.rtmr1, &td.rtmr2, &td.rtmr3}) pre.insert(pre.end(), f->begin(), f->end());
  ASSERT_EQ(pre.size(), 32u + 5 * 48);
  EXPECT_EQ(k, crypto::sha256(pre));
  EXPECT_EQ(derive_sealing_key(sk, td), k);  // deterministic

  // Fields outside the derivation do not change the key.
  attest::TdReport other = td;
  other.report_data[0] ^= 1;
  other.mr_config_id[0] ^= 1;
  EXPECT_EQ(derive_sealing_key(sk, other), k);

  for (auto member : {&attest::TdReport::mr_td, &attest::TdReport::rtmr0, &attest::TdReport::rtmr1,
                      &attest::TdReport::rtmr2, &attest::TdReport::rtmr3}) {
    attest::TdReport t = td;
    (t.*member)[47] ^= 0x80;
    EXPECT_NE(derive_sealing_key(sk, t), k);
  }
  Bytes sk2 = sk;
  sk2[0] ^= 1;
  EXPECT_NE(derive_sealing_key(sk2, td), k);
}

TEST(KeyProviderSealingKey, CreatedPrivateThenReloaded) {
  TempDir t;
  std::string path = t.path + "/sub/dir/sealing.key";
  auto a = load_or_create_sealing_key(path);
  ASSERT_TRUE(a.ok()) << a.error().message;
  ASSERT_EQ(a->size(), 32u);
  struct stat st;
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  auto b = load_or_create_sealing_key(path);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(*a, *b);
  auto other = load_or_create_sealing_key(t.path + "/other.key");
  ASSERT_TRUE(other.ok());
  EXPECT_NE(*a, *other);
}

TEST(KeyProviderSealingKey, RefusesBadFiles) {
  TempDir t;
  std::string shortf = t.path + "/short.key";
  ASSERT_TRUE(write_file_atomic(shortf, std::string_view("0123456789"), 0600).ok());
  auto s = load_or_create_sealing_key(shortf);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.error().message.find("expected 32"), std::string::npos);
  EXPECT_EQ(read_file(shortf).value_or(""), "0123456789");  // never overwritten
  std::string open = t.path + "/open.key";
  ASSERT_TRUE(write_file_atomic(open, std::string_view(std::string(32, 'k')), 0644).ok());
  auto o = load_or_create_sealing_key(open);
  ASSERT_FALSE(o.ok());
  EXPECT_NE(o.error().message.find("chmod 600"), std::string::npos);
}

TEST(KeyProviderConfig, ParsesTomlAndListen) {
  TempDir t;
  std::string f = t.path + "/kp.toml";
  ASSERT_TRUE(write_file_atomic(f, std::string_view(R"(listen = "127.0.0.1:4000"
sealing_key_file = "/x/sealing.key"
sim_platform_dir = "/x/platform"
max_connections = 8
io_timeout_secs = 5
[trust]
trust_sim_root = true
trust_intel_root = false
root_ca = ["/a.pem", "/b.pem"]
collateral = "/c.json"
)")).ok());
  auto c = load_config(f);
  ASSERT_TRUE(c.ok()) << c.error().message;
  EXPECT_EQ(c->listen, "127.0.0.1:4000");
  EXPECT_EQ(c->sealing_key_file, "/x/sealing.key");
  EXPECT_EQ(c->sim_platform_dir, "/x/platform");
  EXPECT_EQ(c->max_connections, 8);
  EXPECT_EQ(c->io_timeout_ms, 5000);
  EXPECT_TRUE(c->trust_sim_root);
  EXPECT_FALSE(c->trust_intel_root);
  EXPECT_EQ(c->root_ca_files, (std::vector<std::string>{"/a.pem", "/b.pem"}));
  EXPECT_EQ(c->collateral_file, "/c.json");
  // The shipped example parses too.
  auto ex = load_config(std::string(DSTACK_SOURCE_DIR) + "/config/key-provider.toml");
  ASSERT_TRUE(ex.ok()) << ex.error().message;
  EXPECT_EQ(ex->listen, "127.0.0.1:3443");

  auto l = parse_listen("[::1]:3443");
  ASSERT_TRUE(l.ok());
  EXPECT_EQ(l->first, "::1");
  EXPECT_EQ(l->second, 3443);
  EXPECT_FALSE(parse_listen("127.0.0.1").ok());
  EXPECT_FALSE(parse_listen("127.0.0.1:70000").ok());
  EXPECT_FALSE(parse_listen("127.0.0.1:ab").ok());
}

// ---- end to end over TCP ----------------------------------------------------------------------------------

TEST(KeyProviderE2E, GuestObtainsAndOpensItsSealingKey) {
  Fixture f;
  Guest g;
  Bytes quote = f.quote(td_input(g));
  auto resp = request_sealing_key("127.0.0.1", f.port(), quote, 10s);
  ASSERT_TRUE(resp.ok()) << resp.error().message;
  EXPECT_EQ(resp->encrypted_key.size(), 48u + 32u);  // sealed box overhead + key

  // The provider quote is an SGX quote binding the encrypted key, from the same platform.
  auto pq = attest::parse_quote(resp->provider_quote);
  ASSERT_TRUE(pq.ok()) << pq.error().message;
  EXPECT_TRUE(pq->is_sgx());
  EXPECT_EQ(Bytes(pq->sgx_report.mr_enclave.begin(), pq->sgx_report.mr_enclave.end()), provider_mr_enclave());
  EXPECT_EQ(provider_mr_enclave(), crypto::sha256(as_view("dstack-cpp/dstack-key-provider/simulated-sgx-enclave/v1")));
  EXPECT_EQ(Bytes(pq->header.user_data.begin(), pq->header.user_data.begin() + 16), f.platform.qe_id());

  OpenOptions opts = guest_options(f.platform);
  opts.expected_mr_enclave = provider_mr_enclave();
  auto opened = open_sealing_key(*resp, g.kp.secret, opts);
  ASSERT_TRUE(opened.ok()) << opened.error().message;
  EXPECT_EQ(opened->key.size(), 32u);
  EXPECT_EQ(opened->mr_enclave, provider_mr_enclave());
  EXPECT_FALSE(opened->tcb_status.empty());

  // The key is SHA256(sealing_key || measurements): recompute from the host file.
  auto sk = read_file_bytes(f.cfg.sealing_key_file);
  ASSERT_TRUE(sk.ok());
  auto parsed = attest::parse_quote(quote);
  ASSERT_TRUE(parsed.ok());
  EXPECT_EQ(opened->key, derive_sealing_key(*sk, parsed->td_report));

  // Same measurements, new guest keypair -> same key; a different RTMR3 -> a different key.
  Guest g2;
  auto resp2 = request_sealing_key("127.0.0.1", f.port(), f.quote(td_input(g2)), 10s);
  ASSERT_TRUE(resp2.ok()) << resp2.error().message;
  EXPECT_NE(resp2->encrypted_key, resp->encrypted_key);
  auto opened2 = open_sealing_key(*resp2, g2.kp.secret, opts);
  ASSERT_TRUE(opened2.ok()) << opened2.error().message;
  EXPECT_EQ(opened2->key, opened->key);
  auto resp3 = request_sealing_key("127.0.0.1", f.port(), f.quote(td_input(g, 0x34)), 10s);
  ASSERT_TRUE(resp3.ok()) << resp3.error().message;
  auto opened3 = open_sealing_key(*resp3, g.kp.secret, opts);
  ASSERT_TRUE(opened3.ok()) << opened3.error().message;
  EXPECT_NE(opened3->key, opened->key);

  // Another guest cannot open a key sealed to g.
  auto stolen = open_sealing_key(*resp, g2.kp.secret, opts);
  ASSERT_FALSE(stolen.ok());
}

TEST(KeyProviderE2E, KeySurvivesProviderRestartWithSameSealingKeyFile) {
  Fixture f;
  Guest g;
  Bytes quote = f.quote(td_input(g));
  auto r1 = request_sealing_key("127.0.0.1", f.port(), quote, 10s);
  ASSERT_TRUE(r1.ok()) << r1.error().message;
  f.server->stop();
  EXPECT_FALSE(request_sealing_key("127.0.0.1", f.port(), quote, 2s).ok());  // nothing listening any more

  auto kp = KeyProvider::create(f.cfg);  // same sealing key file
  ASSERT_TRUE(kp.ok()) << kp.error().message;
  auto s = Server::start(*kp, "127.0.0.1:0");
  ASSERT_TRUE(s.ok()) << s.error().message;
  auto r2 = request_sealing_key("127.0.0.1", (*s)->port(), quote, 10s);
  ASSERT_TRUE(r2.ok()) << r2.error().message;
  OpenOptions opts = guest_options(f.platform);
  auto k1 = open_sealing_key(*r1, g.kp.secret, opts);
  auto k2 = open_sealing_key(*r2, g.kp.secret, opts);
  ASSERT_TRUE(k1.ok() && k2.ok());
  EXPECT_EQ(k1->key, k2->key);

  // A different sealing key file gives a different key for the same quote.
  ProviderConfig c2 = f.cfg;
  c2.sealing_key_file = f.tmp.path + "/keys/other.key";
  auto kp3 = KeyProvider::create(c2);
  ASSERT_TRUE(kp3.ok()) << kp3.error().message;
  auto r3 = (*kp3)->handle(quote);
  ASSERT_TRUE(r3.ok()) << r3.error().message;
  auto k3 = open_sealing_key(*r3, g.kp.secret, opts);
  ASSERT_TRUE(k3.ok()) << k3.error().message;
  EXPECT_NE(k3->key, k1->key);
}

TEST(KeyProviderE2E, TamperedQuoteIsRefused) {
  Fixture f;
  Guest g;
  Bytes quote = f.quote(td_input(g));
  // mr_td, rtmr3, report_data, the quote signature (after u32 signature_data_len at 632), the QE report.
  for (size_t off : {size_t(184), size_t(520), size_t(568), size_t(640), size_t(636 + 128 + 2 + 4 + 100)}) {
    Bytes t = quote;
    t[off] ^= 0x01;
    auto r = request_sealing_key("127.0.0.1", f.port(), t, 10s);
    ASSERT_FALSE(r.ok()) << "offset " << off;
    EXPECT_NE(r.error().message.find("refused"), std::string::npos) << r.error().message;
  }
  Bytes truncated(quote.begin(), quote.begin() + 600);
  auto tr = request_sealing_key("127.0.0.1", f.port(), truncated, 10s);
  ASSERT_FALSE(tr.ok());
  // An SGX quote is not accepted in place of a TDX quote.
  attest::sim::SgxQuoteInput sin;
  sin.report_data = g.report_data();
  auto sq = f.platform.quote_sgx(sin);
  ASSERT_TRUE(sq.ok());
  auto sr = request_sealing_key("127.0.0.1", f.port(), *sq, 10s);
  ASSERT_FALSE(sr.ok());
  // ... and the server is still serving.
  EXPECT_TRUE(request_sealing_key("127.0.0.1", f.port(), quote, 10s).ok());
}

TEST(KeyProviderE2E, QuoteFromUntrustedPlatformIsRefused) {
  Fixture f;
  TempDir other_dir;
  auto other = SimPlatform::create(other_dir.path + "/platform");
  ASSERT_TRUE(other.ok()) << other.error().message;
  Guest g;
  auto q = other->quote_tdx(td_input(g));
  ASSERT_TRUE(q.ok());
  auto r = request_sealing_key("127.0.0.1", f.port(), *q, 10s);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("TDX quote rejected"), std::string::npos) << r.error().message;

  // Even when the other platform's root and collateral are trusted, its QE is not ours: another platform.
  std::string root = other_dir.path + "/root.pem";
  ASSERT_TRUE(write_file_atomic(root, std::string_view(other->root_ca_pem())).ok());
  auto col = other->tdx_collateral_json(std::time(nullptr));
  ASSERT_TRUE(col.ok());
  std::string colf = other_dir.path + "/tdx_collateral.json";
  ASSERT_TRUE(write_file_atomic(colf, std::string_view(*col)).ok());
  ProviderConfig c = f.cfg;
  c.trust_sim_root = false;
  c.root_ca_files = {root};
  c.collateral_file = colf;
  auto kp = KeyProvider::create(c);
  ASSERT_TRUE(kp.ok()) << kp.error().message;
  auto h = (*kp)->handle(*q);
  ASSERT_FALSE(h.ok());
  EXPECT_NE(h.error().message.find("another platform"), std::string::npos) << h.error().message;
}

TEST(KeyProviderE2E, ProviderRefusesWithoutExplicitTrust) {
  TempDir t;
  auto p = SimPlatform::create(t.path + "/platform");
  ASSERT_TRUE(p.ok());
  ProviderConfig c;
  c.sealing_key_file = t.path + "/sealing.key";
  c.sim_platform_dir = t.path + "/platform";
  c.trust_intel_root = false;  // and no sim root opt-in
  auto kp = KeyProvider::create(c);
  ASSERT_FALSE(kp.ok());
  EXPECT_NE(kp.error().message.find("no trusted root"), std::string::npos);
  // Default trust (Intel root only): simulated quotes do not verify.
  c.trust_intel_root = true;
  auto kp2 = KeyProvider::create(c);
  ASSERT_TRUE(kp2.ok()) << kp2.error().message;
  Guest g;
  TdQuoteInput in = td_input(g);
  auto q = p->quote_tdx(in);
  ASSERT_TRUE(q.ok());
  EXPECT_FALSE((*kp2)->handle(*q).ok());
}

TEST(KeyProviderE2E, GuestRejectsForgedOrUnboundProviderAnswers) {
  Fixture f;
  Guest g;
  auto resp = request_sealing_key("127.0.0.1", f.port(), f.quote(td_input(g)), 10s);
  ASSERT_TRUE(resp.ok()) << resp.error().message;
  OpenOptions opts = guest_options(f.platform);
  ASSERT_TRUE(open_sealing_key(*resp, g.kp.secret, opts).ok());

  // Encrypted key swapped for one sealed by someone else: report_data no longer binds it.
  SealingKeyResponse swapped = *resp;
  auto forged = crypto::sealed_box_seal(g.kp.public_key, filled(32, 0x42));
  ASSERT_TRUE(forged.ok());
  swapped.encrypted_key = *forged;
  auto e1 = open_sealing_key(swapped, g.kp.secret, opts);
  ASSERT_FALSE(e1.ok());
  EXPECT_NE(e1.error().message.find("does not bind"), std::string::npos) << e1.error().message;

  // Provider quote tampered.
  SealingKeyResponse tq = *resp;
  tq.provider_quote[48 + 64] ^= 1;  // inside MRENCLAVE
  EXPECT_FALSE(open_sealing_key(tq, g.kp.secret, opts).ok());

  // A provider quote signed by an untrusted platform (with matching report_data) is refused.
  TempDir od;
  auto other = SimPlatform::create(od.path + "/p");
  ASSERT_TRUE(other.ok());
  attest::sim::SgxQuoteInput sin;
  sin.mr_enclave = provider_mr_enclave();
  sin.report_data = crypto::sha256(resp->encrypted_key);
  sin.report_data.resize(64, 0);
  auto oq = other->quote_sgx(sin);
  ASSERT_TRUE(oq.ok());
  SealingKeyResponse foreign{resp->encrypted_key, *oq};
  EXPECT_FALSE(open_sealing_key(foreign, g.kp.secret, opts).ok());
  // ...but verifies when the guest trusts that platform: the check above is about trust, not format.
  EXPECT_TRUE(open_sealing_key(foreign, g.kp.secret, guest_options(*other)).ok());

  // MRENCLAVE pin mismatch.
  OpenOptions pinned = opts;
  pinned.expected_mr_enclave = filled(32, 0);
  auto e3 = open_sealing_key(*resp, g.kp.secret, pinned);
  ASSERT_FALSE(e3.ok());
  EXPECT_NE(e3.error().message.find("pinned"), std::string::npos);

  // A TDX quote is not a provider quote.
  SealingKeyResponse tdx = *resp;
  tdx.provider_quote = f.quote(td_input(g));
  OpenOptions tdx_opts = opts;
  auto tcol = f.platform.tdx_collateral_json(std::time(nullptr));
  ASSERT_TRUE(tcol.ok());
  tdx_opts.collateral = *attest::parse_collateral_json(*tcol);
  auto e4 = open_sealing_key(tdx, g.kp.secret, tdx_opts);
  ASSERT_FALSE(e4.ok());
  EXPECT_NE(e4.error().message.find("expected SGX"), std::string::npos) << e4.error().message;
}

// ---- server robustness ------------------------------------------------------------------------------------

TEST(KeyProviderServer, MalformedInputGetsErrorFrameAndServerKeepsServing) {
  Fixture f;
  auto expect_error_frame = [&](ByteView bytes, const std::string& needle) {
    auto r = raw_exchange(f.port(), bytes);
    ASSERT_TRUE(r.ok()) << r.error().message;
    auto d = decode_response(*r);
    ASSERT_FALSE(d.ok()) << *r;
    EXPECT_NE(d.error().message.find(needle), std::string::npos) << d.error().message;
  };
  uint8_t zero[4] = {0, 0, 0, 0};
  expect_error_frame(ByteView(zero, 4), "zero length");
  uint8_t too_long[4] = {0x00, 0x80, 0x00, 0x01};
  expect_error_frame(ByteView(too_long, 4), "exceeds");
  expect_error_frame(frame_of("{\"quote\":[1,2"), "invalid JSON");
  expect_error_frame(frame_of("{\"quote\":[1,256]}"), "expected an integer 0..255");
  expect_error_frame(frame_of("{\"quote\":[1,\"x\"]}"), "expected an integer 0..255");
  expect_error_frame(frame_of("{\"nope\":[1]}"), "missing field");
  expect_error_frame(frame_of("{\"quote\":[1,2,3]}"), "TDX quote rejected");

  Guest g;
  auto ok = request_sealing_key("127.0.0.1", f.port(), f.quote(td_input(g)), 10s);
  EXPECT_TRUE(ok.ok()) << ok.error().message;
}

TEST(KeyProviderServer, SilentOrTruncatedClientTimesOutWithoutBlockingOthers) {
  Fixture f(/*io_timeout_ms=*/1000);
  auto deadline = detail::Clock::now() + 5s;
  auto silent = detail::connect_tcp("127.0.0.1", f.port(), deadline);
  ASSERT_TRUE(silent.ok());
  auto partial = detail::connect_tcp("127.0.0.1", f.port(), deadline);
  ASSERT_TRUE(partial.ok());
  uint8_t hdr[6] = {0, 0, 0, 100, '{', '"'};  // promises 100 bytes, sends 2
  ASSERT_TRUE(detail::write_all(*partial, ByteView(hdr, 6), deadline).ok());

  // Meanwhile a real client is served.
  Guest g;
  auto t0 = detail::Clock::now();
  auto ok = request_sealing_key("127.0.0.1", f.port(), f.quote(td_input(g)), 10s);
  EXPECT_TRUE(ok.ok()) << ok.error().message;

  // The stalled connections are answered with a timeout error and closed after ~1 s.
  for (int fd : {*silent, *partial}) {
    auto r = detail::read_frame(fd, detail::Clock::now() + 5s);
    ASSERT_TRUE(r.ok()) << r.error().message;
    EXPECT_NE(r->find("timed out"), std::string::npos) << *r;
    uint8_t b;
    EXPECT_FALSE(detail::read_exact(fd, &b, 1, detail::Clock::now() + 2s).ok());
    ::close(fd);
  }
  EXPECT_LT(detail::Clock::now() - t0, 4s);
}

TEST(KeyProviderServer, ConnectionLimitQueuesClientsInsteadOfFailing) {
  Fixture f(/*io_timeout_ms=*/3000, /*max_conn=*/2);
  // Two idle connections hold both slots; a third client waits until one times out, then is served.
  auto deadline = detail::Clock::now() + 5s;
  auto a = detail::connect_tcp("127.0.0.1", f.port(), deadline);
  auto b = detail::connect_tcp("127.0.0.1", f.port(), deadline);
  ASSERT_TRUE(a.ok() && b.ok());
  std::this_thread::sleep_for(200ms);  // let the server accept both
  Guest g;
  Bytes q = f.quote(td_input(g));
  auto t0 = detail::Clock::now();
  auto r = request_sealing_key("127.0.0.1", f.port(), q, 10s);
  auto waited = detail::Clock::now() - t0;
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_GT(waited, 2s);  // it had to wait for a slot
  ::close(*a);
  ::close(*b);

  // Many concurrent clients with a free server all succeed.
  Fixture g32;
  std::vector<std::future<bool>> fs;
  Bytes q32 = g32.quote(td_input(g));
  for (int i = 0; i < 40; ++i)
    fs.push_back(std::async(std::launch::async, [&] {
      return request_sealing_key("127.0.0.1", g32.port(), q32, 30s).ok();
    }));
  int good = 0;
  for (auto& x : fs) good += x.get() ? 1 : 0;
  EXPECT_EQ(good, 40);
}

TEST(KeyProviderClient, TimeoutAndConnectErrors) {
  // Listening socket that never answers: the client gives up at its deadline.
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(::listen(fd, 4), 0);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  uint16_t port = ntohs(a.sin_port);
  auto t0 = detail::Clock::now();
  auto r = request_sealing_key("127.0.0.1", port, Bytes{1, 2, 3}, 500ms);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("timed out"), std::string::npos) << r.error().message;
  EXPECT_LT(detail::Clock::now() - t0, 3s);
  ::close(fd);
  // Nothing listening any more.
  auto c = request_sealing_key("127.0.0.1", port, Bytes{1, 2, 3}, 1s);
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.error().message.find("cannot connect"), std::string::npos) << c.error().message;
  EXPECT_FALSE(request_sealing_key("127.0.0.1", port, Bytes{}, 1s).ok());
}

// ---- the binary -------------------------------------------------------------------------------------------

namespace {
uint16_t free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}
struct Child {
  pid_t pid = -1;
  ~Child() {
    if (pid > 0) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
    }
  }
};
}  // namespace

TEST(KeyProviderBinary, ServesWithFlagsAndStopsOnSigterm) {
  TempDir t;
  auto p = SimPlatform::create(t.path + "/platform");
  ASSERT_TRUE(p.ok()) << p.error().message;
  std::string bin = std::string(DSTACK_BIN_DIR) + "/dstack-key-provider";
  ASSERT_TRUE(file_exists(bin)) << bin << " not built";
  uint16_t port = free_port();
  std::string listen = "127.0.0.1:" + std::to_string(port);
  std::string key = t.path + "/state/sealing.key";
  std::string plat = t.path + "/platform";
  std::string log = t.path + "/kp.log";
  Child c;
  c.pid = ::fork();
  ASSERT_GE(c.pid, 0);
  if (c.pid == 0) {
    FILE* out = std::freopen(log.c_str(), "w", stdout);
    (void)out;
    ::dup2(STDOUT_FILENO, STDERR_FILENO);
    ::execl(bin.c_str(), bin.c_str(), "-c", (std::string(DSTACK_SOURCE_DIR) + "/config/key-provider.toml").c_str(),
            "--listen", listen.c_str(), "--sealing-key-file", key.c_str(), "--sim-platform-dir", plat.c_str(),
            "--trust-sim-root", static_cast<char*>(nullptr));
    ::_exit(127);
  }
  Guest g;
  auto q = p->quote_tdx(td_input(g));
  ASSERT_TRUE(q.ok());
  Result<SealingKeyResponse> r = make_error("not tried");
  for (int i = 0; i < 100 && !r.ok(); ++i) {
    r = request_sealing_key("127.0.0.1", port, *q, 5s);
    if (!r.ok()) std::this_thread::sleep_for(100ms);
  }
  ASSERT_TRUE(r.ok()) << r.error().message << "\n" << read_file(log).value_or("");
  auto opened = open_sealing_key(*r, g.kp.secret, guest_options(*p));
  ASSERT_TRUE(opened.ok()) << opened.error().message;
  auto sk = read_file_bytes(key);
  ASSERT_TRUE(sk.ok());
  EXPECT_EQ(sk->size(), 32u);
  struct stat st;
  ASSERT_EQ(::stat(key.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  // The log never contains the sealing key or the derived key.
  std::string text = read_file(log).value_or("");
  EXPECT_NE(text.find("listening"), std::string::npos) << text;
  EXPECT_EQ(text.find(to_hex(*sk)), std::string::npos);
  EXPECT_EQ(text.find(to_hex(opened->key)), std::string::npos);

  ASSERT_EQ(::kill(c.pid, SIGTERM), 0);
  int status = 0;
  for (int i = 0; i < 100; ++i) {
    if (::waitpid(c.pid, &status, WNOHANG) == c.pid) {
      c.pid = -1;
      break;
    }
    std::this_thread::sleep_for(50ms);
  }
  ASSERT_EQ(c.pid, -1) << "dstack-key-provider did not exit on SIGTERM";
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}
