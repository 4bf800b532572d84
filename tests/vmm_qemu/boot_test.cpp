// Boots a tiny kernel + busybox initramfs (scripts/qemu-test-image.sh) with the §10.4 command line, platform "none",
// under TCG software emulation; checks the guest marker on the serial log, the SMBIOS strings, the two virtio disks,
// the 9p host-share device and the hostfwd port mapping; then tears QEMU down.
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <thread>

#include "base/fs.h"
#include "vmm/qemu/cmdline.h"
#include "vmm/qemu/process.h"

using namespace dstack;
using namespace dstack::vmm::qemu;
namespace fs = std::filesystem;

namespace {

bool in_path(const std::string& exe) {
  const char* p = std::getenv("PATH");
  std::string path = p ? p : "/usr/bin:/bin";
  size_t start = 0;
  while (start <= path.size()) {
    size_t end = path.find(':', start);
    std::string dir = path.substr(start, end == std::string::npos ? std::string::npos : end - start);
    if (!dir.empty() && ::access((dir + "/" + exe).c_str(), X_OK) == 0) return true;
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return false;
}

uint16_t free_port() {
  int s = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  ::getsockname(s, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(s);
  return ntohs(a.sin_port);
}

// GET / over plain HTTP/1.0 with 5 s socket timeouts; returns the whole response or "".
std::string http_get(uint16_t port) {
  int s = ::socket(AF_INET, SOCK_STREAM, 0);
  timeval tv{5, 0};
  ::setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string out;
  if (::connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) {
    std::string req = "GET / HTTP/1.0\r\nHost: x\r\n\r\n";
    if (::send(s, req.data(), req.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(req.size())) {
      char buf[2048];
      ssize_t n;
      while ((n = ::recv(s, buf, sizeof buf, 0)) > 0) out.append(buf, static_cast<size_t>(n));
    }
  }
  ::close(s);
  return out;
}

}  // namespace

TEST(QemuBoot, TinyGuestBootsUnderTcgWithSpecCommandLine) {
  if (!in_path("qemu-system-x86_64")) GTEST_SKIP() << "qemu-system-x86_64 not installed (apt-get install qemu-system-x86)";
  ASSERT_TRUE(in_path("qemu-img")) << "qemu-img missing: apt-get install qemu-utils (scripts/install-deps.sh)";

  // Build (or reuse) the test image next to the build tree.
  std::string img_dir = fs::path(DSTACK_BIN_DIR).parent_path().string() + "/qemu-test-image";
  std::string script = std::string(DSTACK_SOURCE_DIR) + "/scripts/qemu-test-image.sh";
  // flock: VmmQemuWiring.RealQemuBootsThroughTheVmm (wiring_test.cpp) builds the same image.
  auto built = run_command({"flock", img_dir + ".lock", "bash", script, img_dir}, std::chrono::minutes(5));
  ASSERT_TRUE(built.ok()) << "building the test image failed: " << built.error().message;
  auto image = load_image_metadata(img_dir);
  ASSERT_TRUE(image.ok()) << image.error().message;

  char tmpl[] = "/tmp/qemuboot-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  std::string wd = tmpl;
  struct Cleanup {
    std::string d;
    ~Cleanup() { fs::remove_all(d); }
  } cleanup{wd};

  QemuConfig cfg;
  cfg.platform = "none";
  cfg.accel = "tcg";   // no usable KVM here; the command line is otherwise the §10.4 one
  cfg.vsock = false;   // no /dev/vhost-vsock on CI hosts
  QemuVmSpec vm;
  vm.vm_id = "6d1c5e0a-qemu-boot-test";
  vm.vm_dir = wd;
  vm.vcpu = 1;
  vm.memory_mb = 256;
  vm.disk_gb = 1;
  uint16_t host_port = free_port();
  vm.ports.push_back({"tcp", "127.0.0.1", host_port, 9100});

  ASSERT_TRUE(prepare_work_dir(cfg, *image, vm).ok());
  auto hda = read_file(wd + "/hda.img");
  ASSERT_TRUE(hda.ok());
  EXPECT_EQ(hda->substr(0, 4), std::string("QFI\xfb")) << "hda.img is not qcow2";
  ASSERT_TRUE(fs::is_directory(wd + "/shared"));

  auto argv = build_qemu_argv(cfg, *image, vm);
  ASSERT_TRUE(argv.ok()) << argv.error().message;
  auto t0 = std::chrono::steady_clock::now();
  auto proc = QemuProcess::spawn(*argv, wd);
  ASSERT_TRUE(proc.ok()) << proc.error().message;
  pid_t pid = proc->pid();
  EXPECT_EQ(read_file(wd + "/qemu.pid").value_or(""), std::to_string(pid) + "\n");

  auto st = wait_for_log(wd + "/serial.log", "DSTACK-QEMU-GUEST-READY", std::chrono::seconds(150), &*proc);
  auto serial = read_file(wd + "/serial.log").value_or("");
  ASSERT_TRUE(st.ok()) << st.error().message << "\nserial.log:\n" << serial << "\nstderr.log:\n"
                       << read_file(wd + "/stderr.log").value_or("");
  auto boot_ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count();
  std::cout << "[ info ] guest ready after " << boot_ms << " ms under TCG\n";
  EXPECT_NE(serial.find("DSTACK-QEMU-GUEST-UP"), std::string::npos);
  EXPECT_NE(serial.find("SMBIOS: sys_vendor=dstack product_name=dstack"), std::string::npos) << serial;
  EXPECT_NE(serial.find("DISKS: vda vdb"), std::string::npos) << serial;
  EXPECT_NE(serial.find("HOST-SHARE-DEVICE: present"), std::string::npos) << serial;

  // The port mapping: host 127.0.0.1:<host_port> -> guest :9100 (busybox httpd).
  std::string resp;
  for (int i = 0; i < 20 && resp.find("dstack-qemu-guest-ok") == std::string::npos; ++i) {
    resp = http_get(host_port);
    if (resp.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(500));
  }
  EXPECT_NE(resp.find("dstack-qemu-guest-ok"), std::string::npos) << "hostfwd response: " << resp;

  ASSERT_TRUE(proc->stop(std::chrono::seconds(5)).ok());
  EXPECT_FALSE(proc->running());
  EXPECT_FALSE(fs::exists(wd + "/qemu.pid"));
  EXPECT_NE(::kill(pid, 0), 0) << "QEMU pid " << pid << " still exists after stop()";
}

TEST(QemuBoot, SpawnReportsImmediateQemuFailure) {
  char tmpl[] = "/tmp/qemufail-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  std::string wd = tmpl;
  // A "QEMU" that dies at once with a message: the error must carry its stderr.
  auto r = QemuProcess::spawn({"sh", "-c", "echo 'qemu-system-x86_64: -object tdx-guest: invalid object type' >&2; exit 1"},
                              wd);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("invalid object type"), std::string::npos) << r.error().message;
  EXPECT_NE(r.error().message.find("exit code 1"), std::string::npos);
  EXPECT_FALSE(fs::exists(wd + "/qemu.pid"));
  auto missing = QemuProcess::spawn({"/nonexistent/qemu"}, wd);
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.error().message.find("cannot execute"), std::string::npos) << missing.error().message;
  fs::remove_all(wd);
}

TEST(QemuBoot, StopEscalatesToSigkill) {
  char tmpl[] = "/tmp/qemukill-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  std::string wd = tmpl;
  auto p = QemuProcess::spawn({"sh", "-c", "trap '' TERM; while true; do sleep 0.1; done"}, wd);
  ASSERT_TRUE(p.ok()) << p.error().message;
  pid_t pid = p->pid();
  auto t0 = std::chrono::steady_clock::now();
  ASSERT_TRUE(p->stop(std::chrono::milliseconds(300)).ok());
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(3));
  ASSERT_TRUE(p->exit_status().has_value());
  EXPECT_TRUE(WIFSIGNALED(*p->exit_status()));
  EXPECT_EQ(WTERMSIG(*p->exit_status()), SIGKILL);
  EXPECT_NE(::kill(pid, 0), 0);
  fs::remove_all(wd);
}
