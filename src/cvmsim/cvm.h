// The simulated CVM: `dstack-cvm-sim run` (host side, one process per running VM, spawned by dstack-vmm) and
// `dstack-cvm-sim guest-init` (the guest's init inside the per-VM bubblewrap sandbox). See README.md.
//
// VM dir layout owned by the simulator (besides the VMM's files, see src/vmm/backend.h):
//   <vm-dir>/volumes/<name>/        named docker volumes (persist across container and CVM restarts)
//   <vm-dir>/sim/boot.json          boot plan written by `run`, read by guest-init
//   <vm-dir>/sim/run/               the guest's /run (wiped at every boot): dstack.sock, log/dstack/...
//   <vm-dir>/sim/dstack/            the guest's /dstack (.host-shared copy, dstack.toml)
//   <vm-dir>/sim/containers/<svc>/  rootfs (unpacked image), rootfs.digest, hosts
//   <vm-dir>/sim/vsock/             unix sockets crossing the namespace boundary: tcp-<vm_port>.sock (port
//                                   mappings, host listens on TCP), kms-<i>.sock (KMS relays, guest listens on TCP)
//   <vm-dir>/sim/trust/             root-ca.pem, tdx-collateral.json, sgx-collateral.json of the simulated platform
//   <vm-dir>/sim/etc-hosts          /etc/hosts overlay mapping KMS host names to their in-VM relay addresses
// Per host (next to the VMM's run_path): ../sim-images/oci (OCI layout cache), ../sim-platform (simulated
// TDX platform, shared by all VMs so quotes chain to one simulated root).
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/result.h"
#include "cvmsim/config.h"
#include "cvmsim/image.h"

namespace dstack::cvmsim {

struct RunOptions {
  std::string vm_dir;
  std::string image_cache_dir;  // default <vm-dir>/../../sim-images, env DSTACK_SIM_IMAGE_CACHE
  std::string platform_dir;     // default <vm-dir>/../../sim-platform, env DSTACK_SIM_PLATFORM_DIR
  std::string bin_dir;          // where dstack-guest-agent / dstack-tdx-sim live; default: this binary's dir
  std::chrono::seconds secure_time_wait{5};
  std::chrono::seconds stop_grace{8};  // SIGTERM -> sandbox gone
};

// Runs the VM until SIGTERM/SIGINT (graceful: exit 0) or until the guest dies (exit code != 0).
int run_vm(const RunOptions& opts);

// Inside the sandbox. `plan_path` = /dstack-vm/sim/boot.json; shutdown_fd: EOF on it = shut down.
int guest_init(const std::string& plan_path, int shutdown_fd);

// Paths inside the sandbox.
inline constexpr const char* kGuestVmDir = "/dstack-vm";            // read-only view of <vm-dir>
inline constexpr const char* kGuestVsockDir = "/dstack-vm/sim/vsock";
inline constexpr const char* kGuestHostShared = "/dstack/.host-shared";
inline constexpr const char* kGuestAgentSocket = "/var/run/dstack.sock";
inline constexpr const char* kGuestPlatformDir = "/dstack-platform";

}  // namespace dstack::cvmsim
