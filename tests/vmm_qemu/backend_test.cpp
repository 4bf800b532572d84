// QemuBackend::launch_spec: from the VM work dir files (vm-manifest.json, shared/app-compose.json) to the QEMU argv.
#include <gtest/gtest.h>

#include <sys/stat.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "base/bytes.h"
#include "crypto/hash.h"
#include "vmm/qemu/qemu_backend.h"

using namespace dstack;
using namespace dstack::vmm::qemu;
namespace fs = std::filesystem;

TEST(QemuBackend, LaunchSpecFromWorkDirFiles) {
  char tmpl[] = "/tmp/qbackendXXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  std::string root = tmpl, vm_dir = root + "/vm/abc", img = root + "/img";
  fs::create_directories(vm_dir + "/shared");
  fs::create_directories(img);
  std::ofstream(img + "/metadata.json") << R"({"cmdline":"console=ttyS0","kernel":"bzImage","initrd":"initrd","rootfs":"rootfs.img.verity","bios":"ovmf.fd","version":"0.5.5"})";
  std::ofstream(vm_dir + "/vm-manifest.json") << R"({"id":"abc","name":"kms","app_id":"0102030405060708090a0b0c0d0e0f1011121314","vcpu":2,"memory":2048,"disk_size":7,"image":"img","port_map":[{"address":"127.0.0.1","protocol":"tcp","from":9100,"to":9100}],"no_tee":false})";
  std::string compose = R"({"manifest_version":2,"name":"kms","runner":"docker-compose","kms_enabled":true,"key_provider_id":"aabb"})";
  std::ofstream(vm_dir + "/shared/app-compose.json") << compose;
  // Fake qemu-img: records its argv and creates the file.
  std::string fake = root + "/qemu-img";
  std::ofstream(fake) << "#!/bin/sh\necho \"$@\" > " << root << "/qemu-img.args\n: > \"$4\"\n";
  ::chmod(fake.c_str(), 0755);

  QemuConfig cfg;
  cfg.qemu_img_path = fake;
  QemuBackend be(cfg);
  vmm::LaunchContext ctx{"abc", vm_dir, img, vm_dir + "/host-api.sock"};
  auto spec = be.launch_spec(ctx);
  ASSERT_TRUE(spec.ok()) << spec.error().message;
  EXPECT_EQ(spec->cwd, vm_dir);
  const auto& a = spec->argv;
  EXPECT_NE(std::find(a.begin(), a.end(), "vhost-vsock-pci,guest-cid=1000"), a.end());
  EXPECT_EQ(be.vm_of_cid(1000), "abc");
  // MR_CONFIG_ID V3 (key_provider_id set) of the compose bytes + manifest app_id, key provider kms.
  MrConfigInput in;
  in.compose_hash = crypto::sha256(as_view(compose));
  in.app_id = *from_hex("0102030405060708090a0b0c0d0e0f1011121314");
  in.key_provider = "kms";
  in.key_provider_id = Bytes{0xaa, 0xbb};
  std::string obj = tdx_guest_object(mr_config_id_v3(in), 4050);
  EXPECT_NE(std::find(a.begin(), a.end(), obj), a.end());
  EXPECT_EQ(a[a.size() - 6], "-smp");
  EXPECT_EQ(a[a.size() - 5], "2");
  EXPECT_EQ(a[a.size() - 3], "2048M");
  std::ifstream args(root + "/qemu-img.args");
  std::string line;
  std::getline(args, line);
  EXPECT_EQ(line, "create -f qcow2 " + vm_dir + "/hda.img 7G");
  EXPECT_TRUE(fs::exists(vm_dir + "/hda.img"));
  // A second start keeps the CID and does not recreate the disk.
  fs::remove(root + "/qemu-img.args");
  auto again = be.launch_spec(ctx);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->argv, spec->argv);
  EXPECT_FALSE(fs::exists(root + "/qemu-img.args"));
  // Missing compose -> actionable error.
  fs::remove(vm_dir + "/shared/app-compose.json");
  auto bad = be.launch_spec(ctx);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message.find("app-compose.json"), std::string::npos) << bad.error().message;
  fs::remove_all(root);
}
