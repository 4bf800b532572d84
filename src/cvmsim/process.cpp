#include "cvmsim/process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <mutex>

namespace dstack::cvmsim {

namespace {
std::mutex g_console_mu;

std::string errno_str() { return std::strerror(errno); }
}  // namespace

Result<Child> spawn(const SpawnOptions& opts) {
  if (opts.argv.empty()) return make_error("spawn: empty argv");
  int pipefd[2] = {-1, -1};
  if (opts.pipe_output && pipe2(pipefd, O_CLOEXEC) != 0) return make_error("spawn: pipe: " + errno_str());
  // Prepare everything that allocates before fork.
  std::vector<char*> argv;
  for (const auto& a : opts.argv) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  std::vector<char*> envp;
  if (opts.env) {
    for (const auto& e : *opts.env) envp.push_back(const_cast<char*>(e.c_str()));
    envp.push_back(nullptr);
  }
  int errpipe[2];
  if (pipe2(errpipe, O_CLOEXEC) != 0) return make_error("spawn: pipe: " + errno_str());
  pid_t pid = fork();
  if (pid < 0) return make_error("spawn: fork: " + errno_str());
  if (pid == 0) {
    if (opts.new_process_group) setpgid(0, 0);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    signal(SIGPIPE, SIG_DFL);
    int devnull = open("/dev/null", O_RDONLY);
    if (devnull >= 0) dup2(devnull, 0);
    if (opts.pipe_output) {
      dup2(pipefd[1], 1);
      dup2(pipefd[1], 2);
    }
    for (int fd : opts.keep_fds) {
      int flags = fcntl(fd, F_GETFD);
      if (flags >= 0) fcntl(fd, F_SETFD, flags & ~FD_CLOEXEC);
    }
    if (!opts.cwd.empty() && chdir(opts.cwd.c_str()) != 0) {
      int e = errno;
      (void)!write(errpipe[1], &e, sizeof e);
      _exit(127);
    }
    if (opts.env) {
      execvpe(argv[0], argv.data(), envp.data());
    } else {
      execvp(argv[0], argv.data());
    }
    int e = errno;
    (void)!write(errpipe[1], &e, sizeof e);
    _exit(127);
  }
  if (opts.new_process_group) setpgid(pid, pid);  // avoid the race with the child's own setpgid
  close(errpipe[1]);
  int child_errno = 0;
  ssize_t n;
  do { n = read(errpipe[0], &child_errno, sizeof child_errno); } while (n < 0 && errno == EINTR);
  close(errpipe[0]);
  if (opts.pipe_output) close(pipefd[1]);
  if (n == sizeof child_errno) {
    waitpid(pid, nullptr, 0);
    if (opts.pipe_output) close(pipefd[0]);
    return make_error("cannot start " + opts.argv[0] + ": " + std::strerror(child_errno));
  }
  return Child{pid, opts.pipe_output ? pipefd[0] : -1};
}

std::optional<int> wait_for(pid_t pid, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    int st = 0;
    pid_t r = waitpid(pid, &st, WNOHANG);
    if (r == pid) return st;
    if (r < 0 && errno != EINTR) return 0;  // already reaped or not our child
    if (std::chrono::steady_clock::now() >= deadline) return std::nullopt;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

int terminate(pid_t pid, std::chrono::milliseconds grace, bool group) {
  if (pid <= 0) return 0;
  kill(group ? -pid : pid, SIGTERM);
  if (group) kill(pid, SIGTERM);
  if (auto st = wait_for(pid, grace)) {
    if (group) kill(-pid, SIGKILL);  // stragglers in the group
    return *st;
  }
  if (group) kill(-pid, SIGKILL);
  kill(pid, SIGKILL);
  int st = 0;
  while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
  return st;
}

std::string describe_status(int st) {
  if (WIFEXITED(st)) return "exit " + std::to_string(WEXITSTATUS(st));
  if (WIFSIGNALED(st)) return "signal " + std::to_string(WTERMSIG(st));
  return "status " + std::to_string(st);
}

Result<std::string> run_capture(const std::vector<std::string>& argv, std::chrono::milliseconds timeout) {
  SpawnOptions o;
  o.argv = argv;
  o.pipe_output = true;
  TRY_ASSIGN(Child c, spawn(o));
  std::string out;
  auto deadline = std::chrono::steady_clock::now() + timeout;
  bool timed_out = false;
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      timed_out = true;
      break;
    }
    pollfd p{c.out_fd, POLLIN, 0};
    int r = poll(&p, 1, static_cast<int>(std::min<int64_t>(left.count(), 1000)));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) continue;
    char buf[4096];
    ssize_t n = read(c.out_fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    if (out.size() < (1u << 20)) out.append(buf, static_cast<size_t>(n));
  }
  close(c.out_fd);
  int st = timed_out ? terminate(c.pid, std::chrono::milliseconds(500)) : wait_for(c.pid, std::chrono::seconds(5)).value_or(-1);
  auto tail = out.size() > 2000 ? out.substr(out.size() - 2000) : out;
  while (!tail.empty() && (tail.back() == '\n' || tail.back() == ' ')) tail.pop_back();
  if (timed_out)
    return make_error(argv[0] + " timed out after " + std::to_string(timeout.count()) + " ms: " + tail);
  if (st == -1) {
    terminate(c.pid, std::chrono::milliseconds(200));
    return make_error(argv[0] + " did not exit after closing its output");
  }
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
    return make_error(argv[0] + " failed (" + describe_status(st) + "): " + tail);
  return out;
}

void console_line(const std::string& line) {
  std::lock_guard<std::mutex> lk(g_console_mu);
  std::string s = line + "\n";
  const char* p = s.data();
  size_t left = s.size();
  while (left > 0) {
    ssize_t n = write(1, p, left);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    p += n;
    left -= static_cast<size_t>(n);
  }
}

std::thread relay_lines(int fd, std::string prefix) {
  return std::thread([fd, prefix = std::move(prefix)] {
    std::string pending;
    char buf[4096];
    for (;;) {
      ssize_t n = read(fd, buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      pending.append(buf, static_cast<size_t>(n));
      size_t pos;
      while ((pos = pending.find('\n')) != std::string::npos) {
        console_line(prefix + "| " + pending.substr(0, pos));
        pending.erase(0, pos + 1);
      }
      if (pending.size() > 16384) {  // very long line without newline: flush it
        console_line(prefix + "| " + pending);
        pending.clear();
      }
    }
    if (!pending.empty()) console_line(prefix + "| " + pending);
    close(fd);
  });
}

std::string self_exe() {
  std::error_code ec;
  auto p = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? std::string() : p.string();
}

std::string self_dir() { return std::filesystem::path(self_exe()).parent_path().string(); }

void install_stop_handlers(void (*handler)(int)) {
  struct sigaction sa {};
  sa.sa_handler = handler;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);
}

}  // namespace dstack::cvmsim
