// End to end: simulated TDX platform + dstack-guest-agent (simulator backend) + dstack-kms processes, real curl.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <chrono>
#include <fstream>
#include <thread>

#include "attest/attestation.h"
#include "attest/sim/platform.h"
#include "base/fs.h"
#include "crypto/hash.h"
#include "kms/cert_store.h"
#include "kms/keys.h"
#include "kms/platform.h"
#include "ratls/ratls.h"
#include "rpc/http.h"

using namespace dstack;
using namespace std::chrono;
using nlohmann::json;

namespace {

std::string tmpdir() {
  char t[] = "/tmp/kmsintXXXXXX";
  return mkdtemp(t);
}

uint16_t free_port() {
  int s = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t l = sizeof a;
  getsockname(s, reinterpret_cast<sockaddr*>(&a), &l);
  uint16_t p = ntohs(a.sin_port);
  close(s);
  return p;
}

struct Proc {
  pid_t pid = -1;
  std::string log;
  Proc(std::vector<std::string> argv, std::string log_path, std::vector<std::string> env = {}) : log(log_path) {
    pid = fork();
    if (pid == 0) {
      int fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      dup2(fd, 1);
      dup2(fd, 2);
      for (auto& e : env) putenv(strdup(e.c_str()));
      std::vector<char*> a;
      for (auto& s : argv) a.push_back(const_cast<char*>(s.c_str()));
      a.push_back(nullptr);
      execv(a[0], a.data());
      _exit(127);
    }
  }
  ~Proc() { stop(); }
  void stop() {
    if (pid > 0) {
      kill(pid, SIGTERM);
      for (int i = 0; i < 100; ++i) {
        if (waitpid(pid, nullptr, WNOHANG) == pid) {
          pid = -1;
          return;
        }
        std::this_thread::sleep_for(milliseconds(50));
      }
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
      pid = -1;
    }
  }
  bool alive() { return pid > 0 && waitpid(pid, nullptr, WNOHANG) == 0; }
  std::string output() const { return read_file(log).value_or(""); }
  bool wait_for(const std::string& needle, seconds timeout) {
    auto end = steady_clock::now() + timeout;
    while (steady_clock::now() < end) {
      if (output().find(needle) != std::string::npos) return true;
      if (!alive()) return false;
      std::this_thread::sleep_for(milliseconds(50));
    }
    return false;
  }
};

std::string sh(const std::string& cmd, int* rc = nullptr) {
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  int st = pclose(p);
  if (rc) *rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return out;
}

mode_t mode_of(const std::string& p) {
  struct stat st{};
  ::stat(p.c_str(), &st);
  return st.st_mode & 0777;
}

struct Env {
  std::string dir = tmpdir();
  std::string bin = DSTACK_BIN_DIR;
  std::string sock = dir + "/dstack.sock";
  std::unique_ptr<Proc> agent;
  std::string root_pem = dir + "/sim-root.pem";
  std::string collateral = dir + "/collateral.json";

  void start_agent() {
    auto p = attest::sim::SimPlatform::create(dir + "/platform");
    ASSERT_TRUE(p.ok()) << p.error().message;
    ASSERT_TRUE(write_file_atomic(root_pem, p->root_ca_pem()).ok());
    auto now = duration_cast<seconds>(system_clock::now().time_since_epoch()).count();
    ASSERT_TRUE(write_file_atomic(collateral, p->tdx_collateral_json(now).value()).ok());
    std::ofstream(dir + "/app-compose.json") << R"({"manifest_version":2,"name":"kms","runner":"docker-compose"})";
    std::ofstream(dir + "/dstack.toml") << "[default.core]\n"
        "keys_file = \"appkeys.json\"\ncompose_file = \"app-compose.json\"\nsys_config_file = \"sys-config.json\"\n"
        "event_log_dir = \"evlog\"\nbackend = \"simulator\"\n"
        "[default.core.simulator]\nplatform_dir = \"platform\"\nstate_dir = \"simstate\"\n"
        "app_id = \"" + std::string(40, 'a') + "\"\ninstance_id = \"" + std::string(40, 'b') + "\"\n"
        "[internal]\naddress = \"unix:dstack.sock\"\n[internal-v0]\naddress = \"unix:tappd.sock\"\n"
        "[external]\nenabled = false\n";
    agent = std::make_unique<Proc>(std::vector<std::string>{bin + "/dstack-guest-agent", "-c", dir + "/dstack.toml"},
                                   dir + "/agent.log");
    for (int i = 0; i < 200 && !file_exists(sock); ++i) std::this_thread::sleep_for(milliseconds(50));
    ASSERT_TRUE(file_exists(sock)) << agent->output();
  }

  std::string kms_toml(const std::string& certs, uint16_t port, const std::string& auth_extra) {
    std::string p = dir + "/kms-" + std::to_string(port) + ".toml";
    std::ofstream(p) << "[rpc]\naddress = \"127.0.0.1\"\nport = " << port << "\n"
                     << "[core]\ncert_dir = \"" << certs << "\"\nguest_agent = \"unix:" << sock << "\"\n"
                     << "[core.attestation]\ninsecure_allow_external_trust_anchors = true\ncollateral_file = \""
                     << collateral << "\"\n[core.attestation.root_ca]\ntdx = \"" << root_pem << "\"\n"
                     << auth_extra;
    return p;
  }
};

std::string curl(const std::string& args, int* rc = nullptr) { return sh("curl -sk --max-time 20 " + args, rc); }

}  // namespace

TEST(KmsIntegration, AutoBootstrapGetMetaAndAppKey) {
  Env env;
  ASSERT_NO_FATAL_FAILURE(env.start_agent());
  std::string certs = env.dir + "/certs";
  uint16_t port = free_port();
  auto cfg = env.kms_toml(certs, port, "[core.auth_api]\ntype = \"dev\"\n");
  Proc kms({env.bin + "/dstack-kms", "-c", cfg}, env.dir + "/kms.log", {"KMS_DOMAIN=kms.test.local"});
  ASSERT_TRUE(kms.wait_for("RPC server listening on", seconds(60))) << kms.output() << env.agent->output();

  // Seed log milestones, in order.
  std::string log = kms.output();
  size_t pos = 0;
  for (std::string m : std::vector<std::string>{"KMS initializing...", "Auto-bootstrap enabled for domain kms.test.local",
                        "Generating certificates...", "RPC server listening on 127.0.0.1:" + std::to_string(port)}) {
    auto p = log.find(m, pos);
    ASSERT_NE(p, std::string::npos) << m << "\n" << log;
    pos = p;
  }
  // The 8 artifacts (+ rpc-domain) and their modes.
  for (const char* f : {"root-ca.crt", "rpc.crt", "tmp-ca.crt", "bootstrap-info.json", "rpc-domain"})
    EXPECT_TRUE(file_exists(certs + "/" + f)) << f;
  for (const char* f : {"root-ca.key", "rpc.key", "tmp-ca.key", "root-k256.key"}) EXPECT_EQ(mode_of(certs + "/" + f), 0600u) << f;
  EXPECT_EQ(read_file_bytes(certs + "/root-k256.key")->size(), 32u);

  // GetMeta with real curl.
  int rc = 0;
  std::string body = curl("https://127.0.0.1:" + std::to_string(port) + "/prpc/KMS.GetMeta", &rc);
  ASSERT_EQ(rc, 0);
  json meta = json::parse(body, nullptr, false);
  ASSERT_TRUE(meta.is_object()) << body;
  for (const char* k : {"ca_cert", "allow_any_upgrade", "k256_pubkey", "bootstrap_info", "is_dev", "gateway_app_id",
                        "kms_contract_address", "chain_id", "app_auth_implementation"})
    EXPECT_TRUE(meta.contains(k)) << k;
  EXPECT_EQ(meta["ca_cert"], *read_file(certs + "/root-ca.crt"));
  EXPECT_EQ(meta["is_dev"], true);
  EXPECT_EQ(meta["gateway_app_id"], "any");
  auto keys = kms::CertStore(certs).load().value();
  EXPECT_EQ(meta["k256_pubkey"], to_hex(keys.k256.public_compressed()));
  // Same answer on /prpc/GetMeta?json via POST.
  EXPECT_EQ(json::parse(curl("-X POST 'https://127.0.0.1:" + std::to_string(port) + "/prpc/GetMeta?json'")), meta);

  // bootstrap_info: binding recomputed from the *served* ca_cert and k256_pubkey, quote verified by dstack-verify.
  auto served_ca = crypto::Certificate::from_pem(meta["ca_cert"].get<std::string>()).value();
  Bytes served_k256 = from_hex(meta["k256_pubkey"].get<std::string>()).value();
  ASSERT_TRUE(meta["bootstrap_info"].is_object());
  EXPECT_EQ(meta["bootstrap_info"]["ca_pubkey"], to_hex(served_ca.spki_der()));
  EXPECT_EQ(meta["bootstrap_info"]["k256_pubkey"], to_hex(served_k256));
  auto att = attest::VersionedAttestation::from_bytes(
      from_hex(meta["bootstrap_info"]["attestation"].get<std::string>()).value());
  ASSERT_TRUE(att.ok()) << att.error().message;
  Bytes want_rd = kms::bootstrap_report_data(served_ca.spki_der(), served_k256);
  EXPECT_EQ(att->report_data, want_rd);
  ASSERT_GE(att->quote.size(), 632u);
  EXPECT_EQ(Bytes(att->quote.begin() + 568, att->quote.begin() + 632), want_rd);
  ASSERT_TRUE(write_file_atomic(env.dir + "/quote.bin", att->quote).ok());
  std::string vout = sh(env.bin + "/dstack-verify quote --quote " + env.dir + "/quote.bin --collateral " +
                            env.collateral + " --root-ca " + env.root_pem + " --json 2>&1",
                        &rc);
  EXPECT_EQ(rc, 0) << vout;
  EXPECT_NE(vout.find(to_hex(want_rd)), std::string::npos) << vout;

  // rpc.crt carries the kms:rpc usage and an attestation bound to its key.
  auto rpc_cert = crypto::Certificate::from_pem(*read_file(certs + "/rpc.crt")).value();
  EXPECT_EQ(rpc_cert.extension(kms::kOidSpecialUsage).value(), to_bytes("kms:rpc"));
  EXPECT_TRUE(rpc_cert.extension(kms::kOidAttestation).has_value());

  // GetAppKey without a client cert: refused.
  std::string url = "https://127.0.0.1:" + std::to_string(port) + "/prpc/KMS.GetAppKey?json";
  std::string refused = curl("-X POST -H 'Content-Type: application/json' -d '{\"api_version\":1}' -w '\\n%{http_code}' '" + url + "'");
  EXPECT_NE(refused.find("No attestation provided"), std::string::npos) << refused;
  EXPECT_NE(refused.find("\n400"), std::string::npos) << refused;

  // RA-TLS client cert: temp CA from GetTempCaCert, attestation from the simulated agent.
  json tmp = json::parse(curl("https://127.0.0.1:" + std::to_string(port) + "/prpc/GetTempCaCert"));
  auto tmp_cert = crypto::Certificate::from_pem(tmp["temp_ca_cert"].get<std::string>()).value();
  auto tmp_key = crypto::P256Key::from_pem(tmp["temp_ca_key"].get<std::string>()).value();
  auto ck = crypto::P256Key::generate().value();
  auto attester = kms::make_guest_agent_attester("unix:" + env.sock);
  auto catt = attester->attest(kms::ratls_report_data(ck.spki_der()));
  ASSERT_TRUE(catt.ok()) << catt.error().message;
  ratls::RaTlsCertParams params;
  params.common_name = "RA-TLS TEMP Cert";
  params.attestation = *catt;
  auto ccert = ratls::issue_cert(params, ck, tmp_key, &tmp_cert);
  ASSERT_TRUE(ccert.ok()) << ccert.error().message;
  ASSERT_TRUE(write_file_atomic(env.dir + "/client.crt", ccert->to_pem()).ok());
  ASSERT_TRUE(write_file_atomic(env.dir + "/client.key", ck.to_pkcs8_pem(), 0600).ok());
  std::string kbody = curl("--cert " + env.dir + "/client.crt --key " + env.dir + "/client.key -X POST -H "
                           "'Content-Type: application/json' -d '{\"api_version\":1}' '" + url + "'", &rc);
  json appkey = json::parse(kbody, nullptr, false);
  ASSERT_TRUE(appkey.is_object() && appkey.contains("disk_crypt_key")) << kbody << "\n" << kms.output();
  auto want = kms::derive_app_keys(keys.ca_key, keys.k256, Bytes(20, 0xaa), Bytes(20, 0xbb));
  ASSERT_TRUE(want.ok()) << want.error().message;
  EXPECT_EQ(appkey["disk_crypt_key"], to_hex(want->disk_crypt_key));
  EXPECT_EQ(appkey["env_crypt_key"], to_hex(want->env_crypt_key));
  EXPECT_EQ(appkey["k256_key"], to_hex(want->k256_key));
  EXPECT_EQ(appkey["k256_signature"], to_hex(want->k256_signature));
  EXPECT_EQ(appkey["ca_cert"], meta["ca_cert"]);

  std::string metrics = curl("https://127.0.0.1:" + std::to_string(port) + "/metrics");
  EXPECT_NE(metrics.find("dstack_kms_attestation_requests_total 2"), std::string::npos) << metrics;
  EXPECT_NE(metrics.find("dstack_kms_attestation_failures_total 1"), std::string::npos) << metrics;
  EXPECT_EQ(curl("https://127.0.0.1:" + std::to_string(port) + "/health"), "OK");

  // Restart with the same cert dir: keys reused, rpc.crt reissued.
  kms.stop();
  Proc kms2({env.bin + "/dstack-kms", "-c", cfg}, env.dir + "/kms2.log", {"KMS_DOMAIN=kms.test.local"});
  ASSERT_TRUE(kms2.wait_for("RPC server listening on", seconds(60))) << kms2.output();
  EXPECT_EQ(kms2.output().find("Generating certificates"), std::string::npos);
  EXPECT_EQ(json::parse(curl("https://127.0.0.1:" + std::to_string(port) + "/prpc/KMS.GetMeta"))["k256_pubkey"],
            meta["k256_pubkey"]);
  kms2.stop();

  // A webhook that sleeps 30 s: GetMeta stays fast, GetAppKey fails within its timeout.
  rpc::HttpServer hang{[] { rpc::ServerOptions o; o.threads = 4; return o; }()};
  std::atomic<bool> release{false};
  hang.route_prefix("*", "/", [&](const rpc::HttpRequest&) {
    for (int i = 0; i < 3000 && !release; ++i) std::this_thread::sleep_for(milliseconds(10));
    return rpc::HttpResponse::json(200, "{}");
  });
  ASSERT_TRUE(hang.listen("127.0.0.1:0").ok());
  hang.start();
  std::string hook_url = "http://127.0.0.1:" + std::to_string(hang.bound_port());
  std::string cfg3 = env.dir + "/kms-hook.toml";
  {
    std::string text = *read_file(env.kms_toml(certs, port, ""));
    text.replace(text.find("[core]\n"), 7, "[core]\nenforce_self_authorization = false\n");
    text += "[core.auth_api]\ntype = \"webhook\"\n[core.auth_api.webhook]\nurl = \"" + hook_url +
            "\"\ntimeout = \"2s\"\ninfo_timeout = \"30s\"\n";
    std::ofstream(cfg3) << text;
  }
  Proc kms3({env.bin + "/dstack-kms", "-c", cfg3}, env.dir + "/kms3.log");
  ASSERT_TRUE(kms3.wait_for("RPC server listening on", seconds(60))) << kms3.output();
  std::vector<double> times;
  for (int i = 0; i < 5; ++i) {
    std::string out = curl("-o /dev/null -w '%{http_code} %{time_total}' https://127.0.0.1:" + std::to_string(port) +
                           "/prpc/KMS.GetMeta");
    ASSERT_EQ(out.substr(0, 3), "200") << out;
    times.push_back(std::stod(out.substr(4)));
  }
  std::sort(times.begin(), times.end());
  EXPECT_LT(times[2], 0.050) << "median GetMeta time with a hanging webhook";
  json m3 = json::parse(curl("https://127.0.0.1:" + std::to_string(port) + "/prpc/KMS.GetMeta"));
  EXPECT_EQ(m3["is_dev"], false);
  EXPECT_EQ(m3["auth_api_status"]["fresh"], false);
  auto t0 = steady_clock::now();
  std::string denied = curl("--cert " + env.dir + "/client.crt --key " + env.dir + "/client.key -X POST -H "
                            "'Content-Type: application/json' -d '{}' '" + url + "'");
  auto el = duration_cast<milliseconds>(steady_clock::now() - t0).count();
  EXPECT_LT(el, 6000);
  EXPECT_NE(denied.find("timed out"), std::string::npos) << denied;
  EXPECT_EQ(denied.find("disk_crypt_key"), std::string::npos);
  kms3.stop();
  release = true;
  hang.stop();
}

// Replication: a second KMS with an empty cert dir onboards from the first over RA-TLS and ends up with the
// same root CA key/cert and k256 key.
TEST(KmsIntegration, OnboardReplicatesRootKeys) {
  Env env;
  ASSERT_NO_FATAL_FAILURE(env.start_agent());
  uint16_t pa = free_port();
  auto cfg_a = env.kms_toml(env.dir + "/certs-a", pa, "[core.auth_api]\ntype = \"dev\"\n");
  Proc a({env.bin + "/dstack-kms", "-c", cfg_a}, env.dir + "/kms-a.log", {"KMS_DOMAIN=kms-a.test.local"});
  ASSERT_TRUE(a.wait_for("RPC server listening on", seconds(60))) << a.output();

  uint16_t pb = free_port(), pb_onboard = free_port();
  auto cfg_b = env.kms_toml(env.dir + "/certs-b", pb,
                            "[core.auth_api]\ntype = \"dev\"\n[core.onboard]\naddress = \"127.0.0.1\"\nport = " +
                                std::to_string(pb_onboard) + "\n");
  Proc b({env.bin + "/dstack-kms", "-c", cfg_b}, env.dir + "/kms-b.log");
  ASSERT_TRUE(b.wait_for("Onboarding service listening", seconds(60))) << b.output();
  std::string onboard = "http://127.0.0.1:" + std::to_string(pb_onboard);
  // Bootstrap is refused after Onboard created keys; Onboard itself first.
  std::string req = "{\"source_url\":\"https://127.0.0.1:" + std::to_string(pa) + "/\",\"domain\":\"kms-b.test.local\"}";
  int rc = 0;
  std::string out = curl("-X POST -H 'Content-Type: application/json' -d '" + req + "' '" + onboard +
                         "/prpc/Onboard.Onboard?json'", &rc);
  json meta_a = json::parse(curl("https://127.0.0.1:" + std::to_string(pa) + "/prpc/KMS.GetMeta"));
  json ob = json::parse(out, nullptr, false);
  ASSERT_TRUE(ob.is_object() && ob.contains("k256_pubkey")) << out << "\n" << b.output() << "\n" << a.output();
  EXPECT_EQ(ob["k256_pubkey"], meta_a["k256_pubkey"]);
  std::string again = curl("-X POST -H 'Content-Type: application/json' -d '{\"domain\":\"x.test\"}' '" + onboard +
                           "/prpc/Onboard.Bootstrap?json'");
  EXPECT_NE(again.find("refused"), std::string::npos) << again;
  EXPECT_EQ(curl(onboard + "/finish"), "OK");
  ASSERT_TRUE(b.wait_for("RPC server listening on", seconds(60))) << b.output();
  json meta_b = json::parse(curl("https://127.0.0.1:" + std::to_string(pb) + "/prpc/KMS.GetMeta"));
  EXPECT_EQ(meta_b["k256_pubkey"], meta_a["k256_pubkey"]);
  EXPECT_EQ(meta_b["ca_cert"], meta_a["ca_cert"]);
  auto ka = kms::CertStore(env.dir + "/certs-a").load().value();
  auto kb = kms::CertStore(env.dir + "/certs-b").load().value();
  EXPECT_EQ(ka.ca_key.scalar(), kb.ca_key.scalar());
  EXPECT_EQ(ka.k256.secret(), kb.k256.secret());
  EXPECT_EQ(ka.tmp_ca_key.scalar(), kb.tmp_ca_key.scalar());
  EXPECT_NE(ka.rpc_key.scalar(), kb.rpc_key.scalar());  // own TLS key
  EXPECT_EQ(*read_file(env.dir + "/certs-b/rpc-domain"), "kms-b.test.local");
}
