// dstack-cvm-sim: simulated CVM runner used by dstack-vmm's "sim" backend (see src/cvmsim/README.md).
//   dstack-cvm-sim run --vm-dir <run_path>/<vm-id>
//   dstack-cvm-sim guest-init --plan /dstack-vm/sim/boot.json --shutdown-fd N   (inside the sandbox)
#include <CLI/CLI.hpp>

#include "base/log.h"
#include "cvmsim/cvm.h"

int main(int argc, char** argv) {
  CLI::App app{"dstack-cvm-sim: runs a simulated dstack CVM in a bubblewrap sandbox"};
  app.require_subcommand(1);
  dstack::cvmsim::RunOptions ro;
  int grace = 8, secure_wait = 5;
  auto* run = app.add_subcommand("run", "run one CVM until SIGTERM (spawned by dstack-vmm)");
  run->add_option("--vm-dir", ro.vm_dir, "the VM's work dir <run_path>/<vm-id>")->required();
  run->add_option("--image-cache", ro.image_cache_dir, "OCI image cache dir (default <run_path>/../sim-images)");
  run->add_option("--platform-dir", ro.platform_dir, "simulated TDX platform dir (default <run_path>/../sim-platform)");
  run->add_option("--bin-dir", ro.bin_dir, "dir of dstack-guest-agent / dstack-tdx-sim (default: this binary's dir)");
  run->add_option("--stop-grace", grace, "seconds to wait for a graceful guest shutdown")->capture_default_str();
  run->add_option("--secure-time-wait", secure_wait, "seconds to wait for time sync when secure_time is on")
      ->capture_default_str();
  std::string plan;
  int shutdown_fd = -1;
  auto* gi = app.add_subcommand("guest-init", "guest init inside the sandbox (internal)");
  gi->add_option("--plan", plan, "boot plan written by `run`")->required();
  gi->add_option("--shutdown-fd", shutdown_fd, "EOF on this fd requests a shutdown")->required();
  CLI11_PARSE(app, argc, argv);
  if (run->parsed()) {
    dstack::init_logging("dstack-cvm-sim");
    ro.stop_grace = std::chrono::seconds(grace);
    ro.secure_time_wait = std::chrono::seconds(secure_wait);
    return dstack::cvmsim::run_vm(ro);
  }
  dstack::init_logging("guest-init");
  return dstack::cvmsim::guest_init(plan, shutdown_fd);
}
