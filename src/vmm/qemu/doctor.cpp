#include "vmm/qemu/doctor.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <sstream>

#include "base/fs.h"
#include "vmm/qemu/cmdline.h"
#include "vmm/qemu/process.h"

namespace dstack::vmm::qemu {
namespace {

namespace fs = std::filesystem;

const char kSgxRemedy[] =
    "SGX not enabled in BIOS: check with `ls -la /dev/sgx*`; if the devices are missing, enable SGX in the BIOS "
    "(see the TDX & SGX BIOS configuration guide). Also enable \"SGX Auto MP Registration\" so the platform is "
    "registered with Intel's PCS, otherwise the local key provider's quotes cannot be verified.";

std::string under(const std::string& root, const std::string& path) {
  if (root.empty() || root == "/") return path;
  return (fs::path(root) / fs::path(path).relative_path()).string();
}

std::string trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ' || s.back() == '\r')) s.pop_back();
  return s;
}

bool exists(const std::string& p) {
  std::error_code ec;
  return fs::exists(p, ec);
}

// OVMF builds with TDX support carry the TDX metadata GUID e47a6535-984a-4798-865e-4685a7bf8ec2 (on-disk byte order).
bool has_tdx_metadata(const std::string& file) {
  static const unsigned char guid[16] = {0x35, 0x65, 0x7a, 0xe4, 0x4a, 0x98, 0x98, 0x47,
                                         0x86, 0x5e, 0x46, 0x85, 0xa7, 0xbf, 0x8e, 0xc2};
  auto data = read_file(file);
  if (!data.ok()) return false;
  std::string_view needle(reinterpret_cast<const char*>(guid), sizeof guid);
  return data->find(needle) != std::string::npos;
}

DoctorCheck check_kvm_intel_tdx(const std::string& root) {
  DoctorCheck c{"kvm_intel_tdx", "KVM TDX host support (kvm_intel tdx parameter)", CheckStatus::Fail, "", ""};
  std::string param = under(root, "/sys/module/kvm_intel/parameters/tdx");
  if (exists(param)) {
    std::string v = trim(read_file(param).value_or(""));
    c.detail = "/sys/module/kvm_intel/parameters/tdx = " + v;
    if (v == "Y" || v == "y" || v == "1") {
      c.status = CheckStatus::Ok;
    } else {
      c.remedy = "TDX is disabled in kvm_intel: enable TDX in the BIOS, then load the module with tdx=1 "
                 "(e.g. `options kvm_intel tdx=1` in /etc/modprobe.d/kvm.conf and reload kvm_intel or reboot)";
    }
  } else if (exists(under(root, "/sys/module/kvm_intel"))) {
    c.detail = "kvm_intel is loaded but has no tdx parameter";
    c.remedy = "this kernel has no TDX host support: install a TDX-enabled host kernel (Linux >= 6.16 or the "
               "vendor's TDX kernel) and enable TDX in the BIOS";
  } else {
    c.detail = "kvm_intel is not loaded (no /sys/module/kvm_intel)";
    c.remedy = "not an Intel VT-x host or running inside a VM without nested TDX: run dstack-vmm on a bare-metal "
               "Intel Xeon (4th gen or newer) host with TDX enabled in the BIOS";
  }
  return c;
}

DoctorCheck check_dev_kvm(const std::string& root) {
  DoctorCheck c{"dev_kvm", "/dev/kvm", CheckStatus::Fail, "", ""};
  std::string p = under(root, "/dev/kvm");
  if (!exists(p)) {
    c.detail = "/dev/kvm is missing";
    c.remedy = "load kvm_intel (modprobe kvm_intel) and enable virtualization (VT-x) in the BIOS";
  } else if (::access(p.c_str(), R_OK | W_OK) != 0) {
    c.detail = "/dev/kvm exists but is not read/writable by this user";
    c.remedy = "add the VMM user to the kvm group (usermod -aG kvm <user>) or run dstack-vmm as that user";
  } else {
    c.status = CheckStatus::Ok;
    c.detail = "/dev/kvm is present and accessible";
  }
  return c;
}

std::string resolve_in_path(const std::string& name) {
  if (name.find('/') != std::string::npos) return name;
  const char* path = std::getenv("PATH");
  std::stringstream ss(path ? path : "/usr/bin:/bin");
  std::string dir;
  while (std::getline(ss, dir, ':')) {
    std::string f = dir + "/" + name;
    if (::access(f.c_str(), X_OK) == 0) return f;
  }
  return "";
}

void check_qemu(const std::string& qemu_path, DoctorReport& r) {
  DoctorCheck q{"qemu", "QEMU (qemu-system-x86_64)", CheckStatus::Fail, "", ""};
  DoctorCheck t{"qemu_tdx_guest", "QEMU supports -object tdx-guest", CheckStatus::Fail, "", ""};
  std::string exe = resolve_in_path(qemu_path.empty() ? "qemu-system-x86_64" : qemu_path);
  if (exe.empty() || ::access(exe.c_str(), X_OK) != 0) {
    q.detail = (qemu_path.empty() ? std::string("qemu-system-x86_64 not found in PATH") : qemu_path + " not found");
    q.remedy = "install QEMU (apt-get install qemu-system-x86; TDX needs QEMU >= 10.1 or the vendor's TDX build) "
               "or set [cvm] qemu_path";
    t.detail = "QEMU not found";
    t.remedy = q.remedy;
    r.checks.push_back(q);
    r.checks.push_back(t);
    return;
  }
  auto ver = run_command({exe, "-version"}, std::chrono::seconds(10));
  if (!ver.ok()) {
    q.detail = exe + ": " + ver.error().message;
    q.remedy = "reinstall QEMU or fix [cvm] qemu_path";
  } else {
    std::string first = ver->substr(0, ver->find('\n'));
    q.status = CheckStatus::Ok;
    q.detail = exe + ": " + first;
  }
  r.checks.push_back(q);
  auto objs = run_command({exe, "-object", "help"}, std::chrono::seconds(10));
  if (!objs.ok()) {
    t.detail = "`" + exe + " -object help` failed: " + objs.error().message;
    t.remedy = "use a QEMU build with TDX support (QEMU >= 10.1 or the vendor's TDX build)";
  } else if (objs->find("tdx-guest") != std::string::npos) {
    t.status = CheckStatus::Ok;
    t.detail = "tdx-guest is listed by `-object help`";
  } else {
    t.detail = "tdx-guest is not among QEMU's object types (this QEMU has no TDX support)";
    t.remedy = "install a QEMU with TDX support (QEMU >= 10.1 or the vendor's TDX build) and point [cvm] qemu_path "
               "at it";
  }
  r.checks.push_back(t);
}

DoctorCheck check_ovmf(const DoctorOptions& o) {
  DoctorCheck c{"ovmf", "OVMF firmware with TDX support", CheckStatus::Fail, "", ""};
  std::vector<std::string> cands = o.bios_candidates;
  if (o.add_common_ovmf_paths)
    for (const auto& p : common_ovmf_paths()) cands.push_back(under(o.root, p));
  std::vector<std::string> found, tdx;
  for (const auto& p : cands) {
    if (p.empty() || !exists(p)) continue;
    found.push_back(p);
    if (has_tdx_metadata(p)) tdx.push_back(p);
  }
  if (!tdx.empty()) {
    c.status = CheckStatus::Ok;
    c.detail = "TDX metadata found in " + tdx.front();
  } else if (!found.empty()) {
    c.status = CheckStatus::Fail;
    c.detail = "OVMF found (" + found.front() + ") but it has no TDX metadata";
    c.remedy = "use the image's bios (dstack images ship a TDX OVMF: metadata.json \"bios\") or install an OVMF "
               "built with TDX support";
  } else {
    c.detail = "no OVMF found (checked the image bios and common OVMF paths)";
    c.remedy = "unpack a dstack guest image into [image] path (its metadata.json names the TDX OVMF as \"bios\")";
  }
  return c;
}

DoctorCheck check_sgx(const std::string& root) {
  DoctorCheck c{"sgx", "SGX devices for the local key provider", CheckStatus::Warn, "", ""};
  bool enclave = exists(under(root, "/dev/sgx_enclave"));
  bool provision = exists(under(root, "/dev/sgx_provision"));
  if (enclave && provision) {
    c.status = CheckStatus::Ok;
    c.detail = "/dev/sgx_enclave and /dev/sgx_provision present";
  } else {
    c.detail = std::string("missing:") + (enclave ? "" : " /dev/sgx_enclave") + (provision ? "" : " /dev/sgx_provision");
    c.remedy = kSgxRemedy;
  }
  return c;
}

DoctorCheck check_vsock(const std::string& root) {
  DoctorCheck c{"vsock", "vhost-vsock (host API, quote generation socket)", CheckStatus::Fail, "", ""};
  if (exists(under(root, "/dev/vhost-vsock"))) {
    c.status = CheckStatus::Ok;
    c.detail = "/dev/vhost-vsock present";
  } else {
    c.detail = "/dev/vhost-vsock is missing";
    c.remedy = "modprobe vhost_vsock (guests reach the VMM host API on vsock port 10000 and the QGS on 4050)";
  }
  return c;
}

}  // namespace

const char* to_string(CheckStatus s) {
  switch (s) {
    case CheckStatus::Ok: return "ok";
    case CheckStatus::Warn: return "warn";
    case CheckStatus::Fail: return "fail";
  }
  return "?";
}

std::vector<std::string> common_ovmf_paths() {
  return {"/usr/share/ovmf/OVMF.fd",        "/usr/share/ovmf/OVMF.tdx.fd",      "/usr/share/OVMF/OVMF_CODE.fd",
          "/usr/share/OVMF/OVMF.inteltdx.fd", "/usr/share/qemu/OVMF.fd",        "/usr/share/edk2/ovmf/OVMF.inteltdx.fd",
          "/usr/share/edk2/ovmf/OVMF_CODE.fd"};
}

DoctorReport run_doctor(const DoctorOptions& o) {
  DoctorReport r;
  r.checks.push_back(check_kvm_intel_tdx(o.root));
  r.checks.push_back(check_dev_kvm(o.root));
  check_qemu(o.qemu_path, r);
  r.checks.push_back(check_ovmf(o));
  r.checks.push_back(check_sgx(o.root));
  r.checks.push_back(check_vsock(o.root));
  std::vector<std::string> missing;
  for (const auto& c : r.checks)
    if (c.id != "sgx" && c.status != CheckStatus::Ok) missing.push_back(c.id);
  r.tdx_ready = missing.empty();
  r.local_key_provider_ready = std::any_of(r.checks.begin(), r.checks.end(), [](const DoctorCheck& c) {
    return c.id == "sgx" && c.status == CheckStatus::Ok;
  });
  if (r.tdx_ready) {
    r.verdict = "This host can run TDX guests: set [cvm] backend = \"qemu\", platform = \"tdx\".";
    if (!r.local_key_provider_ready)
      r.verdict += " SGX is missing, so the local key provider (and KMS bootstrap quotes) will not work.";
  } else {
    std::string list;
    for (const auto& m : missing) list += (list.empty() ? "" : ", ") + m;
    r.verdict = "TDX is NOT available on this host (failed: " + list +
                "). TDX guests cannot run here; use the simulator backend ([cvm] backend = \"sim\", dstack-cvm-sim), "
                "which is what works on this machine.";
  }
  return r;
}

nlohmann::ordered_json DoctorReport::to_json() const {
  nlohmann::ordered_json j;
  j["tdx_ready"] = tdx_ready;
  j["local_key_provider_ready"] = local_key_provider_ready;
  j["verdict"] = verdict;
  j["checks"] = nlohmann::ordered_json::array();
  for (const auto& c : checks)
    j["checks"].push_back(
        {{"id", c.id}, {"title", c.title}, {"status", to_string(c.status)}, {"detail", c.detail}, {"remedy", c.remedy}});
  return j;
}

std::string DoctorReport::to_text() const {
  std::string s;
  for (const auto& c : checks) {
    std::string tag = c.status == CheckStatus::Ok ? "[ ok ]" : c.status == CheckStatus::Warn ? "[warn]" : "[FAIL]";
    s += tag + " " + c.title + ": " + c.detail + "\n";
    if (!c.remedy.empty()) s += "       fix: " + c.remedy + "\n";
  }
  s += "\n" + verdict + "\n";
  return s;
}

int doctor_main(int argc, char** argv) {
  DoctorOptions o;
  bool json = false;
  for (int i = 0; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> const char* { return i + 1 < argc ? argv[++i] : nullptr; };
    if (a == "--json") {
      json = true;
    } else if (a == "--root" || a == "--qemu" || a == "--bios" || a == "--image-dir") {
      const char* v = next();
      if (!v) {
        std::cerr << a << " needs a value\n";
        return 1;
      }
      if (a == "--root") o.root = v;
      else if (a == "--qemu") o.qemu_path = v;
      else if (a == "--bios") o.bios_candidates.push_back(v);
      else {
        auto m = load_image_metadata(v);
        if (!m.ok()) {
          std::cerr << "error: " << m.error().message << "\n";
          return 1;
        }
        if (!m->bios.empty()) o.bios_candidates.push_back(m->bios);
      }
    } else if (a == "-h" || a == "--help") {
      std::cout << "usage: dstack-vmm-doctor [--json] [--root DIR] [--qemu PATH] [--bios FILE]... [--image-dir DIR]...\n"
                   "Reports whether this host can run dstack TDX guests with the QEMU backend.\n"
                   "Exit status: 0 TDX ready, 2 not ready, 1 usage error.\n";
      return 0;
    } else {
      std::cerr << "unknown argument " << a << " (try --help)\n";
      return 1;
    }
  }
  DoctorReport r = run_doctor(o);
  if (json) std::cout << r.to_json().dump(2) << "\n";
  else std::cout << r.to_text();
  return r.tdx_ready ? 0 : 2;
}

}  // namespace dstack::vmm::qemu
