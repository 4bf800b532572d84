// End to end: dstack-kms (webhook auth) -> auth-eth -> ganache with our contracts. GetMeta serves the chain's
// values; GetAppKey is denied/allowed by the contracts; a rate-limited RPC turns into fast denies while GetMeta
// stays fast. Processes (ganache, guest agent simulator, KMS) are started here and killed by PID.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <fstream>
#include <mutex>
#include <thread>

#include "attest/sim/platform.h"
#include "base/fs.h"
#include "crypto/p256.h"
#include "ethauth/auth_service.h"
#include "ethauth/deploy.h"
#include "ganache.h"
#include "kms/keys.h"
#include "kms/platform.h"
#include "ratls/ratls.h"
#include "rpc/http.h"

using namespace dstack;
using namespace dstack::ethauth;
namespace eabi = dstack::ethauth::abi;
using namespace std::chrono;
using nlohmann::json;

namespace {

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
    if (pid <= 0) return;
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

std::string sh(const std::string& cmd) {
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  pclose(p);
  return out;
}
std::string curl(const std::string& args) { return sh("curl -sk --max-time 20 " + args); }

// auth-eth served in-process so the test can see the BootInfo the KMS sends and swap the backend.
struct Webhook {
  std::atomic<AuthEthService*> svc{nullptr};
  std::mutex mu;
  json last_app_body;
  rpc::HttpServer server{[] {
    rpc::ServerOptions o;
    o.threads = 4;
    return o;
  }()};
  Webhook() {
    server.route("GET", "/", [this](const rpc::HttpRequest&) { return svc.load()->handle_info(); });
    server.route("POST", "/bootAuth/app", [this](const rpc::HttpRequest& r) {
      {
        std::lock_guard lk(mu);
        last_app_body = json::parse(r.body, nullptr, false);
      }
      return svc.load()->handle_boot_auth(false, r);
    });
    server.route("POST", "/bootAuth/kms",
                 [this](const rpc::HttpRequest& r) { return svc.load()->handle_boot_auth(true, r); });
  }
  json body() {
    std::lock_guard lk(mu);
    return last_app_body;
  }
};

}  // namespace

TEST(KmsWithAuthEth, GetMetaAndGetAppKeyFromChain) {
  const std::string bin = DSTACK_BIN_DIR;
  ASSERT_EQ(::access((bin + "/dstack-kms").c_str(), X_OK), 0) << "dstack-kms not built";
  char t[] = "/tmp/eth-kms-XXXXXX";
  const std::string dir = mkdtemp(t);

  // Chain + contracts: an app registered with some other compose hash, any device.
  ethtest::Ganache chain;
  ASSERT_EQ(chain.start(), "");
  EthRpc rpc(chain.url());
  DeployOptions o;
  o.contracts_dir = DSTACK_CONTRACTS_DIR;
  o.compose_hash = Bytes(32, 0x01);
  o.app_allow_any_device = true;
  o.gateway_app_id = "gw-from-chain";
  auto dep = deploy_all(rpc, o);
  ASSERT_TRUE(dep.ok()) << dep.error().message;
  std::string app_hex = dep->app_id.substr(2);
  std::transform(app_hex.begin(), app_hex.end(), app_hex.begin(), ::tolower);

  // auth-eth.
  AuthEthConfig acfg;
  acfg.eth_rpc_url = chain.url();
  acfg.kms_contract_addr = dep->kms_contract_addr;
  auto svc = AuthEthService::create(acfg);
  ASSERT_TRUE(svc.ok()) << svc.error().message;
  (*svc)->start_refresher();
  Webhook hook;
  hook.svc = svc->get();
  ASSERT_TRUE(hook.server.listen("127.0.0.1:0").ok());
  hook.server.start();
  const std::string hook_url = "http://127.0.0.1:" + std::to_string(hook.server.bound_port());

  // Simulated TDX guest whose app id is the DstackApp contract address.
  auto plat = attest::sim::SimPlatform::create(dir + "/platform");
  ASSERT_TRUE(plat.ok()) << plat.error().message;
  const std::string root_pem = dir + "/sim-root.pem", collateral = dir + "/collateral.json", sock = dir + "/dstack.sock";
  ASSERT_TRUE(write_file_atomic(root_pem, plat->root_ca_pem()).ok());
  auto now = duration_cast<seconds>(system_clock::now().time_since_epoch()).count();
  ASSERT_TRUE(write_file_atomic(collateral, plat->tdx_collateral_json(now).value()).ok());
  std::ofstream(dir + "/app-compose.json") << R"({"manifest_version":2,"name":"kms","runner":"docker-compose"})";
  std::ofstream(dir + "/dstack.toml")
      << "[default.core]\nkeys_file = \"appkeys.json\"\ncompose_file = \"app-compose.json\"\n"
         "sys_config_file = \"sys-config.json\"\nevent_log_dir = \"evlog\"\nbackend = \"simulator\"\n"
         "[default.core.simulator]\nplatform_dir = \"platform\"\nstate_dir = \"simstate\"\n"
         "app_id = \"" + app_hex + "\"\ninstance_id = \"" + std::string(40, 'b') + "\"\n"
         "[internal]\naddress = \"unix:dstack.sock\"\n[internal-v0]\naddress = \"unix:tappd.sock\"\n"
         "[external]\nenabled = false\n";
  Proc agent({bin + "/dstack-guest-agent", "-c", dir + "/dstack.toml"}, dir + "/agent.log");
  for (int i = 0; i < 200 && !file_exists(sock); ++i) std::this_thread::sleep_for(milliseconds(50));
  ASSERT_TRUE(file_exists(sock)) << agent.output();

  // KMS with the webhook.
  const uint16_t port = static_cast<uint16_t>(ethtest::free_port());
  const std::string cfg = dir + "/kms.toml";
  std::ofstream(cfg) << "[rpc]\naddress = \"127.0.0.1\"\nport = " << port << "\n"
                     << "[core]\nenforce_self_authorization = false\ncert_dir = \"" << dir << "/certs\"\n"
                     << "guest_agent = \"unix:" << sock << "\"\n"
                     << "[core.attestation]\ninsecure_allow_external_trust_anchors = true\ncollateral_file = \""
                     << collateral << "\"\n[core.attestation.root_ca]\ntdx = \"" << root_pem << "\"\n"
                     << "[core.auth_api]\ntype = \"webhook\"\n[core.auth_api.webhook]\nurl = \"" << hook_url
                     << "\"\ntimeout = \"10s\"\nrefresh_interval = \"1s\"\n";
  Proc kms({bin + "/dstack-kms", "-c", cfg}, dir + "/kms.log", {"KMS_DOMAIN=kms.test.local"});
  ASSERT_TRUE(kms.wait_for("RPC server listening on", seconds(90))) << kms.output();
  const std::string base = "https://127.0.0.1:" + std::to_string(port);

  // GetMeta carries the chain's values.
  json meta;
  for (int i = 0; i < 100; ++i) {
    meta = json::parse(curl(base + "/prpc/KMS.GetMeta"), nullptr, false);
    if (meta.is_object() && meta["kms_contract_address"].is_string()) break;
    std::this_thread::sleep_for(milliseconds(100));
  }
  ASSERT_TRUE(meta.is_object() && meta["kms_contract_address"].is_string()) << meta.dump() << kms.output();
  EXPECT_EQ(meta["kms_contract_address"], dep->kms_contract_addr);
  EXPECT_EQ(meta["chain_id"], 1337);
  EXPECT_EQ(meta["app_auth_implementation"], dep->app_implementation);
  EXPECT_EQ(meta["gateway_app_id"], "gw-from-chain");
  EXPECT_EQ(meta["is_dev"], false);

  // RA-TLS client certificate of the simulated app.
  json tmp = json::parse(curl(base + "/prpc/GetTempCaCert"));
  auto tmp_cert = crypto::Certificate::from_pem(tmp["temp_ca_cert"].get<std::string>()).value();
  auto tmp_key = crypto::P256Key::from_pem(tmp["temp_ca_key"].get<std::string>()).value();
  auto ck = crypto::P256Key::generate().value();
  auto attester = kms::make_guest_agent_attester("unix:" + sock);
  auto catt = attester->attest(kms::ratls_report_data(ck.spki_der()));
  ASSERT_TRUE(catt.ok()) << catt.error().message;
  ratls::RaTlsCertParams params;
  params.common_name = "RA-TLS TEMP Cert";
  params.attestation = *catt;
  auto ccert = ratls::issue_cert(params, ck, tmp_key, &tmp_cert);
  ASSERT_TRUE(ccert.ok()) << ccert.error().message;
  ASSERT_TRUE(write_file_atomic(dir + "/client.crt", ccert->to_pem()).ok());
  ASSERT_TRUE(write_file_atomic(dir + "/client.key", ck.to_pkcs8_pem(), 0600).ok());
  const std::string get_app_key = "--cert " + dir + "/client.crt --key " + dir +
                                  "/client.key -X POST -H 'Content-Type: application/json' -d '{\"api_version\":1}' '" +
                                  base + "/prpc/KMS.GetAppKey?json'";

  // Denied by the contract: the OS image is not on the KMS allow-list.
  std::string out = curl(get_app_key);
  EXPECT_EQ(out.find("disk_crypt_key"), std::string::npos) << out;
  EXPECT_NE(out.find("OS image is not allowed"), std::string::npos) << out << "\n" << kms.output();
  json seen = hook.body();
  ASSERT_TRUE(seen.is_object());
  EXPECT_EQ(seen["appId"], app_hex);

  // The owner allows the OS image: next denial comes from the app contract (compose hash).
  auto os = parse_bytes32(seen["osImageHash"].get<std::string>());
  ASSERT_TRUE(os.ok());
  ASSERT_TRUE(send_call(rpc, dep->owner, dep->kms_contract_addr, "addOsImageHash(bytes32)",
                        {eabi::Value::fixed_bytes(*os)}).ok());
  out = curl(get_app_key);
  EXPECT_NE(out.find("Compose hash not allowed"), std::string::npos) << out;

  // The app owner allows the compose hash: the key is released.
  auto ch = parse_bytes32(seen["composeHash"].get<std::string>());
  ASSERT_TRUE(ch.ok());
  ASSERT_TRUE(send_call(rpc, dep->owner, dep->app_id, "addComposeHash(bytes32)", {eabi::Value::fixed_bytes(*ch)}).ok());
  out = curl(get_app_key);
  json key = json::parse(out, nullptr, false);
  ASSERT_TRUE(key.is_object() && key.contains("disk_crypt_key")) << out << "\n" << kms.output();

  // The RPC goes rate-limited (HTTP 429): GetAppKey is denied within the budget, GetMeta stays fast.
  rpc::HttpServer limited{[] {
    rpc::ServerOptions so;
    so.threads = 2;
    return so;
  }()};
  limited.route_prefix("*", "/", [](const rpc::HttpRequest&) { return rpc::HttpResponse::json(429, "{}"); });
  ASSERT_TRUE(limited.listen("127.0.0.1:0").ok());
  limited.start();
  AuthEthConfig bad = acfg;
  bad.eth_rpc_url = "http://127.0.0.1:" + std::to_string(limited.bound_port());
  auto bad_svc = AuthEthService::create(bad);
  ASSERT_TRUE(bad_svc.ok());
  hook.svc = bad_svc->get();
  auto t0 = steady_clock::now();
  out = curl(get_app_key);
  auto el = duration_cast<milliseconds>(steady_clock::now() - t0).count();
  EXPECT_EQ(out.find("disk_crypt_key"), std::string::npos) << out;
  EXPECT_NE(out.find("authorization backend unavailable"), std::string::npos) << out;
  EXPECT_LT(el, 6000);
  std::vector<double> times;
  for (int i = 0; i < 5; ++i) {
    std::string r = curl("-o /dev/null -w '%{http_code} %{time_total}' " + base + "/prpc/KMS.GetMeta");
    ASSERT_EQ(r.substr(0, 3), "200") << r;
    times.push_back(std::stod(r.substr(4)));
  }
  std::sort(times.begin(), times.end());
  EXPECT_LT(times[2], 0.050) << "median GetMeta time with a rate-limited RPC";

  kms.stop();
  agent.stop();
  hook.server.stop();
  limited.stop();
  (*svc)->stop_refresher();
  sh("rm -rf '" + dir + "'");
}
