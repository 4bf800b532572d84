// Supervisor-friendly QEMU launch: prepares the work dir (§10.3: shared/, hda.img via qemu-img), spawns QEMU in its
// own process group with stdout/stderr appended to <wd>/stdout.log / <wd>/stderr.log, writes <wd>/qemu.pid, and
// tears it down (SIGTERM, then SIGKILL of the group after a grace period). The dstack-vmm supervisor can instead
// just exec build_qemu_argv() itself; this class is what the boot test and stand-alone use rely on.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <string>
#include <vector>

#include "base/result.h"
#include "vmm/qemu/cmdline.h"

namespace dstack::vmm::qemu {

// Runs argv (argv[0] looked up in PATH) to completion with a timeout; returns its combined output or an error
// naming the command, exit status and output.
Result<std::string> run_command(const std::vector<std::string>& argv, std::chrono::milliseconds timeout);

// Creates <vm_dir>/shared and, if absent, <vm_dir>/hda.img (qemu-img create -f qcow2 [...] <disk>G).
Status prepare_work_dir(const QemuConfig& cfg, const ImageMetadata& image, const QemuVmSpec& vm);

class QemuProcess {
 public:
  QemuProcess() = default;
  QemuProcess(const QemuProcess&) = delete;
  QemuProcess& operator=(const QemuProcess&) = delete;
  QemuProcess(QemuProcess&& o) noexcept;
  QemuProcess& operator=(QemuProcess&& o) noexcept;
  ~QemuProcess();  // stop()s a still-running process

  // Spawns argv with cwd = vm_dir. Fails if the binary cannot be executed or exits within the first 200 ms
  // (then the error quotes stderr.log).
  static Result<QemuProcess> spawn(const std::vector<std::string>& argv, const std::string& vm_dir);

  pid_t pid() const { return pid_; }
  bool running();  // reaps the child if it exited
  std::optional<int> exit_status() const { return exit_status_; }  // waitpid status once reaped
  // SIGTERM to the group, wait up to `grace`, then SIGKILL; removes qemu.pid. Idempotent.
  Status stop(std::chrono::milliseconds grace = std::chrono::seconds(5));

 private:
  pid_t pid_ = -1;
  std::string vm_dir_;
  std::optional<int> exit_status_;
};

// Waits until `needle` appears in `file` (e.g. <wd>/serial.log) or the deadline passes / `proc` exits.
Status wait_for_log(const std::string& file, const std::string& needle, std::chrono::milliseconds timeout,
                    QemuProcess* proc = nullptr);

}  // namespace dstack::vmm::qemu
