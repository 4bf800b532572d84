// The VMM's per-VM host API (vmm/backend.h contract) relaying GetSealingKey to a real dstack-key-provider
// (build/bin, simulated SGX platform), its failure modes, and the log views over rotated serial.log backups.
#include <gtest/gtest.h>

#include <ctime>

#include "attest/sim/platform.h"
#include "crypto/ecdh.h"
#include "keyprovider/client.h"
#include "rpc/http.h"
#include "rpc/prpc.h"
#include "vmm/server.h"
#include "vmm/vmm.h"
#include "vmm_test_util.h"

using namespace dstack;
using namespace dstack::vmm;
using namespace vmmtest;
using namespace std::chrono_literals;
using dstack::attest::sim::SimPlatform;

namespace {

struct VmmWithOneVm {
  TempDir tmp;
  VmmConfig cfg;
  std::unique_ptr<VmManager> vmm;
  std::string id, sock;

  explicit VmmWithOneVm(const std::function<void(VmmConfig&)>& tweak = {}) {
    cfg = vmm_config(tmp.path);
    if (tweak) tweak(cfg);
  }
  void start() {
    vmm = std::make_unique<VmManager>(cfg, std::make_unique<SleepBackend>());
    ASSERT_TRUE(vmm->load().ok());
    auto compose = render_app_compose([] { auto o = compose_options(); o.kms = false; o.local_key_provider = true; return o; }());
    ASSERT_TRUE(compose.ok());
    auto r = vmm->create_vm(create_request("sealed", *compose));
    ASSERT_TRUE(r.ok()) << r.error().message;
    id = *r;
    sock = vmm->vm_dir(id) + "/host-api.sock";
    ASSERT_TRUE(wait_for([&] { return fs::exists(sock); })) << "host API socket " << sock << " never appeared";
  }
  Result<nlohmann::json> get_sealing_key(ByteView quote, std::chrono::milliseconds timeout = 20s) const {
    rpc::ClientOptions o;
    o.timeout = timeout;
    return rpc::prpc_call("unix:" + sock + ":/api", "GetSealingKey", nlohmann::json{{"quote", to_hex(quote)}}, o);
  }
};

attest::sim::TdQuoteInput td_input(ByteView x25519_public) {
  attest::sim::TdQuoteInput in;
  in.report_data = Bytes(x25519_public.begin(), x25519_public.end());
  in.report_data.resize(64, 0);
  in.mr_td = Bytes(48, 0x11);
  in.rtmr0 = Bytes(48, 0xa0);
  in.rtmr1 = Bytes(48, 0xa1);
  in.rtmr2 = Bytes(48, 0xa2);
  in.rtmr3 = Bytes(48, 0x33);
  return in;
}

}  // namespace

TEST(VmmHostApi, GetSealingKeyRelaysToRealKeyProvider) {
  uint16_t kp_port = free_port();
  VmmWithOneVm f([&](VmmConfig& c) {
    c.key_provider.port = kp_port;
    c.key_provider.timeout_ms = 10000;
  });
  auto platform = SimPlatform::create(f.tmp.path + "/platform");
  ASSERT_TRUE(platform.ok()) << platform.error().message;
  std::string bin = std::string(DSTACK_BIN_DIR) + "/dstack-key-provider";
  ASSERT_TRUE(file_exists(bin)) << bin << " not built (target dstack-key-provider)";
  Child kp;
  kp.spawn({bin, "-c", std::string(DSTACK_SOURCE_DIR) + "/config/key-provider.toml", "--listen",
            "127.0.0.1:" + std::to_string(kp_port), "--sealing-key-file", f.tmp.path + "/kp/sealing.key",
            "--sim-platform-dir", f.tmp.path + "/platform", "--trust-sim-root"},
           f.tmp.path + "/kp.log");
  ASSERT_NO_FATAL_FAILURE(f.start());

  // The guest: an X25519 key pair in report_data of its TDX quote.
  auto guest = crypto::x25519_generate();
  auto quote = platform->quote_tdx(td_input(guest.public_key));
  ASSERT_TRUE(quote.ok()) << quote.error().message;
  Result<nlohmann::json> r = make_error("not tried");
  ASSERT_TRUE(wait_for([&] {
    r = f.get_sealing_key(*quote);
    return r.ok();
  }, 15000)) << r.error().message << "\nkey provider log:\n" << kp.output();

  keyprovider::SealingKeyResponse resp;
  auto ek = rpc::get_hex(*r, "encrypted_key");
  auto pq = rpc::get_hex(*r, "provider_quote");
  ASSERT_TRUE(ek.ok() && pq.ok()) << r->dump();
  resp.encrypted_key = *ek;
  resp.provider_quote = *pq;
  keyprovider::OpenOptions oo;
  auto col_json = platform->sgx_collateral_json(std::time(nullptr));
  ASSERT_TRUE(col_json.ok());
  auto col = attest::parse_collateral_json(*col_json);
  ASSERT_TRUE(col.ok());
  oo.collateral = *col;
  oo.trust.trust_intel_root = false;
  oo.trust.extra_root_pems = {platform->root_ca_pem()};
  auto opened = keyprovider::open_sealing_key(resp, guest.secret, oo);
  ASSERT_TRUE(opened.ok()) << opened.error().message;
  EXPECT_EQ(opened->key.size(), 32u);
  // Another guest key cannot open it (the sealed box is bound to the quote's X25519 key).
  auto other = crypto::x25519_generate();
  EXPECT_FALSE(keyprovider::open_sealing_key(resp, other.secret, oo).ok());

  // A bad quote is refused by the provider and the error reaches the guest.
  Bytes garbage(600, 0x42);
  auto bad = f.get_sealing_key(garbage);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message.find("key provider"), std::string::npos) << bad.error().message;
}

TEST(VmmHostApi, GetSealingKeyProviderDownFailsClearlyWithinTimeout) {
  // A listener that never accepts: connect succeeds (backlog), no answer ever comes.
  int hole = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(hole, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(hole, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(::listen(hole, 8), 0);
  socklen_t len = sizeof a;
  ::getsockname(hole, reinterpret_cast<sockaddr*>(&a), &len);
  uint16_t hole_port = ntohs(a.sin_port);
  uint16_t dead_port = free_port();

  uint16_t port = dead_port;
  VmmWithOneVm f([&](VmmConfig& c) {
    c.key_provider.timeout_ms = 1500;
    c.key_provider.port = dead_port;
  });
  ASSERT_NO_FATAL_FAILURE(f.start());
  Bytes quote(1000, 0x01);

  // Nothing listening: connection refused, at once.
  auto t0 = std::chrono::steady_clock::now();
  auto r = f.get_sealing_key(quote);
  auto dt = std::chrono::steady_clock::now() - t0;
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("127.0.0.1:" + std::to_string(port)), std::string::npos) << r.error().message;
  EXPECT_NE(r.error().message.find("dstack-key-provider"), std::string::npos) << r.error().message;
  EXPECT_LT(dt, 1500ms);

  // Provider hangs: the relay gives up after [key_provider] timeout_ms.
  f.vmm.reset();
  f.cfg.key_provider.port = hole_port;
  f.cfg.run_path = f.tmp.path + "/run2";
  ASSERT_NO_FATAL_FAILURE(f.start());
  t0 = std::chrono::steady_clock::now();
  r = f.get_sealing_key(quote);
  dt = std::chrono::steady_clock::now() - t0;
  ::close(hole);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("timed out"), std::string::npos) << r.error().message;
  EXPECT_GE(dt, 1400ms);
  EXPECT_LT(dt, 5000ms);
}

TEST(VmmHostApi, GetSealingKeyDisabled) {
  VmmWithOneVm f([](VmmConfig& c) { c.key_provider.enabled = false; });
  ASSERT_NO_FATAL_FAILURE(f.start());
  auto r = f.get_sealing_key(Bytes(100, 1));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("key provider disabled"), std::string::npos) << r.error().message;
  // The rest of the host API still works.
  rpc::ClientOptions o;
  auto info = rpc::prpc_call("unix:" + f.sock + ":/api", "Info", nlohmann::json::object(), o);
  ASSERT_TRUE(info.ok()) << info.error().message;
  EXPECT_EQ((*info)["name"], "dstack VMM");
}

// ---------------------------------------------------------------- logs over rotated backups

TEST(VmmLogs, LinesIncludeRotatedBackups) {
  TempDir tmp;
  VmmConfig cfg = vmm_config(tmp.path);
  cfg.cvm.log.max_bytes = 100;
  cfg.cvm.log.max_backups = 3;
  cfg.cvm.log.check_interval_secs = 3600;  // rotate only when the test says so
  VmManager m(cfg, std::make_unique<SleepBackend>());
  ASSERT_TRUE(m.load().ok());
  auto compose = render_app_compose(compose_options());
  ASSERT_TRUE(compose.ok());
  auto req = create_request("logvm", *compose);
  req["stopped"] = true;
  auto id = m.create_vm(req);
  ASSERT_TRUE(id.ok()) << id.error().message;
  std::string log = m.log_path(*id);
  auto lines = [](int from, int to) {
    std::string s;
    for (int i = from; i <= to; ++i) s += "line " + std::to_string(i) + "\n";
    return s;
  };
  // Three generations: lines 1-20 -> .2, 21-40 -> .1, 41-43 current (rotate_logs = copy-truncate).
  ASSERT_TRUE(write_file_atomic(log, lines(1, 20)).ok());
  m.rotate_logs();
  ASSERT_TRUE(write_file_atomic(log, read_file(log).value_or("") + lines(21, 40)).ok());
  m.rotate_logs();
  ASSERT_TRUE(fs::exists(log + ".2"));
  ASSERT_EQ(fs::file_size(log), 0u);
  ASSERT_TRUE(write_file_atomic(log, lines(41, 43)).ok());

  EXPECT_EQ(m.tail_log(*id, 2), lines(42, 43));
  EXPECT_EQ(m.tail_log(*id, 5), lines(39, 43));
  EXPECT_EQ(m.tail_log(*id, 30), lines(14, 43));
  EXPECT_EQ(m.tail_log(*id, 100), lines(1, 43));
  EXPECT_EQ(m.tail_log(*id, 0), lines(1, 43));

  // Both HTTP views.
  rpc::HttpServer server;
  auto routes = register_routes(server, m);
  ASSERT_TRUE(server.listen("tcp:127.0.0.1:0").ok());
  server.start();
  std::string base = "http://127.0.0.1:" + std::to_string(server.bound_port(0));
  auto r1 = rpc::http_request("GET", base + "/logs?id=" + *id + "&lines=4");
  ASSERT_TRUE(r1.ok()) << r1.error().message;
  EXPECT_EQ(r1->status, 200);
  EXPECT_EQ(r1->body, lines(40, 43));
  auto r2 = rpc::http_request("GET", base + "/api/instances/logvm/logs?lines=25");
  ASSERT_TRUE(r2.ok()) << r2.error().message;
  EXPECT_EQ(r2->body, lines(19, 43));
  server.stop();

  // Right after a rotation the current file is empty: the tail comes from the backups.
  ASSERT_TRUE(write_file_atomic(log, lines(41, 60)).ok());
  m.rotate_logs();
  ASSERT_EQ(fs::file_size(log), 0u);
  EXPECT_EQ(m.tail_log(*id, 3), lines(58, 60));
  EXPECT_EQ(m.tail_log(*id, 25), lines(36, 60));
  EXPECT_EQ(m.tail_log(*id, 0), lines(1, 60));  // .3 = 1-20, .2 = 21-40, .1 = 41-60
}
