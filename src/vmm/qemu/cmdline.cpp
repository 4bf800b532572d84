#include "vmm/qemu/cmdline.h"

#include <nlohmann/json.hpp>
#include <toml++/toml.h>

#include <cstdio>
#include <filesystem>

#include "base/fs.h"
#include "crypto/hash.h"

namespace dstack::vmm::qemu {
namespace {

namespace fs = std::filesystem;

template <typename T>
Status set_value(const toml::node_view<const toml::node>& n, T& out, const std::string& key,
                 const std::string& origin) {
  if (!n) return Status::Ok();
  if constexpr (std::is_same_v<T, bool>) {
    if (auto v = n.value_exact<bool>()) { out = *v; return Status::Ok(); }
  } else if constexpr (std::is_same_v<T, std::string>) {
    if (auto v = n.value_exact<std::string>()) { out = *v; return Status::Ok(); }
  } else {
    if (auto v = n.value_exact<int64_t>()) {
      if (*v < 0 || static_cast<uint64_t>(*v) > std::numeric_limits<T>::max())
        return make_error(origin + ": [cvm] " + key + " = " + std::to_string(*v) + " is out of range");
      out = static_cast<T>(*v);
      return Status::Ok();
    }
  }
  return make_error(origin + ": [cvm] " + key + " has the wrong type");
}

std::string abs_in(const std::string& dir, const std::string& p) {
  if (p.empty()) return "";
  if (!p.empty() && p[0] == '/') return p;
  return (fs::path(dir) / p).lexically_normal().string();
}

std::string hex_u64(uint64_t v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}

bool has_comma(const std::string& s) { return s.find(',') != std::string::npos; }

}  // namespace

Status apply_qemu_toml(QemuConfig& cfg, const std::string& toml_text, const std::string& origin) {
  toml::table root;
  try {
    root = toml::parse(toml_text, origin);
  } catch (const toml::parse_error& e) {
    return make_error(origin + ": invalid TOML: " + std::string(e.description()));
  }
  const toml::table& croot = root;
  auto cvm = croot["cvm"];
  TRY(set_value(cvm["qemu_path"], cfg.qemu_path, "qemu_path", origin));
  TRY(set_value(cvm["qemu_img_path"], cfg.qemu_img_path, "qemu_img_path", origin));
  TRY(set_value(cvm["platform"], cfg.platform, "platform", origin));
  TRY(set_value(cvm["accel"], cfg.accel, "accel", origin));
  TRY(set_value(cvm["qmp_socket"], cfg.qmp_socket, "qmp_socket", origin));
  TRY(set_value(cvm["use_mrconfigid"], cfg.use_mrconfigid, "use_mrconfigid", origin));
  TRY(set_value(cvm["qemu_hotplug_off"], cfg.qemu_hotplug_off, "qemu_hotplug_off", origin));
  TRY(set_value(cvm["qemu_pci_hole64_size"], cfg.qemu_pci_hole64_size, "qemu_pci_hole64_size", origin));
  TRY(set_value(cvm["cid_start"], cfg.cid_start, "cid_start", origin));
  TRY(set_value(cvm["cid_pool_size"], cfg.cid_pool_size, "cid_pool_size", origin));
  TRY(set_value(cvm["qgs_port"], cfg.qgs_port, "qgs_port", origin));
  TRY(set_value(cvm["host_share_mode"], cfg.host_share_mode, "host_share_mode", origin));
  TRY(set_value(cvm["vsock"], cfg.vsock, "vsock", origin));
  auto net = cvm["networking"];
  TRY(set_value(net["mode"], cfg.networking.mode, "networking.mode", origin));
  TRY(set_value(net["net"], cfg.networking.net, "networking.net", origin));
  TRY(set_value(net["dhcp_start"], cfg.networking.dhcp_start, "networking.dhcp_start", origin));
  TRY(set_value(net["restrict"], cfg.networking.restrict, "networking.restrict", origin));
  TRY(set_value(net["bridge"], cfg.networking.bridge, "networking.bridge", origin));
  TRY(set_value(croot["host_api"]["port"], cfg.host_api_port, "host_api.port", origin));
  auto prod = cvm["product"];
  TRY(set_value(prod["sys_vendor"], cfg.product.sys_vendor, "product.sys_vendor", origin));
  TRY(set_value(prod["product_name"], cfg.product.product_name, "product.product_name", origin));
  if (cfg.platform == "auto") cfg.platform = "tdx";
  if (cfg.platform != "tdx" && cfg.platform != "none")
    return make_error(origin + ": [cvm] platform = \"" + cfg.platform +
                      "\" is not supported by the QEMU backend (supported: tdx, none, auto)");
  if (cfg.accel != "kvm" && cfg.accel != "tcg")
    return make_error(origin + ": [cvm] accel = \"" + cfg.accel + "\" (supported: kvm, tcg)");
  return Status::Ok();
}

Result<ImageMetadata> load_image_metadata(const std::string& image_dir) {
  std::string path = (fs::path(image_dir) / "metadata.json").string();
  if (!file_exists(path)) return make_error("image metadata " + path + " not found (is the image unpacked in [image] path?)");
  TRY_ASSIGN(auto text, read_file(path));
  nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return make_error(path + ": not a JSON object");
  ImageMetadata m;
  m.dir = fs::absolute(image_dir).lexically_normal().string();
  auto str = [&](const char* k) -> std::string {
    auto it = j.find(k);
    return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
  };
  m.cmdline = str("cmdline");
  m.kernel = abs_in(m.dir, str("kernel"));
  m.initrd = abs_in(m.dir, str("initrd"));
  m.rootfs = abs_in(m.dir, str("rootfs"));
  m.bios = abs_in(m.dir, str("bios"));
  m.hda = abs_in(m.dir, str("hda"));
  m.version = str("version");
  m.shared_ro = j.value("shared_ro", false);
  m.is_dev = j.value("is_dev", false);
  if (m.kernel.empty()) return make_error(path + ": \"kernel\" is missing");
  auto digest = read_file((fs::path(image_dir) / "digest.txt").string());
  if (digest.ok()) {
    m.digest = *digest;
    while (!m.digest.empty() && (m.digest.back() == '\n' || m.digest.back() == ' ')) m.digest.pop_back();
  }
  return m;
}

std::string mac_from_vm_id(const std::string& vm_id) {
  Bytes h = crypto::sha256(as_view(vm_id));
  char buf[32];
  std::snprintf(buf, sizeof buf, "52:54:00:%02x:%02x:%02x", h[0], h[1], h[2]);
  return buf;
}

std::string tdx_guest_object(ByteView mr_config_id48, uint16_t qgs_port) {
  nlohmann::ordered_json o;
  o["qom-type"] = "tdx-guest";
  o["id"] = "tdx";
  o["mrconfigid"] = base64_encode(mr_config_id48);
  o["quote-generation-socket"] = {{"type", "vsock"}, {"cid", "2"}, {"port", std::to_string(qgs_port)}};
  return o.dump();
}

Result<std::vector<std::string>> build_qemu_argv(const QemuConfig& cfg, const ImageMetadata& image,
                                                 const QemuVmSpec& vm) {
  const std::string& wd = vm.vm_dir;
  if (wd.empty() || wd[0] != '/') return make_error("VM work dir must be an absolute path (got \"" + wd + "\")");
  if (has_comma(wd)) return make_error("VM work dir " + wd + " contains a comma, which QEMU options cannot carry");
  if (vm.vcpu == 0) return make_error("vcpu must be at least 1");
  if (vm.memory_mb == 0) return make_error("memory must be at least 1 MB");
  bool tee = cfg.platform == "tdx" && !vm.no_tee;
  if (tee && cfg.accel != "kvm")
    return make_error("platform tdx needs accel = \"kvm\" (TDX cannot run under software emulation)");
  if (tee && image.bios.empty())
    return make_error("image " + image.dir + " has no \"bios\" (TDX-enabled OVMF) in metadata.json");
  if (!vm.mr_config_id.empty() && vm.mr_config_id.size() != 48)
    return make_error("MR_CONFIG_ID must be 48 bytes (got " + std::to_string(vm.mr_config_id.size()) + ")");
  if (cfg.vsock && !vm.cid) return make_error("no vsock CID allocated for VM " + vm.vm_id);

  std::vector<std::string> a;
  auto add = [&](std::initializer_list<std::string> xs) { a.insert(a.end(), xs); };
  a.push_back(cfg.qemu_path.empty() ? "qemu-system-x86_64" : cfg.qemu_path);
  // base
  if (cfg.accel == "kvm") add({"-accel", "kvm", "-cpu", "host"});
  else add({"-accel", "tcg", "-cpu", "max"});
  add({"-nographic", "-nodefaults"});
  add({"-chardev", "pty,id=com0,path=" + wd + "/serial.pty,logfile=" + wd + "/serial.log,logappend=on",
       "-serial", "chardev:com0"});
  if (cfg.qmp_socket) add({"-qmp", "unix:" + wd + "/qmp.sock,server,wait=off"});
  if (!image.bios.empty()) add({"-bios", image.bios});
  add({"-kernel", image.kernel});
  if (!image.initrd.empty()) add({"-initrd", image.initrd});
  if (cfg.qemu_hotplug_off) add({"-global", "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off"});
  if (cfg.qemu_pci_hole64_size) add({"-global", "q35-pcihost.pci-hole64-size=" + hex_u64(cfg.qemu_pci_hole64_size)});
  // rootfs
  if (!image.rootfs.empty()) {
    if (has_comma(image.rootfs)) return make_error("rootfs path " + image.rootfs + " contains a comma");
    add({"-drive", "file=" + image.rootfs + ",if=none,id=hd0,format=raw,readonly=on", "-device",
         "virtio-blk-pci,drive=hd0"});
  }
  // data disk
  add({"-drive", "file=" + wd + "/hda.img,if=none,id=hd1", "-device", "virtio-blk-pci,drive=hd1"});
  // volumes
  for (size_t i = 0; i < vm.volumes.size(); ++i) {
    if (has_comma(vm.volumes[i])) return make_error("volume path " + vm.volumes[i] + " contains a comma");
    std::string id = "vol" + std::to_string(i);
    add({"-drive", "file=" + vm.volumes[i] + ",if=none,id=" + id + ",format=raw,readonly=on", "-device",
         "virtio-blk-pci,drive=" + id});
  }
  // netdevs
  if (cfg.networking.mode == "user") {
    std::string nd = "user,id=net0,net=" + cfg.networking.net + ",dhcpstart=" + cfg.networking.dhcp_start +
                     ",restrict=" + (cfg.networking.restrict ? "yes" : "no");
    for (const auto& p : vm.ports) {
      if (p.protocol != "tcp" && p.protocol != "udp")
        return make_error("port mapping protocol must be tcp or udp (got \"" + p.protocol + "\")");
      if (p.host_port == 0 || p.vm_port == 0) return make_error("port mapping with port 0");
      if (has_comma(p.host_address) || p.host_address.find('-') != std::string::npos)
        return make_error("invalid host address \"" + p.host_address + "\" in port mapping");
      nd += ",hostfwd=" + p.protocol + ":" + p.host_address + ":" + std::to_string(p.host_port) + "-:" +
            std::to_string(p.vm_port);
    }
    add({"-netdev", nd});
  } else if (cfg.networking.mode == "bridge") {
    add({"-netdev", "bridge,id=net0,br=" + cfg.networking.bridge});
  } else {
    return make_error("[cvm.networking] mode = \"" + cfg.networking.mode + "\" (supported: user, bridge)");
  }
  add({"-device", "virtio-net-pci,netdev=net0,mac=" + mac_from_vm_id(vm.vm_id)});
  // smbios
  add({"-smbios", "type=1,manufacturer=" + cfg.product.sys_vendor + ",product=" + cfg.product.product_name});
  // vsock
  if (cfg.vsock) add({"-device", "vhost-vsock-pci,guest-cid=" + std::to_string(*vm.cid)});
  // host share
  if (cfg.host_share_mode == "9p") {
    add({"-virtfs", "local,path=" + wd + "/shared,mount_tag=host-shared,readonly=" +
                        std::string(image.shared_ro ? "on" : "off") + ",security_model=mapped,id=virtfs0"});
  } else if (cfg.host_share_mode == "vvfat") {
    add({"-blockdev", "driver=vvfat,node-name=vvfat0,read-only=on,dir=" + wd + "/shared,label=DSTACKSHR",
         "-device", "virtio-blk-pci,drive=vvfat0"});
  } else {
    return make_error("[cvm] host_share_mode = \"" + cfg.host_share_mode + "\" (supported: 9p, vvfat)");
  }
  // machine / tdx object
  if (tee) {
    Bytes id = vm.mr_config_id.empty() ? Bytes(48, 0) : vm.mr_config_id;
    add({"-machine", "q35,kernel-irqchip=split,confidential-guest-support=tdx,hpet=off", "-object",
         tdx_guest_object(id, cfg.qgs_port)});
  } else {
    add({"-machine", "q35,kernel-irqchip=split,hpet=off"});
  }
  // GPUs
  if (!vm.gpus.empty()) {
    add({"-object", "iommufd,id=iommufd0"});
    for (size_t i = 0; i < vm.gpus.size(); ++i) {
      if (vm.gpus[i].empty() || has_comma(vm.gpus[i])) return make_error("invalid GPU slot \"" + vm.gpus[i] + "\"");
      std::string n = std::to_string(i + 1);
      add({"-device", "pcie-root-port,id=pci." + n + ",bus=pcie.0,chassis=" + n, "-device",
           "vfio-pci,host=" + vm.gpus[i] + ",bus=pci." + n + ",iommufd=iommufd0"});
    }
  }
  add({"-smp", std::to_string(vm.vcpu), "-m", std::to_string(vm.memory_mb) + "M", "-append", image.cmdline});
  return a;
}

std::vector<std::string> qemu_img_create_argv(const QemuConfig& cfg, const std::string& hda_path, uint32_t disk_gb,
                                              const std::string& backing_file) {
  std::vector<std::string> a{cfg.qemu_img_path.empty() ? "qemu-img" : cfg.qemu_img_path, "create", "-f", "qcow2"};
  if (!backing_file.empty()) {
    a.push_back("-o");
    a.push_back("backing_file=" + backing_file + ",backing_fmt=qcow2");
  }
  a.push_back(hda_path);
  a.push_back(std::to_string(disk_gb) + "G");
  return a;
}

Bytes mr_config_id_v1(ByteView compose_hash32) {
  Bytes out(48, 0);
  out[0] = 0x01;
  for (size_t i = 0; i < compose_hash32.size() && i < 32; ++i) out[1 + i] = compose_hash32[i];
  return out;
}

std::string mr_config_v3_json(const MrConfigInput& in) {
  nlohmann::json doc = nlohmann::json::object();  // std::map keys: sorted, as JCS requires for ASCII keys
  doc["version"] = 3;
  doc["compose_hash"] = to_hex(in.compose_hash);
  doc["key_provider"] = in.key_provider.empty() ? "none" : in.key_provider;
  if (!in.app_id.empty()) doc["app_id"] = to_hex(in.app_id);
  if (!in.key_provider_id.empty()) doc["key_provider_id"] = to_hex(in.key_provider_id);
  if (!in.instance_id.empty()) doc["instance_id"] = to_hex(in.instance_id);
  return doc.dump();
}

Bytes mr_config_id_v3(const MrConfigInput& in) {
  std::string pre = std::string("dstack-mr-config-v3:") + std::string(1, '\0') + mr_config_v3_json(in);
  Bytes h = crypto::sha256(as_view(pre));
  Bytes out(48, 0);
  out[0] = 0x03;
  std::copy(h.begin(), h.end(), out.begin() + 1);
  return out;
}

Result<Bytes> choose_mr_config_id(bool no_tee, bool use_mrconfigid, const MrConfigInput& in) {
  if (no_tee || !use_mrconfigid) return Bytes{};
  if (in.compose_hash.size() != 32)
    return make_error("MR_CONFIG_ID needs the 32-byte compose hash (got " + std::to_string(in.compose_hash.size()) +
                      " bytes)");
  if (!in.key_provider_id.empty()) return mr_config_id_v3(in);
  return mr_config_id_v1(in.compose_hash);
}

Result<QemuVmSpec> vm_spec_from_manifest_json(const std::string& manifest_json) {
  nlohmann::json j = nlohmann::json::parse(manifest_json, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return make_error("vm-manifest.json is not a JSON object");
  QemuVmSpec s;
  try {
    s.vm_id = j.at("id").get<std::string>();
    s.vcpu = j.value("vcpu", 1u);
    s.memory_mb = j.value("memory", 1024u);
    s.disk_gb = j.value("disk_size", 20u);
    s.no_tee = j.value("no_tee", false);
    if (j.contains("port_map") && j["port_map"].is_array()) {
      for (const auto& p : j["port_map"]) {
        PortForward f;
        f.protocol = p.value("protocol", std::string("tcp"));
        f.host_address = p.value("address", std::string("127.0.0.1"));
        f.host_port = p.at("from").get<uint16_t>();
        f.vm_port = p.at("to").get<uint16_t>();
        s.ports.push_back(f);
      }
    }
    if (j.contains("gpus") && j["gpus"].is_object() && j["gpus"].contains("gpus") && j["gpus"]["gpus"].is_array())
      for (const auto& g : j["gpus"]["gpus"]) s.gpus.push_back(g.at("slot").get<std::string>());
    if (j.contains("volumes") && j["volumes"].is_array())
      for (const auto& v : j["volumes"]) s.volumes.push_back(v.at("source").get<std::string>());
  } catch (const nlohmann::json::exception& e) {
    return make_error(std::string("vm-manifest.json: ") + e.what());
  }
  return s;
}

Result<uint32_t> CidPool::allocate() {
  std::lock_guard lk(mu_);
  for (uint32_t c = start_; c < start_ + size_; ++c)
    if (!used_.count(c)) {
      used_.insert(c);
      return c;
    }
  return make_error("vsock CID pool exhausted (" + std::to_string(size_) + " CIDs from " + std::to_string(start_) +
                    "; raise [cvm] cid_pool_size)");
}

Status CidPool::reserve(uint32_t cid) {
  std::lock_guard lk(mu_);
  if (cid < start_ || cid >= start_ + size_) return make_error("CID " + std::to_string(cid) + " is outside the pool");
  if (!used_.insert(cid).second) return make_error("CID " + std::to_string(cid) + " is already in use");
  return Status::Ok();
}

void CidPool::release(uint32_t cid) {
  std::lock_guard lk(mu_);
  used_.erase(cid);
}

}  // namespace dstack::vmm::qemu
