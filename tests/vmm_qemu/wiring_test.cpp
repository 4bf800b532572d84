// dstack-vmm with [cvm] backend = "qemu": make_backend() builds the QEMU backend from the vmm.toml text, CreateVm
// execs the spec §10.4 command line (recorded in <vm-dir>/launch.json and by a fake QEMU), the guest gets the vsock
// host API URL, QEMU's own output goes to stdout.log while serial.log stays the console, CIDs are stable per VM
// and released on RemoveVm, and `dstack-vmm doctor` works.
#include <gtest/gtest.h>

#include <sys/stat.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>

#include "base/fs.h"
#include "vmm/backend.h"
#include "vmm/config.h"
#include "rpc/http.h"
#include "vmm/qemu/process.h"
#include "vmm/qemu/qemu_backend.h"
#include "vmm/vmm.h"
#include "../vmm/vmm_test_util.h"

using namespace dstack;
using namespace dstack::vmm;
using namespace vmmtest;
using Json = nlohmann::json;

namespace {

void write_exe(const std::string& path, const std::string& text) {
  ASSERT_TRUE(write_file_atomic(path, text).ok());
  ASSERT_EQ(::chmod(path.c_str(), 0755), 0);
}

bool contains(const std::vector<std::string>& v, const std::string& s) { return std::find(v.begin(), v.end(), s) != v.end(); }

// The value following `flag` whose text contains `needle` (flags like -device repeat).
std::string arg_after(const std::vector<std::string>& v, const std::string& flag, const std::string& needle = "") {
  for (size_t i = 0; i + 1 < v.size(); ++i)
    if (v[i] == flag && v[i + 1].find(needle) != std::string::npos) return v[i + 1];
  return "";
}

struct QemuVmm {
  TempDir tmp;
  std::string bin;
  VmmConfig cfg;
  qemu::QemuBackend* qb = nullptr;
  std::unique_ptr<VmManager> m;

  QemuVmm() {
    bin = tmp.path + "/bin";
    EXPECT_TRUE(make_dirs(bin).ok());
    // Fake QEMU, found through PATH (qemu_path unset): records its argv, writes a console line the way
    // -chardev logfile would, prints to its own stdout/stderr, powers off on SIGTERM.
    write_exe(bin + "/qemu-system-x86_64",
              "#!/bin/sh\n"
              "if [ \"$1\" = -version ]; then echo 'QEMU emulator version 8.2.2 (fake)'; exit 0; fi\n"
              "printf '%s\\n' \"$@\" > qemu-args.txt\n"
              "echo 'fake qemu: stdout line'\n"
              "echo 'fake qemu: stderr line' >&2\n"
              "echo 'guest: dstack boot marker' >> serial.log\n"
              "trap 'echo guest: powering off >> serial.log; exit 0' TERM\n"
              "while :; do sleep 0.2 & wait $!; done\n");
    write_exe(bin + "/fake-qemu-img",
              "#!/bin/sh\n[ \"$1\" = create ] || exit 2\n"
              "for a in \"$@\"; do prev2=$prev; prev=$a; done\n"
              "echo \"fake qcow2 $prev\" > \"$prev2\"\n");
    const char* path = std::getenv("PATH");
    ::setenv("PATH", (bin + ":" + (path ? path : "/usr/bin:/bin")).c_str(), 1);

    cfg = vmm_config(tmp.path);
    std::string toml = "[cvm]\nbackend = \"qemu\"\nqemu_img_path = \"" + bin + "/fake-qemu-img\"\n"
                       "platform = \"none\"\naccel = \"tcg\"\ncid_start = 3000\ncid_pool_size = 2\n"
                       "[cvm.networking]\nnet = \"10.0.9.0/24\"\ndhcp_start = \"10.0.9.15\"\n"
                       "[host_api]\nport = 10123\n";
    auto s = apply_toml(cfg, toml, "test-vmm.toml");
    EXPECT_TRUE(s.ok()) << s.error().message;
    cfg.cvm.port_mapping.range = {{"tcp", 1024, 65535}};
    cfg.cvm.auto_restart.enabled = false;
    auto be = make_backend(cfg);
    EXPECT_TRUE(be.ok()) << be.error().message;
    if (!be.ok()) return;
    qb = dynamic_cast<qemu::QemuBackend*>(be->get());
    EXPECT_NE(qb, nullptr);
    EXPECT_EQ((*be)->name(), "qemu");
    m = std::make_unique<VmManager>(cfg, std::move(*be));
    EXPECT_TRUE(m->load().ok());
  }
  Result<std::string> create(const std::string& name, std::vector<int> ports = {}) {
    auto compose = render_app_compose(compose_options());
    EXPECT_TRUE(compose.ok());
    auto req = create_request(name, *compose);
    for (int p : ports)
      req["ports"].push_back({{"protocol", "tcp"}, {"host_address", "127.0.0.1"}, {"host_port", p}, {"vm_port", 80}});
    return m->create_vm(req);
  }
  std::string status(const std::string& id) const { return m->get_info(id)["info"]["status"].get<std::string>(); }
};

}  // namespace

TEST(VmmQemuWiring, CreateVmLaunchesQemuCommandLineAndLifecycleWorks) {
  QemuVmm f;
  ASSERT_NE(f.qb, nullptr);
  auto id = f.create("web", {18080});
  ASSERT_TRUE(id.ok()) << id.error().message;
  std::string dir = f.m->vm_dir(*id);
  ASSERT_TRUE(wait_for([&] { return fs::exists(dir + "/qemu-args.txt") && fs::file_size(dir + "/qemu-args.txt") > 0; }))
      << tail_lines(dir + "/serial.log", 20);

  // Launch record = what the VMM exec'ed; the fake QEMU saw exactly those arguments.
  auto rec = Json::parse(*read_file(dir + "/launch.json"));
  EXPECT_EQ(rec["backend"], "qemu");
  EXPECT_EQ(rec["stdout"], "stdout.log");
  EXPECT_EQ(rec["cwd"], dir);
  auto argv = rec["argv"].get<std::vector<std::string>>();
  ASSERT_FALSE(argv.empty());
  EXPECT_EQ(argv[0], f.bin + "/qemu-system-x86_64");  // bare name resolved through PATH
  std::vector<std::string> seen;
  ASSERT_TRUE(wait_for([&] {
    seen.clear();
    std::ifstream in(dir + "/qemu-args.txt");
    for (std::string l; std::getline(in, l);) seen.push_back(l);
    return seen.size() + 1 == argv.size();
  }));
  EXPECT_EQ(std::vector<std::string>(argv.begin() + 1, argv.end()), seen);

  // Spec §10.4 fields for platform none + accel tcg.
  EXPECT_EQ(arg_after(argv, "-accel"), "tcg");
  EXPECT_EQ(arg_after(argv, "-cpu"), "max");
  EXPECT_TRUE(contains(argv, "-nographic"));
  EXPECT_TRUE(contains(argv, "-nodefaults"));
  EXPECT_EQ(arg_after(argv, "-chardev"), "pty,id=com0,path=" + dir + "/serial.pty,logfile=" + dir + "/serial.log,logappend=on");
  EXPECT_EQ(arg_after(argv, "-serial"), "chardev:com0");
  EXPECT_EQ(arg_after(argv, "-kernel"), f.cfg.image.path + "/img-1/bzImage");
  EXPECT_EQ(arg_after(argv, "-initrd"), f.cfg.image.path + "/img-1/initramfs.cpio.gz");
  EXPECT_EQ(arg_after(argv, "-drive", "hda.img"), "file=" + dir + "/hda.img,if=none,id=hd1");
  EXPECT_EQ(arg_after(argv, "-netdev"),
            "user,id=net0,net=10.0.9.0/24,dhcpstart=10.0.9.15,restrict=no,hostfwd=tcp:127.0.0.1:18080-:80");
  EXPECT_EQ(arg_after(argv, "-device", "virtio-net-pci"), "virtio-net-pci,netdev=net0,mac=" + qemu::mac_from_vm_id(*id));
  EXPECT_EQ(arg_after(argv, "-device", "vhost-vsock"), "vhost-vsock-pci,guest-cid=3000");
  EXPECT_EQ(arg_after(argv, "-virtfs"),
            "local,path=" + dir + "/shared,mount_tag=host-shared,readonly=off,security_model=mapped,id=virtfs0");
  EXPECT_EQ(arg_after(argv, "-machine"), "q35,kernel-irqchip=split,hpet=off");  // no TDX object
  EXPECT_EQ(arg_after(argv, "-object", "tdx"), "");
  EXPECT_EQ(arg_after(argv, "-smp"), "1");
  EXPECT_EQ(arg_after(argv, "-m"), "512M");
  EXPECT_EQ(arg_after(argv, "-append"), "console=ttyS0");
  EXPECT_EQ(*read_file(dir + "/hda.img"), "fake qcow2 1G\n");  // created with qemu-img

  // The guest reaches the host API over vsock; the relay maps CID 3000 to this VM's host-api.sock.
  auto sys = Json::parse(*read_file(dir + "/shared/.sys-config.json"));
  EXPECT_EQ(sys["host_api_url"], "vsock://2:10123/api");
  EXPECT_EQ(f.qb->vm_of_cid(3000), *id);
  ASSERT_TRUE(wait_for([&] { return fs::exists(dir + "/host-api.sock"); }));
  EXPECT_EQ(f.qb->host_api_socket_of_cid(3000).value_or(""), dir + "/host-api.sock");
  EXPECT_FALSE(f.qb->host_api_socket_of_cid(3001).has_value());

  // Console vs. QEMU's own output.
  ASSERT_TRUE(wait_for([&] { return read_file(dir + "/stdout.log").value_or("").find("stderr line") != std::string::npos; }));
  std::string out = *read_file(dir + "/stdout.log");
  EXPECT_NE(out.find("fake qemu: stdout line"), std::string::npos) << out;
  std::string serial = f.m->tail_log(*id, 100);
  EXPECT_NE(serial.find("[vmm] starting web"), std::string::npos) << serial;
  EXPECT_NE(serial.find("guest: dstack boot marker"), std::string::npos) << serial;
  EXPECT_EQ(serial.find("fake qemu:"), std::string::npos) << serial;
  EXPECT_EQ(f.status(*id), "running");

  // Stop (SIGTERM -> clean exit), start again: same CID.
  ASSERT_TRUE(f.m->stop_vm(*id, false).ok());
  EXPECT_EQ(f.status(*id), "stopped");
  EXPECT_NE(read_file(dir + "/serial.log")->find("guest: powering off"), std::string::npos);
  ASSERT_TRUE(f.m->start_vm(*id).ok());
  ASSERT_TRUE(wait_for([&] { return f.status(*id) == "running" && fs::exists(dir + "/runner.pid"); }));
  auto rec2 = Json::parse(*read_file(dir + "/launch.json"));
  EXPECT_TRUE(contains(rec2["argv"].get<std::vector<std::string>>(), "vhost-vsock-pci,guest-cid=3000"));

  // Pool of 2: the third VM cannot get a CID and says why.
  auto id2 = f.create("second");
  ASSERT_TRUE(id2.ok()) << id2.error().message;
  ASSERT_TRUE(wait_for([&] { return fs::exists(f.m->vm_dir(*id2) + "/launch.json"); }));
  EXPECT_EQ(f.qb->vm_of_cid(3001), *id2);
  auto id3 = f.create("third");
  ASSERT_TRUE(id3.ok()) << id3.error().message;
  ASSERT_TRUE(wait_for([&] { return f.status(*id3) == "exited"; }));
  EXPECT_NE(f.m->get_info(*id3)["info"]["boot_error"].get<std::string>().find("CID pool exhausted"), std::string::npos)
      << f.m->get_info(*id3).dump();

  // RemoveVm kills QEMU, deletes the dir and releases the CID; the third VM can then start with it.
  pid_t pid = static_cast<pid_t>(std::atol(read_file(dir + "/runner.pid")->c_str()));
  ASSERT_GT(pid, 0);
  ASSERT_TRUE(f.m->remove_vm(*id).ok());
  EXPECT_FALSE(fs::exists(dir));
  EXPECT_NE(::kill(pid, 0), 0);
  EXPECT_EQ(f.qb->vm_of_cid(3000), "");
  ASSERT_TRUE(f.m->start_vm(*id3).ok());
  ASSERT_TRUE(wait_for([&] { return f.status(*id3) == "running" && f.qb->vm_of_cid(3000) == *id3; }));
  f.m->shutdown();
  EXPECT_EQ(f.status(*id3), "stopped");
}

TEST(VmmQemuWiring, ConfigErrorsAndDoctorSubcommand) {
  TempDir tmp;
  VmmConfig cfg;
  ASSERT_TRUE(apply_toml(cfg, "[cvm]\nbackend = \"qemu\"\nplatform = \"sev\"\n", "bad.toml").ok());
  auto be = make_backend(cfg);
  ASSERT_FALSE(be.ok());
  EXPECT_NE(be.error().message.find("platform = \"sev\" is not supported"), std::string::npos) << be.error().message;
  VmmConfig cfg2;
  cfg2.cvm.backend = "firecracker";
  auto be2 = make_backend(cfg2);
  ASSERT_FALSE(be2.ok());
  EXPECT_NE(be2.error().message.find("supported: sim, qemu"), std::string::npos);

  // `dstack-vmm doctor` = dstack-vmm-doctor, on an empty fake host root: not ready (exit 2), JSON report.
  std::string vmm_bin = std::string(DSTACK_BIN_DIR) + "/dstack-vmm";
  ASSERT_TRUE(file_exists(vmm_bin)) << vmm_bin << " not built";
  ASSERT_TRUE(make_dirs(tmp.path + "/root").ok());
  auto [rc, out] = run({vmm_bin, "doctor", "--json", "--root", tmp.path + "/root", "--qemu", tmp.path + "/no-qemu"},
                       tmp.path + "/doctor.log");
  EXPECT_EQ(rc, 2) << out;
  auto j = Json::parse(out, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << out;
  EXPECT_EQ(j["tdx_ready"], false);
  bool saw_qemu = false;
  for (const auto& c : j["checks"])
    if (c["id"] == "qemu") saw_qemu = c["status"] == "fail";
  EXPECT_TRUE(saw_qemu) << out;
  auto [rc2, out2] = run({std::string(DSTACK_BIN_DIR) + "/dstack-vmm-doctor", "--json", "--root", tmp.path + "/root",
                          "--qemu", tmp.path + "/no-qemu"},
                         tmp.path + "/doctor2.log");
  EXPECT_EQ(rc2, rc);
  auto j2 = Json::parse(out2, nullptr, false);
  ASSERT_FALSE(j2.is_discarded()) << out2;
  EXPECT_EQ(j2["checks"].size(), j["checks"].size());
  // ... and from the CLI.
  auto [rc3, out3] = run({std::string(DSTACK_BIN_DIR) + "/vmm-cli", "doctor", "--json", "--root", tmp.path + "/root",
                          "--qemu", tmp.path + "/no-qemu"},
                         tmp.path + "/doctor3.log");
  EXPECT_EQ(rc3, 2) << out3;
  auto j3 = Json::parse(out3, nullptr, false);
  ASSERT_FALSE(j3.is_discarded()) << out3;
  EXPECT_EQ(j3["checks"].size(), j["checks"].size());
}

// The real QEMU (where installed) driven by the VMM: tiny kernel + initramfs from scripts/qemu-test-image.sh under
// TCG, platform "none", through CreateVm: guest marker on the console, hostfwd port mapping, stop, remove.
TEST(VmmQemuWiring, RealQemuBootsThroughTheVmm) {
  std::string qemu_exe;
  for (const char* d : {"/usr/bin", "/usr/local/bin", "/bin"})
    if (::access((std::string(d) + "/qemu-system-x86_64").c_str(), X_OK) == 0) qemu_exe = std::string(d) + "/qemu-system-x86_64";
  if (qemu_exe.empty()) GTEST_SKIP() << "qemu-system-x86_64 not installed (apt-get install qemu-system-x86)";
  std::string img_dir = fs::path(DSTACK_BIN_DIR).parent_path().string() + "/qemu-test-image";
  // Same image as QemuBoot (boot_test.cpp); flock serializes the (idempotent) build between the two tests.
  auto built = qemu::run_command({"flock", img_dir + ".lock", "bash", std::string(DSTACK_SOURCE_DIR) + "/scripts/qemu-test-image.sh", img_dir},
                                 std::chrono::minutes(5));
  ASSERT_TRUE(built.ok()) << "building the test image failed: " << built.error().message;

  TempDir tmp;
  VmmConfig cfg;
  cfg.run_path = tmp.path + "/run";
  cfg.image.path = fs::path(img_dir).parent_path().string();
  std::string toml = "[cvm]\nbackend = \"qemu\"\nqemu_path = \"" + qemu_exe + "\"\nplatform = \"none\"\n"
                     "accel = \"tcg\"\nvsock = false\nstop_timeout_secs = 5\n"
                     "[cvm.auto_restart]\nenabled = false\n"
                     "[cvm.port_mapping]\nrange = [{ protocol = \"tcp\", from = 1024, to = 65535 }]\n";
  ASSERT_TRUE(apply_toml(cfg, toml, "real-qemu.toml").ok());
  auto be = make_backend(cfg);
  ASSERT_TRUE(be.ok()) << be.error().message;
  VmManager m(cfg, std::move(*be));
  ASSERT_TRUE(m.load().ok());
  auto compose = render_app_compose(compose_options());
  ASSERT_TRUE(compose.ok());
  auto req = create_request("tiny", *compose);
  req["image"] = fs::path(img_dir).filename().string();
  req["memory"] = 256;
  uint16_t host_port = free_port();
  req["ports"].push_back({{"protocol", "tcp"}, {"host_address", "127.0.0.1"}, {"host_port", host_port}, {"vm_port", 9100}});
  auto t0 = std::chrono::steady_clock::now();
  auto id = m.create_vm(req);
  ASSERT_TRUE(id.ok()) << id.error().message;
  std::string dir = m.vm_dir(*id);
  bool ready = wait_for([&] { return m.tail_log(*id, 0).find("DSTACK-QEMU-GUEST-READY") != std::string::npos; }, 150000);
  std::string serial = m.tail_log(*id, 0);
  ASSERT_TRUE(ready) << "serial.log:\n" << serial << "\nstdout.log:\n" << read_file(dir + "/stdout.log").value_or("")
                     << "\ninfo: " << m.get_info(*id).dump();
  std::cout << "[ info ] guest ready "
            << std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count()
            << " ms after CreateVm (TCG)\n";
  EXPECT_NE(serial.find("[vmm] starting tiny"), std::string::npos);
  EXPECT_NE(serial.find("DSTACK-QEMU-GUEST-UP"), std::string::npos);
  EXPECT_EQ(m.get_info(*id)["info"]["status"], "running");
  EXPECT_TRUE(fs::exists(dir + "/stdout.log"));
  auto rec = Json::parse(*read_file(dir + "/launch.json"));
  EXPECT_EQ(rec["argv"][0], qemu_exe);
  std::string resp;
  for (int i = 0; i < 20 && resp.find("dstack-qemu-guest-ok") == std::string::npos; ++i) {
    rpc::ClientOptions o;
    o.timeout = std::chrono::seconds(5);
    auto r = rpc::http_request("GET", "http://127.0.0.1:" + std::to_string(host_port) + "/", "", o);
    resp = r.ok() ? r->body : "";
    if (resp.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(500));
  }
  EXPECT_NE(resp.find("dstack-qemu-guest-ok"), std::string::npos) << "hostfwd response: " << resp;

  pid_t pid = static_cast<pid_t>(std::atol(read_file(dir + "/runner.pid").value_or("-1").c_str()));
  ASSERT_GT(pid, 0);
  ASSERT_TRUE(m.stop_vm(*id, false).ok());
  EXPECT_EQ(m.get_info(*id)["info"]["status"], "stopped");
  EXPECT_NE(::kill(pid, 0), 0) << "QEMU pid " << pid << " still exists after StopVm";
  ASSERT_TRUE(m.remove_vm(*id).ok());
  EXPECT_FALSE(fs::exists(dir));
}
