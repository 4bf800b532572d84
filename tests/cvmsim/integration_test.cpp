// End-to-end test of `dstack-cvm-sim run`: a real registry (Debian docker-registry on an ephemeral loopback port),
// a FROM-scratch test image built with podman, a VM dir laid out as dstack-vmm does, a fake VMM host API on
// <vm-dir>/host-api.sock (Notify + GetSealingKey answered by the real local key provider logic on the VMs'
// simulated platform, so the guest DCAP-verifies the provider's SGX quote), then: service in its own netns,
// port mapping, named volume persisted across a CVM restart, dstack.sock inside, RTMR3 replay, SIGTERM cleanup.
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <mutex>
#include <thread>

#include <nlohmann/json.hpp>

#include "attest/eventlog.h"
#include "attest/quote.h"
#include "keyprovider/provider.h"
#include "base/fs.h"
#include "crypto/ecdh.h"
#include "crypto/hash.h"
#include "crypto/x509.h"
#include "cvmsim/portfwd.h"
#include "cvmsim/process.h"
#include "rpc/prpc.h"

namespace fs = std::filesystem;
using nlohmann::json;
using namespace dstack;
using namespace dstack::cvmsim;

namespace {

uint16_t free_port() {
  int s = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t l = sizeof a;
  getsockname(s, reinterpret_cast<sockaddr*>(&a), &l);
  close(s);
  return ntohs(a.sin_port);
}

std::string netns_of_self() {
  std::error_code ec;
  return fs::read_symlink("/proc/self/ns/net", ec).string();
}

// Reads one line served by the test app through the host port; empty on failure.
std::string fetch_line(uint16_t port) {
  auto fd = connect_endpoint(Endpoint::tcp("127.0.0.1", port), std::chrono::seconds(3));
  if (!fd.ok()) return "";
  timeval tv{5, 0};
  setsockopt(*fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  std::string out;
  char buf[1024];
  ssize_t n;
  while ((n = recv(*fd, buf, sizeof buf, 0)) > 0) out.append(buf, static_cast<size_t>(n));
  close(*fd);
  return out;
}

std::string wait_line(uint16_t port, std::chrono::seconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    auto l = fetch_line(port);
    if (l.rfind("hello", 0) == 0) return l;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  return "";
}

// PIDs of processes whose command line mentions `needle`.
std::vector<pid_t> procs_mentioning(const std::string& needle) {
  std::vector<pid_t> out;
  for (const auto& e : fs::directory_iterator("/proc")) {
    std::string name = e.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    pid_t pid = std::stoi(name);
    if (pid == getpid()) continue;
    std::ifstream f(e.path() / "cmdline");
    std::string cmd((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    if (cmd.find(needle) != std::string::npos) out.push_back(pid);
  }
  return out;
}

class CvmSimIntegration : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/cvmsim-it-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    tmp_ = tmpl;
    // ---- registry ----
    reg_port_ = free_port();
    std::string cfg = tmp_ + "/registry.yml";
    ASSERT_TRUE(write_file_atomic(cfg, "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: " +
                                           tmp_ + "/registry\nhttp:\n  addr: 127.0.0.1:" + std::to_string(reg_port_) + "\n")
                    .ok());
    SpawnOptions so;
    so.argv = {"docker-registry", "serve", cfg};
    so.pipe_output = true;
    auto c = spawn(so);
    ASSERT_TRUE(c.ok()) << c.error().message << " (apt-get install docker-registry)";
    reg_pid_ = c->pid;
    reg_relay_ = relay_lines(c->out_fd, "registry ");
    bool up = false;
    for (int i = 0; i < 100 && !up; ++i) {
      rpc::ClientOptions o;
      o.timeout = std::chrono::milliseconds(500);
      auto r = rpc::http_request("GET", "http://127.0.0.1:" + std::to_string(reg_port_) + "/v2/", "", o);
      up = r.ok() && r->status == 200;
      if (!up) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    ASSERT_TRUE(up) << "registry did not come up";
    // ---- test image ----
    image_ = "127.0.0.1:" + std::to_string(reg_port_) + "/cvmsim-test:" + fs::path(tmp_).filename().string().substr(10);
    std::string ctx = tmp_ + "/image";
    fs::create_directories(ctx);
    fs::copy_file(CVMSIM_TESTAPP, ctx + "/testapp");
    ASSERT_TRUE(write_file_atomic(ctx + "/Containerfile",
                                  "FROM scratch\nCOPY testapp /testapp\nENV GREETING=image-default\nENTRYPOINT [\"/testapp\"]\n")
                    .ok());
    auto b = run_capture({"podman", "build", "-q", "-t", image_, ctx}, std::chrono::seconds(120));
    ASSERT_TRUE(b.ok()) << b.error().message;
    auto p = run_capture({"podman", "push", "-q", "--tls-verify=false", image_}, std::chrono::seconds(120));
    ASSERT_TRUE(p.ok()) << p.error().message;
    (void)run_capture({"podman", "rmi", "-f", image_}, std::chrono::seconds(60));
    // ---- VM dir as dstack-vmm lays it out ----
    vm_dir_ = tmp_ + "/vmm/run/" + "0b7a1c1e-0000-4000-8000-000000000001";
    fs::create_directories(vm_dir_ + "/shared");
    host_port_ = free_port();
    json manifest = {{"id", "0b7a1c1e-0000-4000-8000-000000000001"}, {"name", "simtest"}, {"app_id", ""},
                     {"vcpu", 2}, {"memory", 2048}, {"disk_size", 1}, {"image", "dstack-0.5.5"},
                     {"port_map", json::array({{{"address", "127.0.0.1"}, {"protocol", "tcp"}, {"from", host_port_}, {"to", 8080}}})}};
    ASSERT_TRUE(write_file_atomic(vm_dir_ + "/vm-manifest.json", manifest.dump()).ok());
    std::string dc = "services:\n  app:\n    image: " + image_ +
                     "\n    environment:\n      - GREETING=${GREETING:-sim}\n      - PORT=8080\n      - DATA_DIR=/data\n      - CRASH_FIRST=1\n"
                     "    volumes:\n      - appdata:/data\n      - /var/run/dstack.sock:/var/run/dstack.sock\n"
                     "    restart: always\nvolumes:\n  appdata:\n";
    json ac = {{"manifest_version", 2}, {"name", "simtest"}, {"runner", "docker-compose"}, {"docker_compose_file", dc},
               {"kms_enabled", false}, {"gateway_enabled", false}, {"local_key_provider_enabled", true},
               {"key_provider_id", ""}, {"public_logs", true}, {"public_sysinfo", true}, {"allowed_envs", json::array()},
               {"no_instance_id", false}, {"secure_time", false}};
    compose_raw_ = ac.dump(4);
    ASSERT_TRUE(write_file_atomic(vm_dir_ + "/shared/app-compose.json", compose_raw_).ok());
    json vm_config = {{"os_image_hash", std::string(64, 'a')}, {"cpu_count", 2}, {"memory_size", 2048ull << 20}};
    json sys = {{"kms_urls", json::array()}, {"host_api_url", "unix:" + vm_dir_ + "/host-api.sock"},
                {"vm_config", vm_config.dump()}};
    ASSERT_TRUE(write_file_atomic(vm_dir_ + "/shared/.sys-config.json", sys.dump()).ok());
    ASSERT_TRUE(write_file_atomic(vm_dir_ + "/shared/.instance_info", "{\"app_id\":\"\"}").ok());
    start_host_api();
  }

  // The VMM's host API with the local key provider of src/keyprovider (simulated SGX on the same simulated platform
  // as the VM; created lazily because `run` creates the platform dir).
  void start_host_api() {
    svc_.add("Notify", [this](const rpc::Json& req, const rpc::HttpRequest&) -> Result<rpc::Json> {
      std::lock_guard<std::mutex> lk(mu_);
      notes_.emplace_back(req.value("event", ""), req.value("payload", ""));
      // As dstack-vmm does (backend.h contract): instance.info is merged into shared/.instance_info, so the next
      // boot keeps its instance id (and the local key provider, which measures RTMR3, gives the same key).
      if (req.value("event", "") == "instance.info") {
        json info = json::parse(*read_file(vm_dir_ + "/shared/.instance_info"));
        info.update(json::parse(req.value("payload", "{}")));
        TRY(write_file_atomic(vm_dir_ + "/shared/.instance_info", info.dump()));
      }
      return rpc::Json(nullptr);
    });
    svc_.add("GetSealingKey", [this](const rpc::Json& req, const rpc::HttpRequest&) -> Result<rpc::Json> {
      TRY_ASSIGN(Bytes quote, rpc::get_hex(req, "quote"));
      std::lock_guard<std::mutex> lk(kp_mu_);
      if (!provider_) {
        keyprovider::ProviderConfig cfg;
        cfg.sim_platform_dir = tmp_ + "/vmm/sim-platform";
        cfg.sealing_key_file = tmp_ + "/kp/sealing.key";
        cfg.trust_sim_root = true;
        cfg.trust_intel_root = false;
        TRY_ASSIGN(provider_, keyprovider::KeyProvider::create(cfg));
        TRY_ASSIGN(provider_key_, read_file_bytes(cfg.sealing_key_file));
      }
      TRY_ASSIGN(keyprovider::SealingKeyResponse r, provider_->handle(quote));
      TRY_ASSIGN(attest::Quote q, attest::parse_quote(quote));
      sealing_key_ = keyprovider::derive_sealing_key(provider_key_, q.td_report);
      if (tamper_provider_quote_) r.provider_quote[48 + 320] ^= 1;  // breaks the binding and the signature
      return rpc::Json{{"encrypted_key", to_hex(r.encrypted_key)}, {"provider_quote", to_hex(r.provider_quote)}};
    });
    svc_.mount(server_, "/api");
    auto st = server_.listen("unix:" + vm_dir_ + "/host-api.sock");
    ASSERT_TRUE(st.ok()) << st.error().message;
    server_.start();
  }

  // A real dstack-kms on the host (dev auth, auto-bootstrap, no own attestation) with the simulated platform's TDX
  // collateral. trust_sim_root: its verifier trusts the VMs' simulated root CA; otherwise only Intel's root.
  void start_host_kms(bool trust_sim_root, std::string& kms_url, std::string& certs) {
    const std::string bin = DSTACK_BIN_DIR;
    ASSERT_TRUE(fs::exists(bin + "/dstack-kms")) << "build dstack-kms first";
    ASSERT_TRUE(fs::exists(bin + "/dstack-tdx-sim")) << "build dstack-tdx-sim first";
    // The platform the VM will use (run keeps an existing one) and its TDX collateral for the KMS.
    std::string plat = tmp_ + "/vmm/sim-platform";
    ASSERT_TRUE(run_capture({bin + "/dstack-tdx-sim", "init", "--dir", plat}, std::chrono::seconds(60)).ok());
    ASSERT_TRUE(run_capture({bin + "/dstack-tdx-sim", "collateral", "--dir", plat, "--out", tmp_ + "/kms-collateral.json"},
                            std::chrono::seconds(60)).ok());
    uint16_t kms_port = free_port();
    certs = tmp_ + "/kms-certs";
    std::string toml = "[rpc]\naddress = \"127.0.0.1\"\nport = " + std::to_string(kms_port) +
                       "\n[core]\ncert_dir = \"" + certs + "\"\nenforce_self_authorization = false\nattest_rpc_cert = false\n"
                       "[core.image]\nverify = false\n[core.auth_api]\ntype = \"dev\"\n"
                       "[core.onboard]\nenabled = true\nauto_bootstrap_domain = \"kms.cvmsim.test\"\naddress = \"127.0.0.1\"\nport = " +
                       std::to_string(kms_port) + "\n";
    toml += "[core.attestation]\ncollateral_file = \"" + tmp_ + "/kms-collateral.json\"\n";
    if (trust_sim_root)
      toml += "insecure_allow_external_trust_anchors = true\n[core.attestation.root_ca]\ntdx = \"" + plat + "/root-ca.pem\"\n";
    ASSERT_TRUE(write_file_atomic(tmp_ + "/kms.toml", toml).ok());
    SpawnOptions so;
    so.argv = {bin + "/dstack-kms", "-c", tmp_ + "/kms.toml"};
    so.pipe_output = true;
    so.new_process_group = true;
    auto kms = spawn(so);
    ASSERT_TRUE(kms.ok()) << kms.error().message;
    kms_pid_ = kms->pid;
    kms_relay_ = relay_lines(kms->out_fd, "kms ");
    kms_url = "https://127.0.0.1:" + std::to_string(kms_port);
    bool up = false;
    for (int i = 0; i < 150 && !up; ++i) {
      rpc::ClientOptions o;
      o.timeout = std::chrono::milliseconds(1000);
      o.insecure_skip_verify = true;
      up = rpc::prpc_call(kms_url + "/prpc", "GetMeta", json::object(), o).ok();
      if (!up) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    ASSERT_TRUE(up) << "dstack-kms did not come up";
  }

  // Compose with key provider kms and kms_urls = [the host KMS]; the VM reaches it on the same URL (KMS relay).
  void use_host_kms(bool trust_sim_root, std::string& kms_url, std::string& certs) {
    ASSERT_NO_FATAL_FAILURE(start_host_kms(trust_sim_root, kms_url, certs));
    json ac = json::parse(*read_file(vm_dir_ + "/shared/app-compose.json"));
    ac["kms_enabled"] = true;
    ac["local_key_provider_enabled"] = false;
    compose_raw_ = ac.dump(4);
    ASSERT_TRUE(write_file_atomic(vm_dir_ + "/shared/app-compose.json", compose_raw_).ok());
    json sys = json::parse(*read_file(vm_dir_ + "/shared/.sys-config.json"));
    sys["kms_urls"] = json::array({kms_url});
    ASSERT_TRUE(write_file_atomic(vm_dir_ + "/shared/.sys-config.json", sys.dump()).ok());
  }

  void TearDown() override {
    if (run_pid_ > 0) terminate(run_pid_, std::chrono::seconds(10));
    if (run_relay_.joinable()) run_relay_.join();
    if (kms_pid_ > 0) terminate(kms_pid_, std::chrono::seconds(5), true);
    if (kms_relay_.joinable()) kms_relay_.join();
    server_.stop();
    if (reg_pid_ > 0) terminate(reg_pid_, std::chrono::seconds(3));
    if (reg_relay_.joinable()) reg_relay_.join();
    for (pid_t p : procs_mentioning(tmp_)) kill(p, SIGKILL);
    std::error_code ec;
    fs::remove_all(tmp_, ec);
  }

  void start_vm() {
    int fds[2];
    ASSERT_EQ(pipe(fds), 0);
    // Everything that allocates happens before fork (the test process has server threads).
    std::vector<std::string> env_s;
    for (char** e = environ; *e; ++e) env_s.emplace_back(*e);
    env_s.push_back("DSTACK_SIM_IMAGE_CACHE=" + tmp_ + "/vmm/sim-images");
    env_s.push_back("DSTACK_SIM_PLATFORM_DIR=" + tmp_ + "/vmm/sim-platform");
    env_s.push_back("DSTACK_VMM_HOST_API=" + vm_dir_ + "/host-api.sock");
    std::vector<char*> envp;
    for (auto& e : env_s) envp.push_back(e.data());
    envp.push_back(nullptr);
    std::string exe = std::string(DSTACK_BIN_DIR) + "/dstack-cvm-sim";
    std::vector<std::string> args_s = {exe, "run", "--vm-dir", vm_dir_, "--secure-time-wait", "1"};
    std::vector<char*> args;
    for (auto& a : args_s) args.push_back(a.data());
    args.push_back(nullptr);
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      setsid();
      dup2(fds[1], 1);
      dup2(fds[1], 2);
      close(fds[0]);
      execve(exe.c_str(), args.data(), envp.data());
      _exit(127);
    }
    close(fds[1]);
    run_pid_ = pid;
    run_relay_ = std::thread([this, fd = fds[0]] {
      char buf[4096];
      ssize_t n;
      while ((n = read(fd, buf, sizeof buf)) > 0) {
        std::lock_guard<std::mutex> lk(mu_);
        console_.append(buf, static_cast<size_t>(n));
        fwrite(buf, 1, static_cast<size_t>(n), stderr);
      }
      close(fd);
    });
  }

  // SIGTERM and wait; returns the exit status.
  int stop_vm() {
    kill(run_pid_, SIGTERM);
    auto st = wait_for(run_pid_, std::chrono::seconds(15));
    int status = st ? *st : terminate(run_pid_, std::chrono::seconds(1));
    run_pid_ = -1;
    if (run_relay_.joinable()) run_relay_.join();
    return st ? status : -1;
  }

  std::string con_of_boot() { return console(); }
  // The runner exits 1 by itself (no SIGTERM), the VMM got a boot.error mentioning `why`, no app keys were written,
  // no service started and nothing of the VM is left.
  void expect_boot_failure(const std::string& why) {
    auto st = wait_for(run_pid_, std::chrono::seconds(90));
    ASSERT_TRUE(st.has_value()) << "runner did not exit on a failed boot (" << why << ")";
    run_pid_ = -1;
    if (run_relay_.joinable()) run_relay_.join();
    EXPECT_TRUE(WIFEXITED(*st) && WEXITSTATUS(*st) == 1) << describe_status(*st);
    EXPECT_TRUE(noted("boot.error", why)) << console();
    EXPECT_NE(console().find("CVM boot failed"), std::string::npos);
    EXPECT_FALSE(fs::exists(vm_dir_ + "/sim/dstack/.host-shared/.appkeys.json"));
    EXPECT_EQ(console().find("app  | testapp starting"), std::string::npos);
    EXPECT_TRUE(procs_mentioning(vm_dir_).empty());
  }
  std::string console() {
    std::lock_guard<std::mutex> lk(mu_);
    return console_;
  }
  bool noted(const std::string& event, const std::string& payload_part = "") {
    std::lock_guard<std::mutex> lk(mu_);
    for (const auto& [e, p] : notes_)
      if (e == event && p.find(payload_part) != std::string::npos) return true;
    return false;
  }

  std::string tmp_, image_, vm_dir_, compose_raw_;
  uint16_t reg_port_ = 0, host_port_ = 0;
  pid_t reg_pid_ = -1, run_pid_ = -1, kms_pid_ = -1;
  std::thread reg_relay_, run_relay_, kms_relay_;
  rpc::HttpServer server_;
  rpc::PrpcService svc_;
  Bytes sealing_key_;  // what the provider sealed to the VM (the seed of its app keys)
  std::mutex kp_mu_;
  std::shared_ptr<keyprovider::KeyProvider> provider_;
  Bytes provider_key_;
  bool tamper_provider_quote_ = false;
  std::mutex mu_;
  std::string console_;
  std::vector<std::pair<std::string, std::string>> notes_;
};

TEST_F(CvmSimIntegration, BootsServesPersistsAndStopsCleanly) {
  ASSERT_TRUE(fs::exists(std::string(DSTACK_BIN_DIR) + "/dstack-guest-agent")) << "build dstack-guest-agent first";
  start_vm();
  std::string line = wait_line(host_port_, std::chrono::seconds(90));
  ASSERT_FALSE(line.empty()) << "no answer through the port mapping; console:\n" << console();
  // "hello <greeting> boots=<n> netns=<ns> sock=<0|1> pid=<pid>"
  // The first start crashes on purpose (exit 3); `restart: always` brings it back with boot counter 2.
  EXPECT_NE(line.find("hello sim boots=2 "), std::string::npos) << line;
  EXPECT_NE(line.find("sock=1"), std::string::npos) << "dstack.sock not bound into the container: " << line;
  EXPECT_EQ(line.find(netns_of_self()), std::string::npos) << "service shares the host netns: " << line;
  EXPECT_NE(line.find("netns=net:["), std::string::npos) << line;
  // Many parallel connections through the mapping.
  {
    std::vector<std::thread> ts;
    std::atomic<int> ok{0};
    for (int i = 0; i < 32; ++i)
      ts.emplace_back([&] {
        if (fetch_line(host_port_).rfind("hello", 0) == 0) ok++;
      });
    for (auto& t : ts) t.join();
    EXPECT_EQ(ok.load(), 32);
  }

  // Agent socket inside the VM, RTMR3 replays from the emitted events.
  std::string sock = vm_dir_ + "/sim/run/dstack.sock";
  struct stat sst {};
  ASSERT_EQ(stat(sock.c_str(), &sst), 0);
  EXPECT_TRUE(S_ISSOCK(sst.st_mode));
  auto log_text = read_file(vm_dir_ + "/sim/run/log/dstack/runtime_events.log");
  ASSERT_TRUE(log_text.ok());
  auto events = attest::parse_runtime_event_log(*log_text);
  ASSERT_TRUE(events.ok()) << events.error().message;
  std::vector<std::string> names;
  for (const auto& e : *events) names.push_back(e.event);
  EXPECT_EQ(names, (std::vector<std::string>{"system-preparing", "app-id", "compose-hash", "instance-id", "boot-mr-done",
                                             "key-provider", "storage-fs", "system-ready"}));
  Bytes compose_hash = crypto::sha256(as_view(compose_raw_));
  EXPECT_EQ((*events)[2].payload, compose_hash);
  EXPECT_EQ((*events)[1].payload, Bytes(compose_hash.begin(), compose_hash.begin() + 20));
  EXPECT_EQ(to_string((*events)[5].payload),
            R"({"name":"local-sgx","id":")" + to_hex(keyprovider::provider_mr_enclave()) + "\"}");
  rpc::ClientOptions o;
  o.timeout = std::chrono::seconds(10);
  auto q = rpc::prpc_call("unix:" + sock + ":", "GetQuote", json{{"report_data", std::string(128, '0')}}, o);
  ASSERT_TRUE(q.ok()) << q.error().message;
  auto quote = rpc::get_hex(*q, "quote");
  ASSERT_TRUE(quote.ok());
  ASSERT_GE(quote->size(), 632u);
  EXPECT_EQ(Bytes(quote->begin() + 520, quote->begin() + 568), attest::replay_runtime_events(*events));
  // MR_CONFIG_ID V1 of the compose hash.
  EXPECT_EQ((*quote)[232], 0x01);
  EXPECT_EQ(Bytes(quote->begin() + 233, quote->begin() + 265), compose_hash);
  // App keys derived from the sealed key (spec §5.4).
  auto keys = read_file(vm_dir_ + "/sim/dstack/.host-shared/.appkeys.json");
  ASSERT_TRUE(keys.ok());
  {
    std::lock_guard<std::mutex> lk(kp_mu_);
    ASSERT_EQ(sealing_key_.size(), 32u);
    EXPECT_EQ(json::parse(*keys)["k256_key"].get<std::string>(),
              to_hex(*crypto::derive_key(sealing_key_, {as_view("app-k256-key")}, 32)));
  }
  EXPECT_NE(con_of_boot().find("Local key provider quote verified"), std::string::npos);
  // Host notifications and console milestones.
  EXPECT_TRUE(noted("instance.info", "instance_id"));
  EXPECT_TRUE(noted("boot.progress", "running"));
  std::string con = console();
  EXPECT_NE(con.find("CVM booting..."), std::string::npos);
  EXPECT_NE(con.find("Docker container starting..."), std::string::npos);
  EXPECT_NE(con.find("app  | testapp starting greeting=sim boots=1"), std::string::npos);
  EXPECT_NE(con.find("app  | container exited (exit 3)"), std::string::npos);
  EXPECT_NE(con.find("app  | restarting (policy always"), std::string::npos);

  // Graceful stop: exit 0, nothing of the VM left, port closed.
  EXPECT_EQ(stop_vm(), 0) << console();
  EXPECT_TRUE(noted("shutdown.progress", "powering off"));
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_TRUE(procs_mentioning(vm_dir_).empty()) << "processes survived the CVM";
  EXPECT_FALSE(connect_endpoint(Endpoint::tcp("127.0.0.1", host_port_), std::chrono::milliseconds(300)).ok());

  // Restart: the named volume persisted (boot counter 3), the instance keeps its app keys (same sealed key).
  start_vm();
  line = wait_line(host_port_, std::chrono::seconds(60));
  EXPECT_NE(line.find("boots=3"), std::string::npos) << line << "\n" << console();
  auto keys2 = read_file(vm_dir_ + "/sim/dstack/.host-shared/.appkeys.json");
  ASSERT_TRUE(keys2.ok());
  EXPECT_EQ(json::parse(*keys2)["k256_key"], json::parse(*keys)["k256_key"]);
  EXPECT_EQ(stop_vm(), 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_TRUE(procs_mentioning(vm_dir_).empty());
}

TEST_F(CvmSimIntegration, MissingImageIsABootErrorAndNothingRuns) {
  std::string raw = *read_file(vm_dir_ + "/shared/app-compose.json");
  json ac = json::parse(raw);
  ac["docker_compose_file"] = "services:\n  app:\n    image: 127.0.0.1:" + std::to_string(reg_port_) + "/nope:1\n";
  ASSERT_TRUE(write_file_atomic(vm_dir_ + "/shared/app-compose.json", ac.dump(4)).ok());
  start_vm();
  expect_boot_failure("nope:1");
}

// A provider quote that does not verify (DCAP signature / binding) stops the boot: no app keys, no services.
TEST_F(CvmSimIntegration, TamperedProviderQuoteFailsTheBoot) {
  tamper_provider_quote_ = true;
  start_vm();
  expect_boot_failure("local key provider");
}

// Key provider `kms` (spec §9 step 4, §5.5): a real dstack-kms on the host (dev auth, trusting the simulated
// root), reached from inside the VM's netns through the KMS relay; GetTempCaCert -> RA-TLS client cert ->
// GetAppKey over mTLS; the app keys are the KMS's derivation for this app.
TEST_F(CvmSimIntegration, KmsKeyProviderGetsAppKeysFromAHostKms) {
  std::string kms_url, certs;
  ASSERT_NO_FATAL_FAILURE(use_host_kms(true, kms_url, certs));

  start_vm();
  std::string line = wait_line(host_port_, std::chrono::seconds(90));
  ASSERT_FALSE(line.empty()) << "VM did not come up with KMS keys; console:\n" << console();

  Bytes compose_hash = crypto::sha256(as_view(compose_raw_));
  Bytes app_id(compose_hash.begin(), compose_hash.begin() + 20);
  auto keys_text = read_file(vm_dir_ + "/sim/dstack/.host-shared/.appkeys.json");
  ASSERT_TRUE(keys_text.ok());
  json keys = json::parse(*keys_text);
  auto root_k256 = read_file_bytes(certs + "/root-k256.key");
  ASSERT_TRUE(root_k256.ok());
  EXPECT_EQ(keys["k256_key"].get<std::string>(), to_hex(*crypto::derive_key(*root_k256, {app_id, as_view("app-key")}, 32)));
  EXPECT_EQ(keys["k256_signature"].get<std::string>().size(), 130u);
  EXPECT_EQ(keys["env_crypt_key"].get<std::string>().size(), 64u);
  ASSERT_TRUE(keys["key_provider"].contains("Kms")) << keys.dump();
  EXPECT_EQ(keys["key_provider"]["Kms"]["url"], kms_url + "/prpc");
  auto root_pem = read_file(certs + "/root-ca.crt");
  ASSERT_TRUE(root_pem.ok());
  auto root = crypto::Certificate::from_pem(*root_pem);
  ASSERT_TRUE(root.ok());
  EXPECT_EQ(keys["key_provider"]["Kms"]["pubkey"], to_hex(root->spki_der()));
  EXPECT_EQ(keys["ca_cert"].get<std::string>(), root->to_pem());

  auto events = attest::parse_runtime_event_log(*read_file(vm_dir_ + "/sim/run/log/dstack/runtime_events.log"));
  ASSERT_TRUE(events.ok());
  std::vector<std::string> names;
  for (const auto& e : *events) names.push_back(e.event);
  EXPECT_EQ(names, (std::vector<std::string>{"system-preparing", "app-id", "compose-hash", "instance-id", "boot-mr-done",
                                             "os-image-hash", "key-provider", "storage-fs", "system-ready"}));
  EXPECT_EQ(to_hex((*events)[5].payload), std::string(64, 'a'));
  EXPECT_EQ(to_string((*events)[6].payload), R"({"name":"kms","id":")" + to_hex(root->spki_der()) + "\"}");
  EXPECT_EQ(stop_vm(), 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_TRUE(procs_mentioning(vm_dir_).empty());
}

// A KMS that does not trust the simulated platform refuses GetAppKey: the boot fails, no app keys, no services.
TEST_F(CvmSimIntegration, KmsRefusingTheAttestationFailsTheBoot) {
  std::string kms_url, certs;
  ASSERT_NO_FATAL_FAILURE(use_host_kms(false, kms_url, certs));
  start_vm();
  expect_boot_failure("GetAppKey refused");
}

}  // namespace
