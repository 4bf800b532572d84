// [cvm] backend = "qemu": implements the dstack-vmm Backend interface (vmm/backend.h) with the QEMU command line of
// spec §10.4. Per start it reads <vm-dir>/vm-manifest.json, the image's metadata.json, computes MR_CONFIG_ID from
// shared/app-compose.json (§8.5), assigns a vsock CID (stable per VM id for this process), creates hda.img with
// qemu-img when missing, and returns the QEMU argv. Wiring left to dstack-vmm: make_backend() must call
// make_qemu_backend() for backend "qemu" (QemuConfig from apply_qemu_toml over the vmm.toml text), and guests reach
// the host API through HostApiRelay (vsock_relay.h) rather than host-api.sock directly.
#pragma once

#include <map>
#include <memory>
#include <mutex>

#include "vmm/backend.h"
#include "vmm/qemu/cmdline.h"

namespace dstack::vmm::qemu {

// MR_CONFIG_ID input from the VM's files: compose_hash = SHA256(shared/app-compose.json bytes), app_id from the
// manifest (hex), key_provider / key_provider_id from the compose (legacy kms_enabled / local_key_provider_enabled).
Result<MrConfigInput> mr_config_input_from_files(const std::string& vm_dir, const std::string& manifest_app_id_hex);

class QemuBackend : public Backend {
 public:
  explicit QemuBackend(QemuConfig cfg) : cfg_(std::move(cfg)), pool_(cfg_.cid_start, cfg_.cid_pool_size) {}
  std::string name() const override { return "qemu"; }
  Status check() const override;  // QEMU binary runs; for platform tdx also the doctor's TDX checks
  Result<LaunchSpec> launch_spec(const LaunchContext& ctx) const override;
  // The VM that owns `cid` (for HostApiRelay's resolver), or "" if none.
  std::string vm_of_cid(uint32_t cid) const;

 private:
  Result<uint32_t> cid_for(const std::string& vm_id) const;
  QemuConfig cfg_;
  mutable CidPool pool_;
  mutable std::mutex mu_;
  mutable std::map<std::string, uint32_t> cids_;
};

std::unique_ptr<Backend> make_qemu_backend(const QemuConfig& cfg);

}  // namespace dstack::vmm::qemu
