// QEMU command line of a dstack CVM (spec §10.4), the qcow2 data disk (§10.3), MR_CONFIG_ID (§8.5) and the
// [cvm] keys of vmm.toml that drive them (§10.2). Pure functions: nothing here touches the file system except
// load_image_metadata / load_qemu_config / read_vm_manifest.
#pragma once

#include <cstdint>
#include <mutex>
#include <set>
#include <optional>
#include <string>
#include <vector>

#include "base/bytes.h"
#include "base/result.h"

namespace dstack::vmm::qemu {

// [cvm] keys relevant to QEMU (spec §10.2) plus `accel` (ours: "kvm" (default, -cpu host) | "tcg" (software
// emulation, -cpu max; only with platform "none", for tests on hosts without KVM)).
struct QemuConfig {
  std::string qemu_path;            // "" -> qemu-system-x86_64 in PATH
  std::string qemu_img_path;        // "" -> qemu-img in PATH (ours)
  std::string platform = "tdx";     // "tdx" | "none" ("auto" resolves to tdx; amd-sev-snp is not supported)
  std::string accel = "kvm";        // "kvm" | "tcg"
  bool qmp_socket = false;
  bool use_mrconfigid = true;
  bool qemu_hotplug_off = false;    // -> -global ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off
  uint64_t qemu_pci_hole64_size = 0;  // non-zero -> -global q35-pcihost.pci-hole64-size=0x..
  uint32_t cid_start = 1000;
  uint32_t cid_pool_size = 1000;
  uint16_t qgs_port = 4050;
  std::string host_share_mode = "9p";  // "9p" | "vvfat"
  bool vsock = true;                // ours: false drops -device vhost-vsock-pci (hosts without /dev/vhost-vsock)
  uint32_t host_api_port = 10000;   // [host_api] port: vsock port of the VMM host API (guest: vsock://2:<port>/api)
  struct Networking {
    std::string mode = "user";      // "user" | "bridge"
    std::string net = "10.0.2.0/24";
    std::string dhcp_start = "10.0.2.10";
    bool restrict = false;
    std::string bridge = "virbr0";
  } networking;
  struct Product {
    std::string sys_vendor = "dstack";
    std::string product_name = "dstack";
  } product;
};

// Applies the [cvm] table (and [cvm.networking], [cvm.product], [host_api] port) of a vmm.toml document over `cfg`.
// Unknown keys are ignored; wrong types are errors naming the key.
Status apply_qemu_toml(QemuConfig& cfg, const std::string& toml_text, const std::string& origin);

// Image directory <image.path>/<name>/metadata.json (spec §10.2). Paths are made absolute (relative to the dir);
// empty / absent entries stay empty.
struct ImageMetadata {
  std::string dir;
  std::string cmdline;
  std::string kernel;
  std::string initrd;
  std::string rootfs;
  std::string bios;
  std::string hda;        // optional base disk (qcow2 backing file)
  bool shared_ro = false;
  std::string version;
  bool is_dev = false;
  std::string digest;     // digest.txt (hex os_image_hash), "" if absent
};
Result<ImageMetadata> load_image_metadata(const std::string& image_dir);

struct PortForward {
  std::string protocol = "tcp";   // "tcp" | "udp"
  std::string host_address = "127.0.0.1";
  uint16_t host_port = 0;
  uint16_t vm_port = 0;
};

// One VM start, as the command line needs it (from vm-manifest.json + the VMM's decisions).
struct QemuVmSpec {
  std::string vm_id;              // UUID; the NIC MAC is derived from it
  std::string vm_dir;             // absolute work dir (§10.3)
  uint32_t vcpu = 1;
  uint32_t memory_mb = 1024;
  uint32_t disk_gb = 20;
  std::vector<PortForward> ports;
  std::vector<std::string> gpus;     // PCI slots, e.g. "0000:18:00.0"
  std::vector<std::string> volumes;  // raw read-only volume images
  bool no_tee = false;
  std::optional<uint32_t> cid;       // vsock guest CID (required when cfg.vsock)
  Bytes mr_config_id;                // 48 bytes or empty (then 48 zero bytes are passed)
};

// The full argv (argv[0] = QEMU binary) in the order of spec §10.4. Errors name the offending field.
Result<std::vector<std::string>> build_qemu_argv(const QemuConfig& cfg, const ImageMetadata& image,
                                                 const QemuVmSpec& vm);

// "52:54:00:xx:xx:xx" from SHA256(vm_id)[0..3] (locally stable per VM).
std::string mac_from_vm_id(const std::string& vm_id);

// The tdx-guest object JSON: {"qom-type":"tdx-guest","id":"tdx","mrconfigid":"<b64>","quote-generation-socket":
// {"type":"vsock","cid":"2","port":"<qgs_port>"}}.
std::string tdx_guest_object(ByteView mr_config_id48, uint16_t qgs_port);

// qemu-img create -f qcow2 [-o backing_file=<b>,backing_fmt=qcow2] <hda> <disk>G
std::vector<std::string> qemu_img_create_argv(const QemuConfig& cfg, const std::string& hda_path, uint32_t disk_gb,
                                              const std::string& backing_file = "");

// MR_CONFIG_ID (spec §8.5).
struct MrConfigInput {
  Bytes compose_hash;              // 32
  Bytes app_id;                    // 20 (may be empty for V1)
  std::string key_provider;        // "none" | "kms" | "local" | "tpm"
  Bytes key_provider_id;           // may be empty
  Bytes instance_id;               // optional (V3)
};
Bytes mr_config_id_v1(ByteView compose_hash32);  // 0x01 || compose_hash || 15 zeros
// V3 document: canonical (JCS) JSON {compose_hash, key_provider, version:3[, app_id][, key_provider_id]
// [, instance_id]} with hex values.
std::string mr_config_v3_json(const MrConfigInput& in);
Bytes mr_config_id_v3(const MrConfigInput& in);  // 0x03 || SHA256("dstack-mr-config-v3:" || 0x00 || json) || 15 zeros
// VMM choice: no TEE or !use_mrconfigid -> empty (not bound); key_provider_id set -> V3; else V1.
Result<Bytes> choose_mr_config_id(bool no_tee, bool use_mrconfigid, const MrConfigInput& in);

// Parses what the QEMU backend needs out of <vm-dir>/vm-manifest.json (spec §10.3: id, vcpu, memory, disk_size,
// port_map[{address,protocol,from,to}], gpus{gpus[{slot}]}, no_tee, volumes[{source}]). vm_dir/cid/mr_config_id
// are left for the caller.
Result<QemuVmSpec> vm_spec_from_manifest_json(const std::string& manifest_json);

// Thread-safe vsock CID pool [cid_start, cid_start + pool_size).
class CidPool {
 public:
  CidPool(uint32_t start, uint32_t size) : start_(start), size_(size) {}
  Result<uint32_t> allocate();
  Status reserve(uint32_t cid);  // e.g. a running VM found at startup
  void release(uint32_t cid);
 private:
  uint32_t start_, size_;
  std::set<uint32_t> used_;
  std::mutex mu_;
};

}  // namespace dstack::vmm::qemu
