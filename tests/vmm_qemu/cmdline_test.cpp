// QEMU command line (spec §10.4) for representative manifests, compared argument by argument.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "base/bytes.h"
#include "crypto/hash.h"
#include "vmm/qemu/cmdline.h"

using namespace dstack;
using namespace dstack::vmm::qemu;

namespace {

const std::string kWd = "/run/vm/3f2a";

ImageMetadata tdx_image() {
  ImageMetadata m;
  m.dir = "/img/dstack-0.5.5";
  m.cmdline = "console=ttyS0 init=/init panic=1";
  m.kernel = "/img/dstack-0.5.5/bzImage";
  m.initrd = "/img/dstack-0.5.5/initramfs.cpio.gz";
  m.rootfs = "/img/dstack-0.5.5/rootfs.img.verity";
  m.bios = "/img/dstack-0.5.5/ovmf.fd";
  return m;
}

QemuVmSpec kms_vm() {
  QemuVmSpec v;
  v.vm_id = "3f2a0c1e-0000-4000-8000-000000000001";
  v.vm_dir = kWd;
  v.vcpu = 2;
  v.memory_mb = 4096;
  v.disk_gb = 20;
  v.ports.push_back({"tcp", "127.0.0.1", 9100, 9100});
  v.cid = 1000;
  return v;
}

std::vector<std::string> base_args(const std::string& wd, const ImageMetadata& img) {
  return {"qemu-system-x86_64", "-accel", "kvm", "-cpu", "host", "-nographic", "-nodefaults",
          "-chardev", "pty,id=com0,path=" + wd + "/serial.pty,logfile=" + wd + "/serial.log,logappend=on",
          "-serial", "chardev:com0", "-bios", img.bios, "-kernel", img.kernel, "-initrd", img.initrd};
}

// Checks `got` starting at `pos` equals `want`, element by element, and advances pos.
void expect_seq(const std::vector<std::string>& got, size_t& pos, const std::vector<std::string>& want) {
  for (const auto& w : want) {
    ASSERT_LT(pos, got.size()) << "argv ended before expected '" << w << "'";
    EXPECT_EQ(got[pos], w) << "at argv[" << pos << "]";
    ++pos;
  }
}

}  // namespace

TEST(QemuCmdline, TdxKmsDeploymentMatchesSpecOrderAndForms) {
  QemuConfig cfg;
  auto img = tdx_image();
  auto vm = kms_vm();
  Bytes compose_hash = crypto::sha256(as_view("{\"name\":\"kms\"}"));
  vm.mr_config_id = mr_config_id_v1(compose_hash);
  auto argv = build_qemu_argv(cfg, img, vm);
  ASSERT_TRUE(argv.ok()) << argv.error().message;
  const auto& a = *argv;
  size_t i = 0;
  expect_seq(a, i, base_args(kWd, img));
  expect_seq(a, i, {"-drive", "file=" + img.rootfs + ",if=none,id=hd0,format=raw,readonly=on", "-device",
                    "virtio-blk-pci,drive=hd0"});
  expect_seq(a, i, {"-drive", "file=" + kWd + "/hda.img,if=none,id=hd1", "-device", "virtio-blk-pci,drive=hd1"});
  expect_seq(a, i, {"-netdev",
                    "user,id=net0,net=10.0.2.0/24,dhcpstart=10.0.2.10,restrict=no,hostfwd=tcp:127.0.0.1:9100-:9100"});
  expect_seq(a, i, {"-device", "virtio-net-pci,netdev=net0,mac=" + mac_from_vm_id(vm.vm_id)});
  expect_seq(a, i, {"-smbios", "type=1,manufacturer=dstack,product=dstack"});
  expect_seq(a, i, {"-device", "vhost-vsock-pci,guest-cid=1000"});
  expect_seq(a, i, {"-virtfs",
                    "local,path=" + kWd + "/shared,mount_tag=host-shared,readonly=off,security_model=mapped,id=virtfs0"});
  expect_seq(a, i, {"-machine", "q35,kernel-irqchip=split,confidential-guest-support=tdx,hpet=off", "-object"});
  ASSERT_LT(i, a.size());
  // The tdx-guest object: exact JSON with the base64 MR_CONFIG_ID (48 bytes) and the QGS vsock socket.
  std::string expected_obj = "{\"qom-type\":\"tdx-guest\",\"id\":\"tdx\",\"mrconfigid\":\"" +
                             base64_encode(vm.mr_config_id) +
                             "\",\"quote-generation-socket\":{\"type\":\"vsock\",\"cid\":\"2\",\"port\":\"4050\"}}";
  EXPECT_EQ(a[i], expected_obj);
  auto decoded = base64_decode(nlohmann::json::parse(a[i])["mrconfigid"].get<std::string>());
  ASSERT_TRUE(decoded.ok());
  ASSERT_EQ(decoded->size(), 48u);
  EXPECT_EQ((*decoded)[0], 0x01);
  EXPECT_EQ(Bytes(decoded->begin() + 1, decoded->begin() + 33), compose_hash);
  EXPECT_TRUE(std::all_of(decoded->begin() + 33, decoded->end(), [](uint8_t b) { return b == 0; }));
  ++i;
  expect_seq(a, i, {"-smp", "2", "-m", "4096M", "-append", img.cmdline});
  EXPECT_EQ(i, a.size()) << "unexpected trailing arguments";
  // No GPU arguments without GPUs.
  EXPECT_EQ(std::count(a.begin(), a.end(), "-object"), 1);
}

TEST(QemuCmdline, NoTeeHasPlainMachineAndNoTdxObject) {
  QemuConfig cfg;
  auto img = tdx_image();
  auto vm = kms_vm();
  vm.no_tee = true;
  auto argv = build_qemu_argv(cfg, img, vm);
  ASSERT_TRUE(argv.ok()) << argv.error().message;
  auto it = std::find(argv->begin(), argv->end(), "-machine");
  ASSERT_NE(it, argv->end());
  EXPECT_EQ(*(it + 1), "q35,kernel-irqchip=split,hpet=off");
  EXPECT_EQ(std::find(argv->begin(), argv->end(), "-object"), argv->end());
  for (const auto& s : *argv) EXPECT_EQ(s.find("tdx"), std::string::npos) << s;

  // platform = "none" behaves the same even without no_tee.
  cfg.platform = "none";
  vm.no_tee = false;
  auto argv2 = build_qemu_argv(cfg, img, vm);
  ASSERT_TRUE(argv2.ok());
  EXPECT_EQ(*argv2, *argv);
}

TEST(QemuCmdline, MultiplePortsAndUdpBecomeHostfwdEntriesOnTheFirstNic) {
  QemuConfig cfg;
  cfg.networking.restrict = true;
  cfg.networking.net = "10.9.0.0/24";
  cfg.networking.dhcp_start = "10.9.0.20";
  auto vm = kms_vm();
  vm.ports = {{"tcp", "127.0.0.1", 9100, 9100}, {"tcp", "0.0.0.0", 18080, 80}, {"udp", "127.0.0.1", 5353, 53}};
  auto argv = build_qemu_argv(cfg, tdx_image(), vm);
  ASSERT_TRUE(argv.ok()) << argv.error().message;
  auto it = std::find(argv->begin(), argv->end(), "-netdev");
  ASSERT_NE(it, argv->end());
  EXPECT_EQ(*(it + 1),
            "user,id=net0,net=10.9.0.0/24,dhcpstart=10.9.0.20,restrict=yes,hostfwd=tcp:127.0.0.1:9100-:9100,"
            "hostfwd=tcp:0.0.0.0:18080-:80,hostfwd=udp:127.0.0.1:5353-:53");
  EXPECT_EQ(std::count(argv->begin(), argv->end(), "-netdev"), 1);
}

TEST(QemuCmdline, GpusComeAfterMachineAndBeforeSmp) {
  QemuConfig cfg;
  auto vm = kms_vm();
  vm.gpus = {"0000:18:00.0", "0000:2a:00.0"};
  auto argv = build_qemu_argv(cfg, tdx_image(), vm);
  ASSERT_TRUE(argv.ok()) << argv.error().message;
  auto m = std::find(argv->begin(), argv->end(), "-machine");
  ASSERT_NE(m, argv->end());
  size_t i = static_cast<size_t>(m - argv->begin()) + 4;  // -machine X -object {tdx}
  expect_seq(*argv, i,
             {"-object", "iommufd,id=iommufd0", "-device", "pcie-root-port,id=pci.1,bus=pcie.0,chassis=1", "-device",
              "vfio-pci,host=0000:18:00.0,bus=pci.1,iommufd=iommufd0", "-device",
              "pcie-root-port,id=pci.2,bus=pcie.0,chassis=2", "-device",
              "vfio-pci,host=0000:2a:00.0,bus=pci.2,iommufd=iommufd0", "-smp", "2"});
}

TEST(QemuCmdline, OptionalBaseArgumentsAndVolumesAndProduct) {
  QemuConfig cfg;
  cfg.qemu_path = "/opt/qemu-tdx/bin/qemu-system-x86_64";
  cfg.qmp_socket = true;
  cfg.qemu_hotplug_off = true;
  cfg.qemu_pci_hole64_size = 0x10000000000ULL;
  cfg.product = {"acme", "cvm-box"};
  cfg.qgs_port = 4051;
  auto img = tdx_image();
  img.shared_ro = true;
  auto vm = kms_vm();
  vm.volumes = {"/data/vol-a.img", "/data/vol-b.img"};
  vm.cid = 1234;
  auto argv = build_qemu_argv(cfg, img, vm);
  ASSERT_TRUE(argv.ok()) << argv.error().message;
  const auto& a = *argv;
  EXPECT_EQ(a[0], cfg.qemu_path);
  size_t i = 11;  // after -serial chardev:com0
  expect_seq(a, i, {"-qmp", "unix:" + kWd + "/qmp.sock,server,wait=off", "-bios", img.bios, "-kernel", img.kernel,
                    "-initrd", img.initrd, "-global", "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off",
                    "-global", "q35-pcihost.pci-hole64-size=0x10000000000"});
  i += 8;  // rootfs + data disk
  expect_seq(a, i, {"-drive", "file=/data/vol-a.img,if=none,id=vol0,format=raw,readonly=on", "-device",
                    "virtio-blk-pci,drive=vol0", "-drive", "file=/data/vol-b.img,if=none,id=vol1,format=raw,readonly=on",
                    "-device", "virtio-blk-pci,drive=vol1", "-netdev"});
  EXPECT_NE(std::find(a.begin(), a.end(), "type=1,manufacturer=acme,product=cvm-box"), a.end());
  EXPECT_NE(std::find(a.begin(), a.end(), "vhost-vsock-pci,guest-cid=1234"), a.end());
  EXPECT_NE(std::find_if(a.begin(), a.end(), [](const std::string& s) { return s.find("readonly=on,security_model") != std::string::npos; }), a.end());
  EXPECT_NE(std::find_if(a.begin(), a.end(), [](const std::string& s) { return s.find("\"port\":\"4051\"") != std::string::npos; }), a.end());
}

TEST(QemuCmdline, TcgAndNoVsockForSoftwareEmulation) {
  QemuConfig cfg;
  cfg.platform = "none";
  cfg.accel = "tcg";
  cfg.vsock = false;
  auto img = tdx_image();
  img.bios.clear();
  auto vm = kms_vm();
  vm.cid.reset();
  auto argv = build_qemu_argv(cfg, img, vm);
  ASSERT_TRUE(argv.ok()) << argv.error().message;
  size_t i = 1;
  expect_seq(*argv, i, {"-accel", "tcg", "-cpu", "max"});
  EXPECT_EQ(std::find(argv->begin(), argv->end(), "-bios"), argv->end());
  for (const auto& s : *argv) EXPECT_EQ(s.find("vhost-vsock"), std::string::npos);
}

TEST(QemuCmdline, RejectsInvalidInputsWithActionableErrors) {
  QemuConfig cfg;
  auto img = tdx_image();
  auto vm = kms_vm();
  vm.vm_dir = "relative/dir";
  auto r = build_qemu_argv(cfg, img, vm);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("absolute"), std::string::npos);

  vm = kms_vm();
  cfg.accel = "tcg";
  r = build_qemu_argv(cfg, img, vm);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("kvm"), std::string::npos);

  cfg = QemuConfig{};
  img.bios.clear();
  r = build_qemu_argv(cfg, img, vm);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("bios"), std::string::npos);

  img = tdx_image();
  vm.cid.reset();
  r = build_qemu_argv(cfg, img, vm);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("CID"), std::string::npos);

  vm = kms_vm();
  vm.mr_config_id = Bytes(47, 1);
  r = build_qemu_argv(cfg, img, vm);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("48"), std::string::npos);

  vm = kms_vm();
  vm.ports = {{"sctp", "127.0.0.1", 1, 1}};
  EXPECT_FALSE(build_qemu_argv(cfg, img, vm).ok());
}

TEST(QemuCmdline, MrConfigIdSelectionFollowsSpec85) {
  MrConfigInput in;
  in.compose_hash = crypto::sha256(as_view("compose"));
  in.app_id = Bytes(in.compose_hash.begin(), in.compose_hash.begin() + 20);
  in.key_provider = "kms";
  // no TEE or disabled -> not bound
  EXPECT_TRUE(choose_mr_config_id(true, true, in)->empty());
  EXPECT_TRUE(choose_mr_config_id(false, false, in)->empty());
  // no key_provider_id -> V1
  auto v1 = choose_mr_config_id(false, true, in);
  ASSERT_TRUE(v1.ok());
  EXPECT_EQ(*v1, mr_config_id_v1(in.compose_hash));
  EXPECT_EQ(to_hex(*v1), "01" + to_hex(in.compose_hash) + std::string(30, '0'));
  // key_provider_id -> V3 over the sorted compact JSON document
  in.key_provider_id = Bytes{0xab, 0xcd};
  auto v3 = choose_mr_config_id(false, true, in);
  ASSERT_TRUE(v3.ok());
  std::string doc = "{\"app_id\":\"" + to_hex(in.app_id) + "\",\"compose_hash\":\"" + to_hex(in.compose_hash) +
                    "\",\"key_provider\":\"kms\",\"key_provider_id\":\"abcd\",\"version\":3}";
  EXPECT_EQ(mr_config_v3_json(in), doc);
  Bytes pre = to_bytes(std::string("dstack-mr-config-v3:") + std::string(1, '\0') + doc);
  Bytes h = crypto::sha256(pre);
  ASSERT_EQ(v3->size(), 48u);
  EXPECT_EQ((*v3)[0], 0x03);
  EXPECT_EQ(Bytes(v3->begin() + 1, v3->begin() + 33), h);
  // wrong compose hash size
  in.compose_hash.resize(31);
  EXPECT_FALSE(choose_mr_config_id(false, true, in).ok());
}

TEST(QemuCmdline, QemuImgCreateArgv) {
  QemuConfig cfg;
  EXPECT_EQ(qemu_img_create_argv(cfg, "/wd/hda.img", 20),
            (std::vector<std::string>{"qemu-img", "create", "-f", "qcow2", "/wd/hda.img", "20G"}));
  cfg.qemu_img_path = "/usr/local/bin/qemu-img";
  EXPECT_EQ(qemu_img_create_argv(cfg, "/wd/hda.img", 5, "/img/hda.qcow2"),
            (std::vector<std::string>{"/usr/local/bin/qemu-img", "create", "-f", "qcow2", "-o",
                                      "backing_file=/img/hda.qcow2,backing_fmt=qcow2", "/wd/hda.img", "5G"}));
}

TEST(QemuCmdline, MacIsStablePerVmAndLocallyAdministeredPrefix) {
  auto a = mac_from_vm_id("vm-a"), b = mac_from_vm_id("vm-b");
  EXPECT_EQ(a, mac_from_vm_id("vm-a"));
  EXPECT_NE(a, b);
  EXPECT_EQ(a.substr(0, 9), "52:54:00:");
  EXPECT_EQ(a.size(), 17u);
}

TEST(QemuCmdline, VmSpecFromManifestJson) {
  std::string j = R"({"id":"abc","name":"kms","app_id":"00","vcpu":2,"memory":4096,"disk_size":20,"image":"dstack-0.5.5",
    "port_map":[{"address":"127.0.0.1","protocol":"tcp","from":9100,"to":9100}],"created_at_ms":1,"hugepages":false,
    "pin_numa":false,"gpus":{"attach_mode":"listed","gpus":[{"slot":"0000:18:00.0"}],"bridges":[]},"kms_urls":[],
    "gateway_urls":[],"no_tee":true,"volumes":[{"source":"/v/a.img"}]})";
  auto s = vm_spec_from_manifest_json(j);
  ASSERT_TRUE(s.ok()) << s.error().message;
  EXPECT_EQ(s->vm_id, "abc");
  EXPECT_EQ(s->vcpu, 2u);
  EXPECT_EQ(s->memory_mb, 4096u);
  EXPECT_EQ(s->disk_gb, 20u);
  ASSERT_EQ(s->ports.size(), 1u);
  EXPECT_EQ(s->ports[0].host_port, 9100);
  EXPECT_EQ(s->ports[0].host_address, "127.0.0.1");
  EXPECT_EQ(s->gpus, std::vector<std::string>{"0000:18:00.0"});
  EXPECT_EQ(s->volumes, std::vector<std::string>{"/v/a.img"});
  EXPECT_TRUE(s->no_tee);
  EXPECT_FALSE(vm_spec_from_manifest_json("[1]").ok());
  EXPECT_FALSE(vm_spec_from_manifest_json(R"({"name":"x"})").ok());  // no id
}

TEST(QemuCmdline, TomlCvmKeys) {
  QemuConfig cfg;
  auto st = apply_qemu_toml(cfg, R"(
[cvm]
qemu_path = "/opt/q"
platform = "auto"
qmp_socket = true
cid_start = 2000
qemu_pci_hole64_size = 1099511627776
[cvm.networking]
mode = "user"
net = "10.1.0.0/24"
dhcp_start = "10.1.0.5"
restrict = true
[cvm.product]
sys_vendor = "v"
product_name = "p"
)", "test.toml");
  ASSERT_TRUE(st.ok()) << st.error().message;
  EXPECT_EQ(cfg.qemu_path, "/opt/q");
  EXPECT_EQ(cfg.platform, "tdx");
  EXPECT_TRUE(cfg.qmp_socket);
  EXPECT_EQ(cfg.cid_start, 2000u);
  EXPECT_EQ(cfg.qemu_pci_hole64_size, 1099511627776ULL);
  EXPECT_EQ(cfg.networking.net, "10.1.0.0/24");
  EXPECT_EQ(cfg.networking.dhcp_start, "10.1.0.5");
  EXPECT_TRUE(cfg.networking.restrict);
  EXPECT_EQ(cfg.product.sys_vendor, "v");
  QemuConfig bad;
  auto e = apply_qemu_toml(bad, "[cvm]\nplatform = \"amd-sev-snp\"\n", "x.toml");
  ASSERT_FALSE(e.ok());
  EXPECT_NE(e.error().message.find("supported"), std::string::npos);
  e = apply_qemu_toml(bad, "[cvm]\ncid_start = \"x\"\n", "x.toml");
  ASSERT_FALSE(e.ok());
  EXPECT_NE(e.error().message.find("cid_start"), std::string::npos);
}

TEST(QemuCmdline, LoadImageMetadataResolvesRelativePaths) {
  char tmpl[] = "/tmp/qimgmetaXXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  std::string dir = tmpl;
  std::ofstream(dir + "/metadata.json") << R"({"cmdline":"console=ttyS0","kernel":"bzImage","initrd":"initramfs.cpio.gz",
     "rootfs":"rootfs.img.verity","bios":"ovmf.fd","shared_ro":true,"version":"0.5.5","is_dev":false})";
  std::ofstream(dir + "/digest.txt") << "abcd\n";
  auto m = load_image_metadata(dir);
  ASSERT_TRUE(m.ok()) << m.error().message;
  EXPECT_EQ(m->kernel, dir + "/bzImage");
  EXPECT_EQ(m->bios, dir + "/ovmf.fd");
  EXPECT_EQ(m->rootfs, dir + "/rootfs.img.verity");
  EXPECT_TRUE(m->shared_ro);
  EXPECT_EQ(m->digest, "abcd");
  EXPECT_EQ(m->version, "0.5.5");
  std::filesystem::remove_all(dir);
  auto missing = load_image_metadata(dir);
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.error().message.find("metadata.json"), std::string::npos);
}

TEST(QemuCmdline, CidPoolAllocatesWithinRangeAndReuses) {
  CidPool pool(1000, 2);
  auto a = pool.allocate(), b = pool.allocate();
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(*a, 1000u);
  EXPECT_EQ(*b, 1001u);
  EXPECT_FALSE(pool.allocate().ok());
  pool.release(1000);
  EXPECT_EQ(*pool.allocate(), 1000u);
  EXPECT_FALSE(pool.reserve(1001).ok());
  EXPECT_FALSE(pool.reserve(5).ok());
}
