// Shared helpers of the dstack_vmm tests: temp dirs, polling, free ports, child processes killed by PID,
// a minimal backend whose "CVM" just sleeps until SIGTERM, and a VMM config rooted in a temp dir.
#pragma once

#include <gtest/gtest.h>

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/fs.h"
#include "vmm/backend.h"
#include "vmm/compose.h"
#include "vmm/config.h"

namespace vmmtest {

namespace fs = std::filesystem;

struct TempDir {
  std::string path;
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "vmm-test-XXXXXX").string();
    char* p = ::mkdtemp(tmpl.data());
    EXPECT_NE(p, nullptr);
    path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

inline bool wait_for(const std::function<bool()>& pred, int ms = 10000) {
  auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
  while (std::chrono::steady_clock::now() < end) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return pred();
}

// A loopback TCP port that was free a moment ago.
inline uint16_t free_port() {
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

// A child process with stdout+stderr to `log`; killed (SIGKILL, by PID) and reaped on destruction.
struct Child {
  pid_t pid = -1;
  int status = -1;
  std::string log;
  Child() = default;
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  ~Child() { kill(); }
  void spawn(const std::vector<std::string>& argv, const std::string& log_path,
             const std::map<std::string, std::string>& env_overrides = {}) {
    log = log_path;
    std::vector<std::string> envs;
    for (char** e = environ; *e; ++e) {
      std::string kv = *e;
      if (!env_overrides.count(kv.substr(0, kv.find('=')))) envs.push_back(kv);
    }
    for (const auto& [k, v] : env_overrides) envs.push_back(k + "=" + v);
    std::vector<char*> av, ev;
    std::vector<std::string> args = argv;
    for (auto& a : args) av.push_back(a.data());
    av.push_back(nullptr);
    for (auto& e : envs) ev.push_back(e.data());
    ev.push_back(nullptr);
    pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      int fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      int nul = ::open("/dev/null", O_RDONLY);
      ::dup2(nul, 0);
      ::dup2(fd, 1);
      ::dup2(fd, 2);
      ::execve(av[0], av.data(), ev.data());
      ::_exit(127);
    }
  }
  // Waits for exit; returns the exit code, or -1 (and kills the child) on timeout.
  int wait_exit(int timeout_ms = 30000) {
    auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    while (pid > 0 && std::chrono::steady_clock::now() < end) {
      if (::waitpid(pid, &status, WNOHANG) == pid) {
        pid = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    kill();
    return -1;
  }
  std::string output() const { return dstack::read_file(log).value_or(""); }
  void kill() {
    if (pid > 0) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
      pid = -1;
    }
  }
};

// Runs a program to completion (stdout+stderr captured); {exit code, output}.
inline std::pair<int, std::string> run(const std::vector<std::string>& argv, const std::string& log_path,
                                       const std::map<std::string, std::string>& env = {}, int timeout_ms = 30000) {
  Child c;
  c.spawn(argv, log_path, env);
  int rc = c.wait_exit(timeout_ms);
  return {rc, c.output()};
}

// The "CVM" is a shell that sleeps until SIGTERM (the VMM's host API socket exists while it runs).
class SleepBackend : public dstack::vmm::Backend {
 public:
  std::string name() const override { return "sleep"; }
  dstack::Status check() const override { return dstack::Status::Ok(); }
  dstack::Result<dstack::vmm::LaunchSpec> launch_spec(const dstack::vmm::LaunchContext& ctx) const override {
    dstack::vmm::LaunchSpec s;
    s.argv = {"/bin/sh", "-c", "echo guest up; trap 'echo bye; exit 0' TERM; while :; do sleep 0.2 & wait $!; done"};
    s.cwd = ctx.vm_dir;
    return s;
  }
};

inline dstack::vmm::ComposeOptions compose_options(const std::string& image = "nginx:latest") {
  dstack::vmm::ComposeOptions o;
  o.name = "app";
  o.docker_compose = "services:\n  app:\n    image: " + image + "\n";
  o.kms = true;
  return o;
}

// VMM config rooted in `root`, with one image "img-1" (metadata.json, digest.txt).
inline dstack::vmm::VmmConfig vmm_config(const std::string& root) {
  dstack::vmm::VmmConfig cfg;
  cfg.run_path = root + "/run";
  cfg.image.path = root + "/images";
  cfg.cvm.port_mapping.range = {{"tcp", 1024, 65535}};
  cfg.cvm.stop_timeout_secs = 5;
  cfg.cvm.auto_restart.enabled = false;
  cfg.cvm.log.check_interval_secs = 0.2;
  EXPECT_TRUE(dstack::make_dirs(cfg.image.path + "/img-1").ok());
  EXPECT_TRUE(dstack::write_file_atomic(cfg.image.path + "/img-1/metadata.json",
                                        R"({"version":"0.5.5","kernel":"bzImage","initrd":"initramfs.cpio.gz",)"
                                        R"("cmdline":"console=ttyS0","is_dev":true})")
                  .ok());
  EXPECT_TRUE(dstack::write_file_atomic(cfg.image.path + "/img-1/digest.txt", "c0ffee\n").ok());
  return cfg;
}

inline nlohmann::json create_request(const std::string& name, const std::string& compose) {
  return nlohmann::json{{"name", name},       {"image", "img-1"},         {"compose_file", compose},
                        {"vcpu", 1},          {"memory", 512},            {"disk_size", 1},
                        {"ports", nlohmann::json::array()}};
}

}  // namespace vmmtest
