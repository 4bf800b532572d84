// Unit tests of dstack_vmm: compose writer bytes + hash, port specs, config, manifest round trip, and the
// VmManager's validation / lifecycle with a fake backend runner (tests/vmm/fake-runner.sh).
#include <gtest/gtest.h>

#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <thread>

#include "base/fs.h"
#include "vmm/compose.h"
#include "vmm/config.h"
#include "vmm/envcrypt.h"
#include "vmm/manifest.h"
#include "vmm/vmm.h"

#include "expected_compose.inc"

namespace fs = std::filesystem;
using namespace dstack;
using namespace dstack::vmm;

namespace {

ComposeOptions seed_options() {
  ComposeOptions o;
  o.name = "kms";
  o.docker_compose = "services:\n  kms:\n    image: registry.yourdomain.com/dstack-kms:fixed\n    environment:\n      - MSG=\"h\xc3\xa9llo\"\t\x01\n";
  o.local_key_provider = true;
  return o;
}

}  // namespace

TEST(Compose, MatchesPythonJsonDumpsBytes) {
  auto text = render_app_compose(seed_options());
  ASSERT_TRUE(text.ok()) << text.error().message;
  EXPECT_EQ(*text, std::string(kExpectedCompose));
  // Hashes computed with Python hashlib over json.dumps(indent=4, ensure_ascii=False).encode().
  EXPECT_EQ(compose_hash(*text), "9d82e9caa023e67536ac0ca4c6b7d7adede4dacb4f4efa8687c0335b88b4b7ca");
  EXPECT_EQ(app_id_of(*text), "9d82e9caa023e67536ac0ca4c6b7d7adede4dacb");
}

TEST(Compose, OptionalKeysInUpstreamOrder) {
  auto o = seed_options();
  o.allowed_envs = {"A", "B"};
  o.key_provider = "kms";
  o.pre_launch_script = "echo hi";
  o.swap_size = 4294967296ULL;
  o.event_log_version = 2;
  auto text = render_app_compose(o);
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(compose_hash(*text), "0909cdadb114c198cd57bc68ab9ff6791f5c21e67dbfd2dd74097a76baafc2cd");
  EXPECT_LT(text->find("\"secure_time\""), text->find("\"key_provider\":"));
  EXPECT_LT(text->find("\"pre_launch_script\""), text->find("\"swap_size\""));
  o.key_provider = "magic";
  EXPECT_FALSE(render_app_compose(o).ok());
}

TEST(Compose, ValidationErrors) {
  auto good = *render_app_compose(seed_options());
  auto info = validate_app_compose(good);
  ASSERT_TRUE(info.ok()) << info.error().message;
  EXPECT_EQ(info->key_provider, "local");
  ASSERT_EQ(info->images.size(), 1u);
  EXPECT_EQ(info->images[0], "registry.yourdomain.com/dstack-kms:fixed");

  std::string bad_runner = good;
  bad_runner.replace(bad_runner.find("\"docker-compose\""), 16, "\"podman-magic\"");
  auto r = validate_app_compose(bad_runner);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("unknown runner \"podman-magic\""), std::string::npos);
  EXPECT_FALSE(validate_app_compose("not json").ok());
  EXPECT_FALSE(validate_app_compose(R"({"name":"x","runner":"docker-compose"})").ok());  // no manifest_version
  EXPECT_FALSE(validate_app_compose(R"({"manifest_version":2,"name":"x","runner":"docker-compose",
      "docker_compose_file":"services:\n  a:\n    build: .\n"})").ok());
}

TEST(Compose, ImageRefs) {
  auto r = parse_image_ref("registry.yourdomain.com/dstack-kms:fixed");
  EXPECT_EQ(r.registry, "registry.yourdomain.com");
  EXPECT_EQ(r.repository, "dstack-kms");
  EXPECT_EQ(r.tag, "fixed");
  r = parse_image_ref("127.0.0.1:5000/a/b");
  EXPECT_EQ(r.registry, "127.0.0.1:5000");
  EXPECT_EQ(r.repository, "a/b");
  EXPECT_EQ(r.tag, "latest");
  r = parse_image_ref("nginx:1.25");
  EXPECT_EQ(r.registry, "");
  EXPECT_EQ(r.repository, "nginx");
}

TEST(Ports, Specs) {
  auto p = parse_port_spec("tcp:127.0.0.1:9100:9100");
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(*p, (PortMap{"127.0.0.1", "tcp", 9100, 9100}));
  p = parse_port_spec("udp:8000:53", "0.0.0.0");
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(*p, (PortMap{"0.0.0.0", "udp", 8000, 53}));
  EXPECT_EQ(format_port(*p), "udp:0.0.0.0:8000:53");
  for (const char* bad : {"tcp:9100", "sctp:1:2", "tcp:0:80", "tcp:70000:80", "tcp:a:80", "tcp::1:2", "tcp:1:2:3:4:5"})
    EXPECT_FALSE(parse_port_spec(bad).ok()) << bad;
  auto q = port_from_rpc(nlohmann::json{{"protocol", "tcp"}, {"host_port", 80}, {"vm_port", 8080}}, "127.0.0.1");
  ASSERT_TRUE(q.ok());
  EXPECT_EQ(q->address, "127.0.0.1");
  EXPECT_EQ(port_to_rpc(*q)["host_port"], 80);
}

TEST(Manifest, RoundTrip) {
  VmManifest m;
  m.id = "4a1b2c3d-0000-4000-8000-000000000001";
  m.name = "kms";
  m.app_id = "00112233445566778899aabbccddeeff00112233";
  m.vcpu = 2;
  m.memory = 4096;
  m.disk_size = 20;
  m.image = "dstack-0.5.5";
  m.port_map = {{"127.0.0.1", "tcp", 9100, 9100}};
  m.created_at_ms = 1234;
  m.kms_urls = {"https://kms:9100"};
  m.simulated_tee = "dstack-tdx";
  auto j = manifest_to_json(m);
  EXPECT_EQ(j.begin().key(), "id");
  EXPECT_EQ(j["port_map"][0]["from"], 9100);
  auto back = manifest_from_json(nlohmann::json::parse(j.dump()));
  ASSERT_TRUE(back.ok()) << back.error().message;
  EXPECT_EQ(*back, m);
  EXPECT_FALSE(manifest_from_json(nlohmann::json{{"name", "x"}}).ok());
}

TEST(Config, TomlAndSizes) {
  VmmConfig c;
  ASSERT_TRUE(apply_toml(c, R"(
address = "0.0.0.0"
port = 9999
run_path = "/tmp/x"
[cvm]
backend = "sim"
[cvm.port_mapping]
enabled = true
range = [{ protocol = "tcp", from = 9000, to = 9200 }]
[cvm.auto_restart]
initial_backoff = 0.5
[cvm.log]
max_bytes = "1M"
[key_provider]
port = 4443
)", "test.toml").ok());
  EXPECT_EQ(c.port, 9999);
  EXPECT_EQ(listen_address(c), "tcp:0.0.0.0:9999");
  ASSERT_EQ(c.cvm.port_mapping.range.size(), 1u);
  EXPECT_EQ(c.cvm.port_mapping.range[0].from, 9000u);
  EXPECT_DOUBLE_EQ(c.cvm.auto_restart.initial_backoff, 0.5);
  EXPECT_EQ(c.cvm.log.max_bytes, 1u << 20);
  EXPECT_EQ(c.key_provider.port, 4443);
  auto bad = apply_toml(c, "port = [", "broken.toml");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message.find("broken.toml"), std::string::npos);
  EXPECT_FALSE(apply_toml(c, "[cvm.port_mapping]\nrange=[{protocol=\"sctp\",from=1,to=2}]", "t").ok());
  EXPECT_EQ(*parse_memory_mb("4G"), 4096u);
  EXPECT_EQ(*parse_memory_mb("512"), 512u);
  EXPECT_EQ(*parse_disk_gb("1T"), 1024u);
  EXPECT_FALSE(parse_disk_gb("20M").ok());
}

TEST(EnvFile, Parse) {
  auto e = parse_env_file("# c\nA=1\nexport B=\"two words\"\n\nC_3='x=y'\n");
  ASSERT_TRUE(e.ok()) << e.error().message;
  ASSERT_EQ(e->size(), 3u);
  EXPECT_EQ((*e)[1].second, "two words");
  EXPECT_EQ((*e)[2].second, "x=y");
  EXPECT_EQ(env_to_json(*e), R"({"env":[{"key":"A","value":"1"},{"key":"B","value":"two words"},{"key":"C_3","value":"x=y"}]})");
  EXPECT_FALSE(parse_env_file("1BAD=x\n").ok());
  EXPECT_FALSE(parse_env_file("NOEQUALS\n").ok());
}

// ---------------------------------------------------------------- VmManager with a fake runner

namespace {

class FakeBackend : public Backend {
 public:
  std::string name() const override { return "fake"; }
  Status check() const override { return Status::Ok(); }
  Result<LaunchSpec> launch_spec(const LaunchContext& ctx) const override {
    return LaunchSpec{{"/bin/sh", std::string(DSTACK_SOURCE_DIR) + "/tests/vmm/fake-runner.sh", "run", "--vm-dir", ctx.vm_dir},
                      {{"DSTACK_VMM_HOST_API", ctx.host_api_socket}},
                      ctx.vm_dir};
  }
};

struct TempDir {
  std::string path;
  TempDir() {
    char tmpl[] = "/tmp/vmm-unit-XXXXXX";
    path = ::mkdtemp(tmpl);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

bool wait_for(const std::function<bool()>& pred, int ms = 10000) {
  auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
  while (std::chrono::steady_clock::now() < end) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return pred();
}

bool alive(pid_t pid) {
  auto st = read_file("/proc/" + std::to_string(pid) + "/stat");
  if (!st) return false;
  auto p = st->rfind(')');
  return p != std::string::npos && p + 2 < st->size() && (*st)[p + 2] != 'Z';
}

struct Fixture {
  TempDir tmp;
  VmmConfig cfg;
  std::string compose;
  Fixture() {
    cfg.run_path = tmp.path + "/run";
    cfg.image.path = tmp.path + "/images";
    cfg.cvm.port_mapping.range = {{"tcp", 9000, 9200}};
    cfg.cvm.auto_restart.initial_backoff = 0.2;
    cfg.cvm.auto_restart.max_backoff = 0.4;
    cfg.cvm.stop_timeout_secs = 5;
    cfg.cvm.log.check_interval_secs = 0.2;
    EXPECT_TRUE(make_dirs(cfg.image.path + "/dstack-0.5.5").ok());
    EXPECT_TRUE(write_file_atomic(cfg.image.path + "/dstack-0.5.5/metadata.json", R"({"version":"0.5.5","is_dev":false})").ok());
    EXPECT_TRUE(write_file_atomic(cfg.image.path + "/dstack-0.5.5/digest.txt", "ab\n").ok());
    compose = *render_app_compose(seed_options());
  }
  nlohmann::json req(const std::string& name, std::vector<int> ports = {}) const {
    nlohmann::json j{{"name", name}, {"image", "dstack-0.5.5"}, {"compose_file", compose}, {"vcpu", 2},
                     {"memory", 4096}, {"disk_size", 20}, {"ports", nlohmann::json::array()}};
    for (int p : ports) j["ports"].push_back({{"protocol", "tcp"}, {"host_port", p}, {"vm_port", p}, {"host_address", "127.0.0.1"}});
    return j;
  }
  size_t dirs() const {
    size_t n = 0;
    std::error_code ec;
    for ([[maybe_unused]] auto& e : fs::directory_iterator(cfg.run_path, ec)) ++n;
    return n;
  }
};

pid_t runner_pid(const VmManager& m, const std::string& id) {
  auto t = read_file(m.vm_dir(id) + "/runner.pid");
  return t ? static_cast<pid_t>(std::atol(t->c_str())) : -1;
}

}  // namespace

TEST(VmManager, ValidationLeavesNothingOnDisk) {
  Fixture f;
  VmManager m(f.cfg, std::make_unique<FakeBackend>());
  ASSERT_TRUE(m.load().ok());
  auto first = m.create_vm([&] { auto j = f.req("kms", {9100}); j["stopped"] = true; return j; }());
  ASSERT_TRUE(first.ok()) << first.error().message;
  EXPECT_EQ(f.dirs(), 1u);
  auto expect_err = [&](nlohmann::json req, const std::string& needle) {
    auto r = m.create_vm(req);
    ASSERT_FALSE(r.ok()) << "expected failure containing: " << needle;
    EXPECT_NE(r.error().message.find(needle), std::string::npos) << r.error().message;
    EXPECT_EQ(f.dirs(), 1u) << "a failed CreateVm left something in run_path";
  };
  expect_err(f.req("kms", {9101}), "already exists");
  expect_err(f.req("other", {9100}), "already used by VM kms");
  expect_err(f.req("other", {9101, 9101}), "appears more than once");
  expect_err(f.req("other", {30000}), "outside the allowed range");
  auto bad_image = f.req("other");
  bad_image["image"] = "dstack-9.9.9";
  expect_err(bad_image, "image \"dstack-9.9.9\" not found");
  auto bad_runner = f.req("other");
  std::string c = f.compose;
  c.replace(c.find("\"docker-compose\""), 16, "\"podman-magic\"");
  bad_runner["compose_file"] = c;
  expect_err(bad_runner, "unknown runner");
  auto bad_name = f.req("bad name/..");
  expect_err(bad_name, "invalid VM name");
  // Disabled port mapping.
  f.cfg.cvm.port_mapping.enabled = false;
  VmManager m2(f.cfg, std::make_unique<FakeBackend>());
  auto r = m2.create_vm(f.req("x", {9105}));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("port mapping is disabled"), std::string::npos);

  // On-disk layout of the created VM (spec §10.3).
  std::string dir = m.vm_dir(*first);
  EXPECT_EQ(*read_file(dir + "/shared/app-compose.json"), f.compose);  // verbatim
  auto inst = nlohmann::json::parse(*read_file(dir + "/shared/.instance_info"));
  EXPECT_EQ(inst["app_id"], app_id_of(f.compose));
  auto man = nlohmann::json::parse(*read_file(dir + "/vm-manifest.json"));
  EXPECT_EQ(man["name"], "kms");
  EXPECT_EQ(man["port_map"][0]["to"], 9100);
  EXPECT_EQ(nlohmann::json::parse(*read_file(dir + "/vm-state.json"))["started"], false);
}

TEST(VmManager, LifecycleCrashRestartAndRemove) {
  Fixture f;
  std::string id;
  {
    VmManager m(f.cfg, std::make_unique<FakeBackend>());
    ASSERT_TRUE(m.load().ok());
    auto r = m.create_vm(f.req("kms", {9100}));
    ASSERT_TRUE(r.ok()) << r.error().message;
    id = *r;
    std::string dir = m.vm_dir(id);
    ASSERT_TRUE(wait_for([&] { return m.get_info(id)["info"]["boot_progress"] == "running"; }))
        << m.get_info(id).dump();
    auto info = m.get_info("kms");
    EXPECT_EQ(info["info"]["status"], "running");
    EXPECT_EQ(info["info"]["instance_id"], "00112233445566778899aabbccddeeff00112233");
    EXPECT_NE(read_file(dir + "/shared/.instance_info")->find("00112233445566778899aabbccddeeff00112233"), std::string::npos);
    auto sys = nlohmann::json::parse(*read_file(dir + "/shared/.sys-config.json"));
    EXPECT_EQ(sys["host_api_url"], "unix:" + dir + "/host-api.sock");
    auto vmc = nlohmann::json::parse(sys["vm_config"].get<std::string>());
    EXPECT_EQ(vmc["cpu_count"], 2);
    EXPECT_EQ(vmc["memory_size"], 4096ull << 20);
    EXPECT_EQ(vmc["os_image_hash"], "ab");
    EXPECT_NE(tail_lines(m.log_path(id), 100).find("KMS CVM booting..."), std::string::npos);

    // Crash: kill the runner; the VMM reports it and restarts it.
    pid_t pid = runner_pid(m, id);
    ASSERT_GT(pid, 0);
    ASSERT_EQ(::kill(pid, SIGKILL), 0);
    ASSERT_TRUE(wait_for([&] { pid_t p = runner_pid(m, id); return p > 0 && p != pid && alive(p); }));
    bool saw_exit = false;
    auto after_crash = m.get_info(id);
    for (auto& e : after_crash["info"]["events"])
      if (e["event"] == "vm.exited") saw_exit = true;
    EXPECT_TRUE(saw_exit);
    EXPECT_FALSE(alive(pid));

    // Stop: graceful (runner traps SIGTERM and reports "powering off").
    pid = runner_pid(m, id);
    ASSERT_TRUE(m.stop_vm(id, false).ok());
    EXPECT_EQ(m.get_info(id)["info"]["status"], "stopped");
    EXPECT_FALSE(alive(pid));
    EXPECT_NE(tail_lines(m.log_path(id), 5).find("shutting down"), std::string::npos);
    EXPECT_FALSE(fs::exists(dir + "/host-api.sock"));
    EXPECT_EQ(nlohmann::json::parse(*read_file(dir + "/vm-state.json"))["started"], false);
    ASSERT_TRUE(m.start_vm(id).ok());
    ASSERT_TRUE(wait_for([&] { return runner_pid(m, id) > 0; }));
  }
  // The manager was destroyed with the VM running: a new manager restarts it.
  {
    VmManager m(f.cfg, std::make_unique<FakeBackend>());
    ASSERT_TRUE(m.load().ok());
    ASSERT_TRUE(wait_for([&] { return m.get_info(id)["info"]["status"] == "running" && runner_pid(m, id) > 0; }));
    pid_t pid = runner_pid(m, id);
    ASSERT_TRUE(m.remove_vm(id).ok());
    EXPECT_FALSE(fs::exists(m.vm_dir(id)));
    EXPECT_FALSE(alive(pid));
    EXPECT_FALSE(m.get_info(id)["found"].get<bool>());
  }
}

TEST(VmManager, BootFailureGivesUpAfterMaxRetries) {
  Fixture f;
  f.cfg.cvm.auto_restart.max_retries = 2;
  VmManager m(f.cfg, std::make_unique<FakeBackend>());
  ASSERT_TRUE(m.load().ok());
  auto r = m.create_vm([&] { auto j = f.req("crashy"); j["stopped"] = true; return j; }());
  ASSERT_TRUE(r.ok());
  ASSERT_TRUE(write_file_atomic(m.vm_dir(*r) + "/crash-at-boot", "").ok());
  ASSERT_TRUE(m.start_vm(*r).ok());
  ASSERT_TRUE(wait_for([&] {
    auto cur = m.get_info(*r);
    for (auto& e : cur["info"]["events"])
      if (e["event"] == "vm.restart_gave_up") return true;
    return false;
  }));
  auto info = m.get_info(*r)["info"];
  EXPECT_EQ(info["status"], "exited");
  EXPECT_EQ(info["boot_error"], "simulated failure");
  int exits = 0;
  for (auto& e : info["events"]) exits += e["event"] == "vm.exited";
  EXPECT_EQ(exits, 3);  // first run + 2 restarts
}

TEST(VmManager, LogRotation) {
  Fixture f;
  f.cfg.cvm.log.max_bytes = 1000;
  f.cfg.cvm.log.max_backups = 2;
  VmManager m(f.cfg, std::make_unique<FakeBackend>());
  auto r = m.create_vm([&] { auto j = f.req("logs"); j["stopped"] = true; return j; }());
  ASSERT_TRUE(r.ok());
  std::string log = m.log_path(*r);
  ASSERT_TRUE(write_file_atomic(log, std::string(3000, 'x') + "\nlast line\n").ok());
  ASSERT_TRUE(wait_for([&] { return fs::exists(log + ".1"); }));
  EXPECT_EQ(fs::file_size(log), 0u);
  EXPECT_NE(read_file(log + ".1")->find("last line"), std::string::npos);
  EXPECT_EQ(tail_lines(log + ".1", 1), "last line\n");
}
