#include "vmm/qemu/process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <cstring>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <filesystem>
#include <thread>

#include "base/fs.h"

namespace dstack::vmm::qemu {
namespace {

using Clock = std::chrono::steady_clock;

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : " ") + x;
  return s;
}

std::string describe_status(int st) {
  if (WIFEXITED(st)) return "exit code " + std::to_string(WEXITSTATUS(st));
  if (WIFSIGNALED(st)) return "signal " + std::to_string(WTERMSIG(st));
  return "status " + std::to_string(st);
}

std::vector<char*> c_argv(const std::vector<std::string>& argv) {
  std::vector<char*> v;
  for (const auto& s : argv) v.push_back(const_cast<char*>(s.c_str()));
  v.push_back(nullptr);
  return v;
}

std::string tail(const std::string& s, size_t n = 2000) { return s.size() > n ? s.substr(s.size() - n) : s; }

}  // namespace

Result<std::string> run_command(const std::vector<std::string>& argv, std::chrono::milliseconds timeout) {
  if (argv.empty()) return make_error("run_command: empty argv");
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return make_error("pipe failed");
  auto args = c_argv(argv);
  pid_t pid = ::fork();
  if (pid < 0) {
    ::close(fds[0]);
    ::close(fds[1]);
    return make_error("fork failed");
  }
  if (pid == 0) {
    ::setpgid(0, 0);
    int devnull = ::open("/dev/null", O_RDONLY);
    if (devnull >= 0) ::dup2(devnull, 0);
    ::dup2(fds[1], 1);
    ::dup2(fds[1], 2);
    ::execvp(args[0], args.data());
    std::string msg = "cannot execute " + argv[0] + ": " + std::strerror(errno) + "\n";
    (void)!::write(2, msg.data(), msg.size());
    ::_exit(127);
  }
  ::close(fds[1]);
  std::string out;
  auto deadline = Clock::now() + timeout;
  bool timed_out = false;
  while (true) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) {
      timed_out = true;
      break;
    }
    pollfd p{fds[0], POLLIN, 0};
    int r = ::poll(&p, 1, static_cast<int>(std::min<long long>(left, 200)));
    if (r < 0 && errno != EINTR) break;
    if (r > 0) {
      char buf[4096];
      ssize_t n = ::read(fds[0], buf, sizeof buf);
      if (n <= 0) break;
      out.append(buf, static_cast<size_t>(n));
    }
  }
  ::close(fds[0]);
  int st = 0;
  if (timed_out) {
    ::kill(-pid, SIGKILL);
    ::waitpid(pid, &st, 0);
    return make_error("`" + join(argv) + "` timed out after " + std::to_string(timeout.count()) + " ms");
  }
  while (::waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
    return make_error("`" + join(argv) + "` failed (" + describe_status(st) + "): " + tail(out));
  return out;
}

Status prepare_work_dir(const QemuConfig& cfg, const ImageMetadata& image, const QemuVmSpec& vm) {
  TRY(make_dirs(vm.vm_dir + "/shared", 0755));
  std::string hda = vm.vm_dir + "/hda.img";
  if (file_exists(hda)) return Status::Ok();
  auto r = run_command(qemu_img_create_argv(cfg, hda, vm.disk_gb, image.hda), std::chrono::seconds(60));
  if (!r.ok()) return r.error().wrap("creating the data disk " + hda + " (is qemu-utils installed?)");
  return Status::Ok();
}

QemuProcess::QemuProcess(QemuProcess&& o) noexcept
    : pid_(std::exchange(o.pid_, -1)), vm_dir_(std::move(o.vm_dir_)), exit_status_(o.exit_status_) {}

QemuProcess& QemuProcess::operator=(QemuProcess&& o) noexcept {
  if (this != &o) {
    (void)stop();
    pid_ = std::exchange(o.pid_, -1);
    vm_dir_ = std::move(o.vm_dir_);
    exit_status_ = o.exit_status_;
  }
  return *this;
}

QemuProcess::~QemuProcess() { (void)stop(std::chrono::seconds(2)); }

Result<QemuProcess> QemuProcess::spawn(const std::vector<std::string>& argv, const std::string& vm_dir) {
  if (argv.empty()) return make_error("QEMU argv is empty");
  std::string out_log = vm_dir + "/stdout.log", err_log = vm_dir + "/stderr.log";
  int out = ::open(out_log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  int err = ::open(err_log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (out < 0 || err < 0) {
    if (out >= 0) ::close(out);
    if (err >= 0) ::close(err);
    return make_error("cannot open " + out_log + " / " + err_log + ": " + std::strerror(errno));
  }
  off_t err_start = ::lseek(err, 0, SEEK_END);
  auto args = c_argv(argv);
  pid_t pid = ::fork();
  if (pid < 0) {
    ::close(out);
    ::close(err);
    return make_error("fork failed");
  }
  if (pid == 0) {
    ::setsid();
    if (::chdir(vm_dir.c_str()) != 0) ::_exit(126);
    int devnull = ::open("/dev/null", O_RDONLY);
    if (devnull >= 0) ::dup2(devnull, 0);
    ::dup2(out, 1);
    ::dup2(err, 2);
    ::execvp(args[0], args.data());
    std::string msg = "cannot execute " + argv[0] + ": " + std::strerror(errno) + "\n";
    (void)!::write(2, msg.data(), msg.size());
    ::_exit(127);
  }
  ::close(out);
  ::close(err);
  QemuProcess p;
  p.pid_ = pid;
  p.vm_dir_ = vm_dir;
  TRY(write_file_atomic(vm_dir + "/qemu.pid", std::to_string(pid) + "\n", 0644));
  spdlog::info("qemu: started pid {} in {}", pid, vm_dir);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  if (!p.running()) {
    std::string errtext = read_file(err_log).value_or("");
    if (err_start > 0 && static_cast<size_t>(err_start) <= errtext.size()) errtext = errtext.substr(err_start);
    std::string st = describe_status(*p.exit_status_);
    std::error_code ec;
    std::filesystem::remove(vm_dir + "/qemu.pid", ec);
    p.pid_ = -1;
    return make_error("QEMU exited at once (" + st + "): " + tail(errtext));
  }
  return p;
}

bool QemuProcess::running() {
  if (pid_ <= 0 || exit_status_) return false;
  int st = 0;
  pid_t r = ::waitpid(pid_, &st, WNOHANG);
  if (r == pid_) {
    exit_status_ = st;
    return false;
  }
  return r == 0;
}

Status QemuProcess::stop(std::chrono::milliseconds grace) {
  if (pid_ <= 0) return Status::Ok();
  if (running()) {
    ::kill(-pid_, SIGTERM);
    auto deadline = Clock::now() + grace;
    while (running() && Clock::now() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    if (running()) {
      spdlog::warn("qemu: pid {} ignored SIGTERM for {} ms, sending SIGKILL", pid_, grace.count());
      ::kill(-pid_, SIGKILL);
      int st = 0;
      while (::waitpid(pid_, &st, 0) < 0 && errno == EINTR) {
      }
      exit_status_ = st;
    }
  }
  if (!vm_dir_.empty()) {
    std::error_code ec;
    std::filesystem::remove(vm_dir_ + "/qemu.pid", ec);
  }
  spdlog::info("qemu: pid {} stopped ({})", pid_, exit_status_ ? describe_status(*exit_status_) : "unknown");
  pid_ = -1;
  return Status::Ok();
}

Status wait_for_log(const std::string& file, const std::string& needle, std::chrono::milliseconds timeout,
                    QemuProcess* proc) {
  auto deadline = Clock::now() + timeout;
  while (Clock::now() < deadline) {
    auto text = read_file(file);
    if (text.ok() && text->find(needle) != std::string::npos) return Status::Ok();
    if (proc && !proc->running())
      return make_error("QEMU exited before \"" + needle + "\" appeared in " + file);
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  return make_error("\"" + needle + "\" did not appear in " + file + " within " + std::to_string(timeout.count()) +
                    " ms");
}

}  // namespace dstack::vmm::qemu
