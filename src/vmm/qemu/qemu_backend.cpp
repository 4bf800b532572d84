#include "vmm/qemu/qemu_backend.h"

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <filesystem>

#include "base/fs.h"
#include "crypto/hash.h"
#include "vmm/qemu/doctor.h"
#include "vmm/qemu/process.h"

namespace dstack::vmm::qemu {

Result<MrConfigInput> mr_config_input_from_files(const std::string& vm_dir, const std::string& manifest_app_id_hex) {
  std::string compose_path = vm_dir + "/shared/app-compose.json";
  TRY_ASSIGN(auto compose, read_file(compose_path));
  MrConfigInput in;
  in.compose_hash = crypto::sha256(as_view(compose));
  if (!manifest_app_id_hex.empty()) {
    TRY_ASSIGN(in.app_id, from_hex(manifest_app_id_hex));
  }
  auto j = nlohmann::json::parse(compose, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return make_error(compose_path + " is not a JSON object");
  if (j.contains("key_provider") && j["key_provider"].is_string()) {
    in.key_provider = j["key_provider"].get<std::string>();
  } else if (j.value("kms_enabled", false)) {
    in.key_provider = "kms";
  } else if (j.value("local_key_provider_enabled", false)) {
    in.key_provider = "local";
  } else {
    in.key_provider = "none";
  }
  if (j.contains("key_provider_id") && j["key_provider_id"].is_string()) {
    auto id = from_hex(j["key_provider_id"].get<std::string>());
    if (!id.ok()) return id.error().wrap(compose_path + ": key_provider_id");
    in.key_provider_id = *id;
  }
  return in;
}

Status QemuBackend::check() const {
  std::string exe = cfg_.qemu_path.empty() ? "qemu-system-x86_64" : cfg_.qemu_path;
  auto v = run_command({exe, "-version"}, std::chrono::seconds(10));
  if (!v.ok()) return v.error().wrap("QEMU backend: " + exe + " does not run (install qemu-system-x86 or set [cvm] qemu_path)");
  if (cfg_.platform == "tdx") {
    DoctorOptions o;
    o.qemu_path = cfg_.qemu_path;
    o.add_common_ovmf_paths = true;
    auto r = run_doctor(o);
    for (const auto& c : r.checks)
      if (c.id != "ovmf" && c.id != "sgx" && c.status == CheckStatus::Fail)
        return make_error("QEMU backend with platform = \"tdx\": " + c.title + ": " + c.detail + " (fix: " + c.remedy +
                          "; run dstack-vmm-doctor for the full report)");
  }
  return Status::Ok();
}

Result<uint32_t> QemuBackend::cid_for(const std::string& vm_id) const {
  std::lock_guard lk(mu_);
  auto it = cids_.find(vm_id);
  if (it != cids_.end()) return it->second;
  TRY_ASSIGN(uint32_t cid, pool_.allocate());
  cids_[vm_id] = cid;
  return cid;
}

std::string QemuBackend::vm_of_cid(uint32_t cid) const {
  std::lock_guard lk(mu_);
  for (const auto& [id, c] : cids_)
    if (c == cid) return id;
  return "";
}

Result<LaunchSpec> QemuBackend::launch_spec(const LaunchContext& ctx) const {
  TRY_ASSIGN(auto manifest_text, read_file(ctx.vm_dir + "/vm-manifest.json"));
  TRY_ASSIGN(auto vm, vm_spec_from_manifest_json(manifest_text));
  vm.vm_dir = ctx.vm_dir;
  if (vm.vm_id.empty()) vm.vm_id = ctx.vm_id;
  TRY_ASSIGN(auto image, load_image_metadata(ctx.image_dir));
  bool tee = cfg_.platform == "tdx" && !vm.no_tee;
  if (tee) {
    auto mj = nlohmann::json::parse(manifest_text, nullptr, false);
    std::string app_id = mj.is_object() ? mj.value("app_id", std::string()) : std::string();
    TRY_ASSIGN(auto in, mr_config_input_from_files(ctx.vm_dir, app_id));
    TRY_ASSIGN(vm.mr_config_id, choose_mr_config_id(false, cfg_.use_mrconfigid, in));
  }
  if (cfg_.vsock) {
    TRY_ASSIGN(uint32_t cid, cid_for(vm.vm_id));
    vm.cid = cid;
  }
  TRY(prepare_work_dir(cfg_, image, vm));
  LaunchSpec s;
  TRY_ASSIGN(s.argv, build_qemu_argv(cfg_, image, vm));
  s.cwd = ctx.vm_dir;
  s.env = {{"DSTACK_VMM_VM_ID", ctx.vm_id}};
  s.stdout_file = "stdout.log";
  return s;
}

QemuBackend::~QemuBackend() { stop_services(); }

std::string QemuBackend::guest_host_api_url(const LaunchContext&) const {
  return "vsock://2:" + std::to_string(cfg_.host_api_port) + "/api";
}

std::optional<std::string> QemuBackend::host_api_socket_of_cid(uint32_t cid) const {
  std::string id = vm_of_cid(cid);
  if (id.empty() || run_path_.empty()) return std::nullopt;
  std::string sock = run_path_ + "/" + id + "/host-api.sock";
  std::error_code ec;
  if (!std::filesystem::exists(sock, ec)) return std::nullopt;
  return sock;
}

Status QemuBackend::start_services(const std::string& run_path) {
  run_path_ = run_path;
  if (relay_) return Status::Ok();
  if (!cfg_.vsock) {
    spdlog::warn("QEMU backend: [cvm] vsock = false: guests get no vsock device and cannot reach the host API "
                 "(Notify, GetSealingKey); boot progress will not be reported");
    return Status::Ok();
  }
  auto r = HostApiRelay::start_vsock(cfg_.host_api_port,
                                     [this](uint32_t cid) { return host_api_socket_of_cid(cid); });
  if (!r) {
    spdlog::warn("QEMU backend: host API vsock relay on port {} unavailable: {} -- QEMU guests cannot reach the "
                 "host API (Notify, GetSealingKey) until this is fixed",
                 cfg_.host_api_port, r.error().message);
    return Status::Ok();
  }
  relay_ = std::move(*r);
  return Status::Ok();
}

void QemuBackend::stop_services() {
  if (relay_) {
    relay_->stop();
    relay_.reset();
  }
}

void QemuBackend::vm_removed(const std::string& vm_id) {
  std::lock_guard lk(mu_);
  auto it = cids_.find(vm_id);
  if (it == cids_.end()) return;
  pool_.release(it->second);
  cids_.erase(it);
}

std::unique_ptr<Backend> make_qemu_backend(const QemuConfig& cfg) { return std::make_unique<QemuBackend>(cfg); }

}  // namespace dstack::vmm::qemu
