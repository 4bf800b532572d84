// The VM manager: VM registry on disk (spec §10.3), validation, supervision of backend processes
// (spawn in own process group, console to serial.log, crash detection + auto restart with backoff,
// SIGTERM -> SIGKILL stop), per-VM host API (backend.h contract), log rotation.
#pragma once

#include <nlohmann/json.hpp>

#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "base/result.h"
#include "vmm/backend.h"
#include "vmm/config.h"

namespace dstack::vmm {

using Json = nlohmann::json;

extern const char* const kVmmVersion;

std::string tail_log_lines(const std::string& path, size_t lines);  // documented below

class VmManager {
 public:
  VmManager(VmmConfig config, std::unique_ptr<Backend> backend);
  ~VmManager();
  VmManager(const VmManager&) = delete;
  VmManager& operator=(const VmManager&) = delete;

  const VmmConfig& config() const { return cfg_; }

  // Loads all VMs under run_path; starts those whose vm-state.json says started (killing stale runners first).
  Status load();
  // Stops every backend process (vm-state.json keeps "started" so the next load() restarts them).
  void shutdown();

  // pRPC methods (request/response JSON as spec §10.1).
  Result<std::string> create_vm(const Json& vm_configuration);
  Status start_vm(const std::string& id);
  Status stop_vm(const std::string& id, bool force);
  Status remove_vm(const std::string& id);
  Result<std::string> update_vm(const Json& request);
  Result<Json> status(const Json& request) const;
  Json get_info(const std::string& id) const;
  Json list_images() const;
  Json get_meta() const;

  // Name or id (or unique id prefix) -> id.
  std::optional<std::string> resolve(const std::string& name_or_id) const;
  std::string vm_dir(const std::string& id) const;
  std::string log_path(const std::string& id) const { return vm_dir(id) + "/serial.log"; }
  // Last `lines` console lines of the VM including rotated serial.log.N backups when the current file has fewer.
  std::string tail_log(const std::string& id, size_t lines) const { return tail_log_lines(log_path(id), lines); }
  bool exists(const std::string& id) const;
  // True once shutdown() began (log streams end).
  bool closing() const;

  // Rotates <vm>/serial.log if bigger than [cvm.log] max_bytes (copy-truncate, keeps max_backups).
  void rotate_logs();

 public:
  struct Vm;  // implementation detail (vmm.cpp)

 private:
  struct Impl;
  VmmConfig cfg_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<Impl> impl_;
};

// Last `lines` lines of a file (whole file when lines == 0).
std::string tail_lines(const std::string& path, size_t lines);
// Like tail_lines over the rotated log family: <path>.K ... <path>.1 (older, written by rotate_logs) then <path>.
// Backups are read only as far as needed to make up `lines` (all of them when lines == 0).
std::string tail_log_lines(const std::string& path, size_t lines);
// Removes ANSI escape sequences.
std::string strip_ansi(std::string_view s);

}  // namespace dstack::vmm
