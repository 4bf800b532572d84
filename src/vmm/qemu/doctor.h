// `dstack-vmm doctor`: can this host run TDX guests with the QEMU backend? Each check has a status and, when it
// fails, the remedy (wording from the deployment guide's troubleshooting section). All paths are looked up under
// `root` so tests can point it at a fake /sys + /dev tree.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace dstack::vmm::qemu {

enum class CheckStatus { Ok, Warn, Fail };
const char* to_string(CheckStatus s);  // "ok" | "warn" | "fail"

struct DoctorCheck {
  std::string id;        // "kvm_intel_tdx", "dev_kvm", "qemu", "qemu_tdx_guest", "ovmf", "sgx", "vsock"
  std::string title;
  CheckStatus status = CheckStatus::Fail;
  std::string detail;    // what was found
  std::string remedy;    // what to do (empty when ok)
};

struct DoctorOptions {
  std::string root = "/";            // prefix for /sys and /dev
  std::string qemu_path;             // "" -> qemu-system-x86_64 in PATH
  std::vector<std::string> bios_candidates;  // image bios files (metadata.json "bios"); common OVMF paths are added
  bool add_common_ovmf_paths = true;
};

struct DoctorReport {
  std::vector<DoctorCheck> checks;
  bool tdx_ready = false;       // every TDX-critical check (kvm_intel_tdx, dev_kvm, qemu, qemu_tdx_guest, ovmf) ok
  bool local_key_provider_ready = false;  // SGX devices present
  std::string verdict;          // one paragraph for humans
  nlohmann::ordered_json to_json() const;
  std::string to_text() const;
};

// Common OVMF locations checked in addition to the image's bios.
std::vector<std::string> common_ovmf_paths();

DoctorReport run_doctor(const DoctorOptions& opts);

// CLI entry used by apps/dstack-vmm-doctor and `dstack-vmm doctor`: args after the program/subcommand name.
// Options: --root DIR, --qemu PATH, --bios FILE (repeatable), --image-dir DIR (repeatable: reads its metadata.json
// bios), --json. Prints the report to stdout; returns 0 if TDX guests can run, 2 if not, 1 on usage error.
int doctor_main(int argc, char** argv);

}  // namespace dstack::vmm::qemu
