// dstack-vmm doctor against fake /sys + /dev trees and fake QEMU binaries.
#include <gtest/gtest.h>

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "vmm/qemu/doctor.h"

using namespace dstack::vmm::qemu;
namespace fs = std::filesystem;

namespace {

class FakeHost : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/qdoctorXXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    root = tmpl;
  }
  void TearDown() override { fs::remove_all(root); }
  void put(const std::string& rel, const std::string& content = "") {
    fs::create_directories(fs::path(root + rel).parent_path());
    std::ofstream(root + rel, std::ios::binary) << content;
  }
  // A shell script standing in for qemu-system-x86_64.
  std::string fake_qemu(bool tdx) {
    std::string p = root + "/bin/qemu-system-x86_64";
    put("/bin/qemu-system-x86_64",
        "#!/bin/sh\n"
        "case \"$1\" in\n"
        "  -version) echo 'QEMU emulator version 10.1.0'; exit 0;;\n"
        "  -object) echo 'List of user creatable objects:'; echo '  iommufd'; " +
            std::string(tdx ? "echo '  tdx-guest';" : "") +
            " exit 0;;\n"
            "esac\nexit 1\n");
    ::chmod(p.c_str(), 0755);
    return p;
  }
  std::string tdx_ovmf() {
    std::string blob(4096, '\xff');
    const unsigned char guid[16] = {0x35, 0x65, 0x7a, 0xe4, 0x4a, 0x98, 0x98, 0x47,
                                    0x86, 0x5e, 0x46, 0x85, 0xa7, 0xbf, 0x8e, 0xc2};
    blob.replace(3000, 16, reinterpret_cast<const char*>(guid), 16);
    put("/img/ovmf.fd", blob);
    return root + "/img/ovmf.fd";
  }
  DoctorOptions opts(const std::string& qemu) {
    DoctorOptions o;
    o.root = root;
    o.qemu_path = qemu;
    return o;
  }
  const DoctorCheck& find(const DoctorReport& r, const std::string& id) {
    for (const auto& c : r.checks)
      if (c.id == id) return c;
    ADD_FAILURE() << "no check " << id;
    return r.checks.front();
  }
  std::string root;
};

}  // namespace

TEST_F(FakeHost, FullyEquippedTdxHostIsReady) {
  put("/sys/module/kvm_intel/parameters/tdx", "Y\n");
  put("/dev/kvm");
  put("/dev/sgx_enclave");
  put("/dev/sgx_provision");
  put("/dev/vhost-vsock");
  auto o = opts(fake_qemu(true));
  o.bios_candidates.push_back(tdx_ovmf());
  auto r = run_doctor(o);
  for (const auto& c : r.checks) EXPECT_EQ(c.status, CheckStatus::Ok) << c.id << ": " << c.detail;
  EXPECT_TRUE(r.tdx_ready);
  EXPECT_TRUE(r.local_key_provider_ready);
  EXPECT_NE(r.verdict.find("can run TDX"), std::string::npos);
  EXPECT_NE(find(r, "qemu").detail.find("10.1.0"), std::string::npos);
  auto j = r.to_json();
  EXPECT_TRUE(j["tdx_ready"].get<bool>());
  EXPECT_EQ(j["checks"].size(), 7u);
}

TEST_F(FakeHost, HostWithoutTdxSaysSoAndPointsToSimulator) {
  put("/dev/kvm");  // plain KVM, no kvm_intel, no SGX, no vsock
  auto r = run_doctor(opts(fake_qemu(false)));
  EXPECT_FALSE(r.tdx_ready);
  EXPECT_FALSE(r.local_key_provider_ready);
  EXPECT_EQ(find(r, "kvm_intel_tdx").status, CheckStatus::Fail);
  EXPECT_NE(find(r, "kvm_intel_tdx").detail.find("not loaded"), std::string::npos);
  EXPECT_EQ(find(r, "dev_kvm").status, CheckStatus::Ok);
  EXPECT_EQ(find(r, "qemu").status, CheckStatus::Ok);
  EXPECT_EQ(find(r, "qemu_tdx_guest").status, CheckStatus::Fail);
  EXPECT_EQ(find(r, "vsock").status, CheckStatus::Fail);
  const auto& sgx = find(r, "sgx");
  EXPECT_EQ(sgx.status, CheckStatus::Warn);
  EXPECT_NE(sgx.remedy.find("ls -la /dev/sgx*"), std::string::npos);
  EXPECT_NE(sgx.remedy.find("SGX Auto MP Registration"), std::string::npos);
  EXPECT_NE(r.verdict.find("NOT available"), std::string::npos);
  EXPECT_NE(r.verdict.find("simulator"), std::string::npos);
  std::string text = r.to_text();
  EXPECT_NE(text.find("[FAIL]"), std::string::npos);
  EXPECT_NE(text.find("fix: "), std::string::npos);
}

TEST_F(FakeHost, TdxParameterDisabledAndKernelWithoutTdx) {
  put("/sys/module/kvm_intel/parameters/tdx", "N\n");
  auto r = run_doctor(opts(fake_qemu(true)));
  const auto& c = find(r, "kvm_intel_tdx");
  EXPECT_EQ(c.status, CheckStatus::Fail);
  EXPECT_NE(c.detail.find("= N"), std::string::npos);
  EXPECT_NE(c.remedy.find("tdx=1"), std::string::npos);
  EXPECT_EQ(find(r, "dev_kvm").status, CheckStatus::Fail);

  fs::remove(root + "/sys/module/kvm_intel/parameters/tdx");
  auto r2 = run_doctor(opts(fake_qemu(true)));
  EXPECT_NE(find(r2, "kvm_intel_tdx").detail.find("no tdx parameter"), std::string::npos);
}

TEST_F(FakeHost, MissingQemuAndNonTdxOvmf) {
  put("/usr/share/ovmf/OVMF.fd", std::string(4096, '\0'));  // OVMF without TDX metadata
  auto o = opts(root + "/bin/does-not-exist");
  auto r = run_doctor(o);
  EXPECT_EQ(find(r, "qemu").status, CheckStatus::Fail);
  EXPECT_NE(find(r, "qemu").remedy.find("qemu_path"), std::string::npos);
  EXPECT_EQ(find(r, "qemu_tdx_guest").status, CheckStatus::Fail);
  const auto& ovmf = find(r, "ovmf");
  EXPECT_EQ(ovmf.status, CheckStatus::Fail);
  EXPECT_NE(ovmf.detail.find("no TDX metadata"), std::string::npos);
  // With the TDX OVMF present as image bios it passes.
  o.bios_candidates.push_back(tdx_ovmf());
  EXPECT_EQ(find(run_doctor(o), "ovmf").status, CheckStatus::Ok);
}

TEST(DoctorCli, ExitCodeAndJsonOnThisHost) {
  // This machine has no TDX: the real doctor must say not ready (exit 2) and mention the simulator.
  std::string cmd = std::string(DSTACK_BIN_DIR) + "/dstack-vmm-doctor --json > /tmp/doctor-out-" +
                    std::to_string(::getpid()) + ".json";
  int rc = std::system(cmd.c_str());
  ASSERT_TRUE(WIFEXITED(rc));
  std::string out_path = "/tmp/doctor-out-" + std::to_string(::getpid()) + ".json";
  std::ifstream in(out_path);
  auto j = nlohmann::json::parse(in, nullptr, false);
  fs::remove(out_path);
  ASSERT_FALSE(j.is_discarded());
  bool ready = j["tdx_ready"].get<bool>();
  EXPECT_EQ(WEXITSTATUS(rc), ready ? 0 : 2);
  if (!ready) {
    EXPECT_NE(j["verdict"].get<std::string>().find("simulator"), std::string::npos);
  }
}
