// [cvm] backend = "qemu": implements the dstack-vmm Backend interface (vmm/backend.h) with the QEMU command line of
// spec §10.4. Per start it reads <vm-dir>/vm-manifest.json, the image's metadata.json, computes MR_CONFIG_ID from
// shared/app-compose.json (§8.5), assigns a vsock CID (stable per VM id until the VM is removed), creates hda.img
// with qemu-img when missing, and returns the QEMU argv (QEMU's own stdout/stderr -> <vm-dir>/stdout.log; the
// guest console is serial.log via -chardev logfile). dstack-vmm's make_backend() builds it for backend "qemu";
// start_services() starts the vsock host-API relay ([host_api] port, default 10000) that pipes each guest
// connection to its VM's host-api.sock by peer CID; guests get host_api_url = "vsock://2:<port>/api".
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "vmm/backend.h"
#include "vmm/qemu/cmdline.h"
#include "vmm/qemu/vsock_relay.h"

namespace dstack::vmm::qemu {

// MR_CONFIG_ID input from the VM's files: compose_hash = SHA256(shared/app-compose.json bytes), app_id from the
// manifest (hex), key_provider / key_provider_id from the compose (legacy kms_enabled / local_key_provider_enabled).
Result<MrConfigInput> mr_config_input_from_files(const std::string& vm_dir, const std::string& manifest_app_id_hex);

class QemuBackend : public Backend {
 public:
  explicit QemuBackend(QemuConfig cfg) : cfg_(std::move(cfg)), pool_(cfg_.cid_start, cfg_.cid_pool_size) {}
  ~QemuBackend() override;
  std::string name() const override { return "qemu"; }
  Status check() const override;  // QEMU binary runs; for platform tdx also the doctor's TDX checks
  Result<LaunchSpec> launch_spec(const LaunchContext& ctx) const override;
  std::string guest_host_api_url(const LaunchContext& ctx) const override;  // vsock://2:<host_api_port>/api
  // Starts the vsock relay (when cfg.vsock); where AF_VSOCK is unavailable it logs a warning saying why and that
  // QEMU guests cannot reach the host API, and returns Ok (VMs can still run).
  Status start_services(const std::string& run_path) override;
  void stop_services() override;
  void vm_removed(const std::string& vm_id) override;  // releases the VM's CID
  // The VM that owns `cid` (for HostApiRelay's resolver), or "" if none.
  std::string vm_of_cid(uint32_t cid) const;
  // <run_path>/<vm>/host-api.sock of the VM owning `cid`, if that socket exists (the relay's resolver).
  std::optional<std::string> host_api_socket_of_cid(uint32_t cid) const;
  bool relay_running() const { return relay_ != nullptr; }

 private:
  Result<uint32_t> cid_for(const std::string& vm_id) const;
  QemuConfig cfg_;
  std::string run_path_;
  std::unique_ptr<HostApiRelay> relay_;
  mutable CidPool pool_;
  mutable std::mutex mu_;
  mutable std::map<std::string, uint32_t> cids_;
};

std::unique_ptr<Backend> make_qemu_backend(const QemuConfig& cfg);

}  // namespace dstack::vmm::qemu
