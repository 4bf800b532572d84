#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <thread>

#include "attest/attestation.h"
#include "attest/measurement.h"
#include "attest/quote.h"
#include "attest/sim/platform.h"
#include "base/fs.h"
#include "crypto/ecdh.h"
#include "crypto/hash.h"
#include "crypto/k256.h"
#include "crypto/x509.h"
#include "guest/backend.h"
#include "guest/client.h"
#include "guest/config.h"
#include "guest/event_log.h"
#include "guest/keys.h"
#include "guest/server.h"
#include "guest/service.h"
#include "ratls/ratls.h"

using namespace dstack;
using namespace dstack::guest;
namespace fs = std::filesystem;

namespace {

std::string make_tmp() {
  char tmpl[] = "/tmp/guest-test-XXXXXX";
  return mkdtemp(tmpl);
}

struct SimAgent {
  std::string dir = make_tmp();
  AgentConfig cfg;
  std::unique_ptr<GuestService> svc;
  explicit SimAgent(bool with_compose = true) {
    cfg.backend = "simulator";
    cfg.keys_file = dir + "/.appkeys.json";
    cfg.compose_file = dir + "/app-compose.json";
    cfg.sys_config_file = dir + "/.sys-config.json";
    cfg.event_log_dir = dir + "/log";
    cfg.sim_platform_dir = dir + "/platform";
    cfg.sim_state_dir = dir + "/state";
    cfg.tsm_report_dir = dir + "/no-such-tsm";
    if (with_compose) {
      EXPECT_TRUE(write_file_atomic(cfg.compose_file, std::string_view(R"({"name":"demo","runner":"docker-compose"})")).ok());
      nlohmann::json sys{{"vm_config", R"({"os_image_hash":")" + std::string(64, 'a') + R"("})"}};
      EXPECT_TRUE(write_file_atomic(cfg.sys_config_file, sys.dump()).ok());
    }
    auto s = GuestService::create(cfg);
    EXPECT_TRUE(s.ok()) << s.error().message;
    if (s.ok()) svc = std::move(*s);
  }
  ~SimAgent() {
    svc.reset();
    fs::remove_all(dir);
  }
};

Json ok(Result<Json> r) {
  EXPECT_TRUE(r.ok()) << (r.ok() ? "" : r.error().message);
  return r.ok() ? *r : Json();
}

}  // namespace

TEST(GuestConfig, ParsesListenersBackendAndSimulator) {
  auto c = AgentConfig::parse(R"(
[default.core]
keys_file = "keys.json"
backend = "simulator"
[default.core.simulator]
platform_dir = "plat"
mrtd = ")" + std::string(96, 'a') + R"("
[internal]
address = "unix:./dstack.sock"
mode = "0660"
[internal-v0]
enabled = false
[external]
address = "127.0.0.1"
port = 0
)", "/base").value();
  EXPECT_EQ(c.keys_file, "/base/keys.json");
  EXPECT_EQ(c.backend, "simulator");
  EXPECT_EQ(c.sim_platform_dir, "/base/plat");
  EXPECT_EQ(c.sim_mrtd, Bytes(48, 0xaa));
  EXPECT_EQ(c.internal.listen_address(), "unix:/base/dstack.sock");
  EXPECT_EQ(c.internal.mode, 0660u);
  EXPECT_FALSE(c.internal_v0.enabled);
  EXPECT_EQ(c.external.listen_address(), "127.0.0.1:0");
  EXPECT_FALSE(AgentConfig::parse("[default.core]\nbackend = \"sgx\"\n", "/").ok());
  EXPECT_FALSE(AgentConfig::parse("[default.core.simulator]\nmrtd = \"abcd\"\n", "/").ok());
  EXPECT_FALSE(AgentConfig::parse("not toml [", "/").ok());
}

TEST(GuestKeys, GeneratedKeysRoundTripAndAreWrittenPrivately) {
  SimAgent a;
  ASSERT_TRUE(a.svc);
  struct stat st{};
  ASSERT_EQ(::stat(a.cfg.keys_file.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  auto k = AppKeys::load(a.cfg.keys_file).value();
  EXPECT_EQ(k.key_provider_kind, "None");
  EXPECT_EQ(k.k256_key.size(), 32u);
  EXPECT_FALSE(k.ca_key_pem().empty());
  auto ca = crypto::Certificate::from_pem(k.ca_cert).value();
  EXPECT_EQ(ca.subject_cn(), "App Root Cert");
  EXPECT_EQ(AppKeys::from_json(k.to_json()).value().to_json(), k.to_json());
  EXPECT_EQ(k.key_provider_info(), R"({"id":"","name":"none"})");
  EXPECT_FALSE(AppKeys::from_json(nlohmann::json::parse(R"({"k256_key":"00","key_provider":{"None":{}}})")).ok());
}

TEST(GuestEventLog, BootEventsReplayToQuotedRtmr3AndSurviveRestart) {
  SimAgent a;
  ASSERT_TRUE(a.svc);
  ok(a.svc->emit_event({{"event", "custom"}, {"payload", "c0ffee"}}));
  auto q = ok(a.svc->get_quote({{"report_data", "01020304"}}));
  Bytes quote = from_hex(q["quote"].get<std::string>()).value();
  auto m = attest::TdMeasurements::from_quote(quote).value();
  Bytes rd(64, 0);
  rd[0] = 1, rd[1] = 2, rd[2] = 3, rd[3] = 4;
  EXPECT_EQ(m.report_data, rd);
  EXPECT_EQ(q["report_data"], to_hex(rd));
  auto log = attest::parse_runtime_event_log(read_file(a.svc->event_log().log_path()).value()).value();
  ASSERT_GE(log.size(), 9u);
  EXPECT_EQ(log.front().event, "system-preparing");
  EXPECT_EQ(log.back().event, "custom");
  EXPECT_EQ(attest::replay_runtime_events(log), m.rtmr3);
  // The returned event_log (JSON) replays every RTMR.
  auto evs = attest::event_log_from_json(q["event_log"].get<std::string>()).value();
  auto rtmrs = attest::replay_event_log(evs).value();
  EXPECT_EQ(rtmrs[0], m.rtmr0);
  EXPECT_EQ(rtmrs[1], m.rtmr1);
  EXPECT_EQ(rtmrs[2], m.rtmr2);
  EXPECT_EQ(rtmrs[3], m.rtmr3);
  struct stat st{};
  ASSERT_EQ(::stat(a.svc->event_log().log_path().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);

  // Restart: RTMR3 persisted, boot events not emitted twice.
  auto cfg = a.cfg;
  a.svc.reset();
  auto again = GuestService::create(cfg).value();
  auto q2 = ok(again->get_quote({{"report_data", ""}}));
  auto m2 = attest::TdMeasurements::from_quote(from_hex(q2["quote"].get<std::string>()).value()).value();
  EXPECT_EQ(m2.rtmr3, m.rtmr3);
  EXPECT_EQ(again->event_log().read().value().size(), log.size());
}

TEST(GuestService, ReportDataRules) {
  SimAgent a;
  ASSERT_TRUE(a.svc);
  auto r = a.svc->get_quote({{"report_data", std::string(130, 'a')}});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().message, "Report data is too long");
  EXPECT_FALSE(a.svc->attest({{"report_data", std::string(130, 'a')}}).ok());
  EXPECT_FALSE(a.svc->get_quote({{"report_data", "xyz"}}).ok());
  ok(a.svc->get_quote({{"report_data", std::string(128, 'a')}}));
  // Attest returns a V0 VersionedAttestation whose report data and RTMR3 replay are consistent.
  auto at = ok(a.svc->attest({{"report_data", "0x" + std::string(128, 'b')}}));
  auto va = attest::VersionedAttestation::from_bytes(from_hex(at["attestation"].get<std::string>()).value()).value();
  EXPECT_EQ(va.report_data, Bytes(64, 0xbb));
  auto m = attest::TdMeasurements::from_quote(va.quote).value();
  EXPECT_EQ(m.report_data, Bytes(64, 0xbb));
  EXPECT_EQ(attest::replay_runtime_events(va.runtime_events), m.rtmr3);
}

TEST(GuestService, GetKeySignatureChainRecoversAppKey) {
  SimAgent a;
  ASSERT_TRUE(a.svc);
  for (std::string algo : {"secp256k1", "ed25519", ""}) {
    auto r = ok(a.svc->get_key({{"path", "wallet/eth"}, {"purpose", "signing"}, {"algorithm", algo}}));
    Bytes key = from_hex(r["key"].get<std::string>()).value();
    Bytes expect = crypto::derive_key(a.svc->keys().k256_key, {as_view("wallet/eth")}, 32).value();
    EXPECT_EQ(key, expect);
    Bytes pub = algo == "ed25519" ? crypto::ed25519_public(key).value()
                                  : crypto::K256Key::from_secret(key).value().public_compressed();
    Bytes sig = from_hex(r["signature_chain"][0].get<std::string>()).value();
    Bytes digest = crypto::keccak256(as_view("signing:" + to_hex(pub)));
    auto signer = crypto::k256_recover(digest, sig).value();
    EXPECT_EQ(signer, crypto::K256Key::from_secret(a.svc->keys().k256_key).value().public_compressed());
  }
  EXPECT_FALSE(a.svc->get_key({{"algorithm", "rsa"}}).ok());
}

TEST(GuestService, SignAndVerify) {
  SimAgent a;
  ASSERT_TRUE(a.svc);
  for (std::string algo : {"ed25519", "secp256k1", "secp256k1_prehashed"}) {
    std::string data = algo == "secp256k1_prehashed" ? to_hex(crypto::sha256(as_view("m"))) : "6d657373616765";
    auto s = ok(a.svc->sign({{"algorithm", algo}, {"data", data}}));
    EXPECT_EQ(s["signature_chain"].size(), 3u);
    auto v = ok(a.svc->verify({{"algorithm", algo}, {"data", data}, {"signature", s["signature"]},
                               {"public_key", s["public_key"]}}));
    EXPECT_TRUE(v["valid"].get<bool>()) << algo;
    auto bad = ok(a.svc->verify({{"algorithm", algo}, {"data", algo == "secp256k1_prehashed" ? std::string(64, '0') : "00"},
                                 {"signature", s["signature"]}, {"public_key", s["public_key"]}}));
    EXPECT_FALSE(bad["valid"].get<bool>()) << algo;
  }
  EXPECT_FALSE(a.svc->sign({{"algorithm", "secp256k1_prehashed"}, {"data", "00"}}).ok());
}

TEST(GuestService, TlsKeyCarriesBoundAttestationAndVerifies) {
  SimAgent a;
  ASSERT_TRUE(a.svc);
  auto r = ok(a.svc->get_tls_key({{"subject", "app.example"}, {"alt_names", {"app.example", "127.0.0.1"}},
                                  {"usage_ra_tls", true}, {"usage_server_auth", true}}));
  ASSERT_EQ(r["certificate_chain"].size(), 2u);
  auto leaf = crypto::Certificate::from_pem(r["certificate_chain"][0].get<std::string>()).value();
  auto ca = crypto::Certificate::from_pem(r["certificate_chain"][1].get<std::string>()).value();
  EXPECT_TRUE(leaf.signed_by(ca));
  EXPECT_TRUE(crypto::verify_chain(leaf, {}, ca).ok());
  EXPECT_EQ(leaf.subject_cn(), "app.example");
  auto key = crypto::P256Key::from_pem(r["key"].get<std::string>()).value();
  EXPECT_EQ(key.spki_der(), leaf.spki_der());
  ratls::VerifyOptions o;
  auto plat = attest::sim::SimPlatform::load(a.cfg.sim_platform_dir).value();
  o.collateral = ratls::CollateralSource::from_json(nlohmann::json::parse(plat.tdx_collateral_json(std::time(nullptr)).value()));
  o.trust.root_ca_pem = plat.root_ca_pem();
  auto v = ratls::verify_peer_attestation(leaf.to_der(), o);
  ASSERT_TRUE(v.ok()) << v.error().message;
  auto info = ok(a.svc->info());
  EXPECT_EQ(to_hex(v->boot_info.app_id), info["app_id"]);
  EXPECT_EQ(to_hex(v->boot_info.mr_aggregated), info["mr_aggregated"]);
  EXPECT_EQ(to_hex(v->boot_info.device_id), info["device_id"]);
  EXPECT_EQ(to_hex(v->boot_info.os_image_hash), std::string(64, 'a'));
  // Without RA-TLS usage: no attestation extension.
  auto r2 = ok(a.svc->get_tls_key({{"subject", "x"}}));
  auto leaf2 = crypto::Certificate::from_pem(r2["certificate_chain"][0].get<std::string>()).value();
  EXPECT_FALSE(leaf2.extension(ratls::kOidAttestation).has_value());
  EXPECT_FALSE(a.svc->get_tls_key({{"not_before", 10}, {"not_after", 5}}).ok());
}

TEST(GuestService, InfoAndTappd) {
  SimAgent a;
  ASSERT_TRUE(a.svc);
  auto info = ok(a.svc->info());
  Bytes compose_hash = crypto::sha256(as_view(R"({"name":"demo","runner":"docker-compose"})"));
  EXPECT_EQ(info["compose_hash"], to_hex(compose_hash));
  EXPECT_EQ(info["app_id"], to_hex(ByteView(compose_hash).subspan(0, 20)));
  EXPECT_EQ(info["app_name"], "demo");
  EXPECT_EQ(info["instance_id"].get<std::string>().size(), 40u);
  auto tcb = nlohmann::json::parse(info["tcb_info"].get<std::string>());
  EXPECT_EQ(tcb["compose_hash"], info["compose_hash"]);
  EXPECT_EQ(tcb["os_image_hash"], std::string(64, 'a'));
  EXPECT_EQ(info["key_provider_info"], a.svc->keys().key_provider_info());

  auto t = ok(a.svc->call("tappd", "TdxQuote", {{"report_data", "68656c6c6f"}}));
  Bytes q = from_hex(t["quote"].get<std::string>()).value();
  auto m = attest::TdMeasurements::from_quote(q).value();
  EXPECT_EQ(m.report_data, crypto::sha512(as_view("app-data:hello")));
  EXPECT_EQ(t["hash_algorithm"], "sha512");
  EXPECT_EQ(t["prefix"], "app-data");
  auto raw = ok(a.svc->call("tappd", "RawQuote", {{"report_data", std::string(128, 'c')}}));
  EXPECT_EQ(raw["prefix"], "");
  EXPECT_FALSE(a.svc->call("tappd", "RawQuote", {{"report_data", "cc"}}).ok());
  auto dk = ok(a.svc->call("tappd", "DeriveKey", {{"path", "p"}, {"subject", "s"}}));
  auto dk2 = ok(a.svc->call("tappd", "DeriveKey", {{"path", "p"}, {"subject", "s"}}));
  EXPECT_EQ(dk["key"], dk2["key"]);  // deterministic from the app key
  auto k = ok(a.svc->call("tappd", "DeriveK256Key", {{"path", "p"}}));
  EXPECT_EQ(k["k256_key"].get<std::string>().size(), 64u);
  EXPECT_FALSE(a.svc->call("dstack", "Nope", {}).ok());
  EXPECT_FALSE(a.svc->call("worker", "GetKey", {}).ok());
}

TEST(GuestHttp, BadInputGives400AndServiceKeepsWorking) {
  SimAgent a;
  ASSERT_TRUE(a.svc);
  auto req = [](std::string path, std::string body) {
    rpc::HttpRequest r;
    r.method = "POST";
    r.path = path;
    r.target = path;
    r.body = std::move(body);
    r.headers["content-type"] = "application/json";
    return r;
  };
  auto is400 = [](const rpc::HttpResponse& r) {
    EXPECT_EQ(r.status, 400);
    auto j = nlohmann::json::parse(r.body, nullptr, false);
    EXPECT_TRUE(j.is_object() && j.contains("error")) << r.body;
  };
  is400(handle_request(*a.svc, "dstack", req("/GetQuote", "{not json")));
  is400(handle_request(*a.svc, "dstack", req("/NoSuchMethod", "{}")));
  is400(handle_request(*a.svc, "dstack", req("/GetQuote", std::string(kMaxRequestBody + 1, ' '))));
  auto too_long = handle_request(*a.svc, "dstack", req("/GetQuote", R"({"report_data":")" + std::string(130, 'a') + "\"}"));
  is400(too_long);
  EXPECT_NE(too_long.body.find("Report data is too long"), std::string::npos);
  is400(handle_request(*a.svc, "dstack", req("/GetQuote", R"({"report_data":"zz"})")));
  is400(handle_request(*a.svc, "tappd", req("/prpc/Tappd.Nope", "{}")));
  auto good = handle_request(*a.svc, "dstack", req("/GetQuote", R"({"report_data":"00"})"));
  EXPECT_EQ(good.status, 200);
  EXPECT_EQ(handle_request(*a.svc, "tappd", req("/prpc/Tappd.Version", "")).status, 200);
  EXPECT_EQ(handle_request(*a.svc, "worker", req("/prpc/Worker.Info", "")).status, 200);
  rpc::HttpRequest health = req("/health", "");
  health.method = "GET";
  auto h = handle_request(*a.svc, "worker", health);
  EXPECT_EQ(h.status, 200);
  EXPECT_EQ(h.body, "OK");
}

// The real (configfs-tsm) backend against a fake directory tree; a thread plays the kernel.
TEST(GuestRealBackend, ConfigfsTsmQuoteAndRtmrExtend) {
  std::string dir = make_tmp();
  std::string tsm = dir + "/tsm/report";
  ASSERT_TRUE(make_dirs(tsm).ok());
  std::atomic<bool> stop{false};
  std::thread kernel([&] {
    while (!stop) {
      for (auto& e : fs::directory_iterator(tsm)) {
        auto in = e.path() / "inblob";
        auto out = e.path() / "outblob";
        if (fs::exists(in) && !fs::exists(out) && fs::file_size(in) == 64) {
          auto blob = read_file_bytes(in.string()).value();
          Bytes quote = concat({as_view("FAKEQUOTE"), blob});
          std::ofstream(e.path() / "generation") << "1\n";
          std::ofstream o(out, std::ios::binary);
          o.write(reinterpret_cast<const char*>(quote.data()), static_cast<std::streamsize>(quote.size()));
        }
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  });
  RealBackendConfig rc;
  rc.tsm_report_dir = tsm;
  rc.rtmr3_file = dir + "/rtmr3:sha384";
  rc.quote_timeout_ms = 5000;
  auto b = make_real_backend(rc).value();
  Bytes rd(64, 0x5a);
  auto q = b->get_quote(rd);
  ASSERT_TRUE(q.ok()) << q.error().message;
  EXPECT_EQ(*q, concat({as_view("FAKEQUOTE"), rd}));
  Bytes digest(48, 0x33);
  ASSERT_TRUE(b->extend_rtmr3(digest).ok());
  EXPECT_EQ(read_file_bytes(rc.rtmr3_file).value(), digest);
  EXPECT_FALSE(b->extend_rtmr3(Bytes(10, 0)).ok());
  stop = true;
  kernel.join();
  // Generation mismatch is detected.
  stop = false;
  std::thread bad_kernel([&] {
    while (!stop) {
      for (auto& e : fs::directory_iterator(tsm)) {
        auto in = e.path() / "inblob";
        if (fs::exists(in) && !fs::exists(e.path() / "outblob")) {
          std::ofstream(e.path() / "generation") << "7\n";
          std::ofstream(e.path() / "outblob") << "Q";
        }
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  });
  auto q2 = b->get_quote(rd);
  stop = true;
  bad_kernel.join();
  ASSERT_FALSE(q2.ok());
  EXPECT_NE(q2.error().message.find("generation"), std::string::npos);
  // Missing configfs => real backend refuses; auto picks the simulator.
  rc.tsm_report_dir = dir + "/absent";
  EXPECT_FALSE(make_real_backend(rc).ok());
  fs::remove_all(dir);
}

TEST(GuestService, AutoBackendIsSimulatorWithoutConfigfs) {
  SimAgent a;  // backend "simulator" explicitly; check auto separately
  AgentConfig c = a.cfg;
  c.backend = "auto";
  c.event_log_dir = a.dir + "/log2";
  c.sim_state_dir = a.dir + "/state2";
  auto s = GuestService::create(c).value();
  EXPECT_EQ(s->backend().name(), "simulator");
}

TEST(GuestService, InconsistentSimulatorStateIsRefused) {
  SimAgent a;
  ASSERT_TRUE(a.svc);
  auto cfg = a.cfg;
  a.svc.reset();
  fs::remove(cfg.sim_state_dir + "/rtmr3");
  auto r = GuestService::create(cfg);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("inconsistent"), std::string::npos);
}

// The C++ client (used by the KMS) against the agent's HTTP front on a unix socket.
TEST(GuestClient, TalksToAgentOverUnixSocket) {
  SimAgent a;
  ASSERT_TRUE(a.svc);
  AgentConfig cfg = a.cfg;
  std::string sock = a.dir + "/run/dstack.sock";
  a.svc.reset();
  cfg.internal.address = "unix:" + sock;
  cfg.internal.mode = 0600;
  cfg.internal_v0.enabled = false;
  cfg.external.enabled = false;
  auto svc = GuestService::create(cfg).value();
  AgentServer server(*svc);
  ASSERT_TRUE(server.start().ok());
  struct stat st{};
  ASSERT_EQ(::stat(sock.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);

  GuestClient c(sock);
  Bytes rd = crypto::random_bytes(40);
  auto q = c.get_quote(rd);
  ASSERT_TRUE(q.ok()) << q.error().message;
  auto m = attest::TdMeasurements::from_quote(q->quote).value();
  Bytes padded = rd;
  padded.resize(64, 0);
  EXPECT_EQ(m.report_data, padded);
  EXPECT_EQ(q->report_data, padded);
  ASSERT_TRUE(c.emit_event("client-event", as_view("p")).ok());
  auto att = c.attest(Bytes(64, 0)).value();
  auto va = attest::VersionedAttestation::from_bytes(att).value();
  EXPECT_EQ(va.runtime_events.back().event, "client-event");
  EXPECT_EQ(attest::replay_runtime_events(va.runtime_events), attest::TdMeasurements::from_quote(va.quote).value().rtmr3);
  auto info = c.info().value();
  EXPECT_EQ(info["app_id"].get<std::string>().size(), 40u);
  auto k = c.get_key("x", "y").value();
  EXPECT_EQ(k.key.size(), 32u);
  EXPECT_EQ(k.signature_chain.size(), 2u);
  auto tls = c.get_tls_key(TlsKeyArgs{"s", {}, true, true, false}).value();
  EXPECT_EQ(tls.certificate_chain.size(), 2u);
  auto bad = c.get_quote(Bytes(65, 0));
  ASSERT_FALSE(bad.ok());
  auto bad2 = c.call("GetQuote", {{"report_data", std::string(130, 'a')}});
  ASSERT_FALSE(bad2.ok());
  EXPECT_NE(bad2.error().message.find("Report data is too long"), std::string::npos);
  server.stop();
}

TEST(GuestService, WorkerAttestationForAppKeyCommitsToSigningKey) {
  SimAgent a;
  ASSERT_TRUE(a.svc);
  for (std::string algo : {"ed25519", "secp256k1"}) {
    auto r = ok(a.svc->call("worker", "GetAttestationForAppKey", {{"algorithm", algo}}));
    auto s = ok(a.svc->sign({{"algorithm", algo}, {"data", "00"}}));
    Bytes pk = from_hex(s["public_key"].get<std::string>()).value();
    std::string b64 = base64_encode(pk);
    for (auto& c : b64) c = c == '+' ? '-' : c == '/' ? '_' : c;
    while (b64.back() == '=') b64.pop_back();
    Bytes expect = to_bytes((algo == "ed25519" ? "dip1::ed25519-pk:" : "dip1::secp256k1c-pk:") + b64);
    expect.resize(64, 0);
    auto m = attest::TdMeasurements::from_quote(from_hex(r["quote"].get<std::string>()).value()).value();
    EXPECT_EQ(m.report_data, expect) << algo;
  }
}
