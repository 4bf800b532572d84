#include "vmm/backend.h"

#include <unistd.h>

#include <filesystem>

#include "vmm/config.h"
#include "vmm/qemu/qemu_backend.h"

namespace dstack::vmm {
namespace {

std::string self_dir() {
  std::error_code ec;
  auto p = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? std::string(".") : p.parent_path().string();
}

// Simulator backend: the CVM is a sandbox on this machine run by dstack-cvm-sim (contract in backend.h).
class SimBackend : public Backend {
 public:
  SimBackend(std::string runner, std::string registry) : runner_(std::move(runner)), registry_(std::move(registry)) {}
  std::string name() const override { return "sim"; }
  Status check() const override {
    if (::access(runner_.c_str(), X_OK) != 0)
      return make_error("simulator backend runner " + runner_ +
                        " is missing or not executable (build target dstack-cvm-sim, or set [cvm] sim_runner)");
    return Status::Ok();
  }
  Result<LaunchSpec> launch_spec(const LaunchContext& ctx) const override {
    LaunchSpec s;
    s.argv = {runner_, "run", "--vm-dir", ctx.vm_dir};
    s.env = {{"DSTACK_VMM_HOST_API", ctx.host_api_socket},
             {"DSTACK_VMM_IMAGE_DIR", ctx.image_dir},
             {"DSTACK_VMM_VM_ID", ctx.vm_id},
             {"DSTACK_VMM_DOCKER_REGISTRY", registry_}};
    s.cwd = ctx.vm_dir;
    return s;
  }

 private:
  std::string runner_;
  std::string registry_;
};

}  // namespace

Result<std::unique_ptr<Backend>> make_backend(const VmmConfig& config) {
  if (config.cvm.backend == "sim") {
    std::string runner = config.cvm.sim_runner.empty() ? self_dir() + "/dstack-cvm-sim" : config.cvm.sim_runner;
    return std::unique_ptr<Backend>(std::make_unique<SimBackend>(runner, config.cvm.docker_registry));
  }
  if (config.cvm.backend == "qemu") {
    qemu::QemuConfig qc;
    qc.host_api_port = config.host_api.port;
    for (const auto& [origin, text] : config.toml_documents) TRY(qemu::apply_qemu_toml(qc, text, origin));
    return qemu::make_qemu_backend(qc);
  }
  return make_error("unknown [cvm] backend \"" + config.cvm.backend + "\" (supported: sim, qemu)");
}

}  // namespace dstack::vmm
