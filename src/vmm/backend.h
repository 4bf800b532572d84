// CVM backends of dstack-vmm: how a VM is actually run. The VMM supervises one backend process per running VM.
//
// ======================= CONTRACT: dstack-vmm <-> backend runner (sim: build/bin/dstack-cvm-sim) =======================
// Invocation   : <runner> run --vm-dir <run_path>/<vm-id>           (absolute path; cwd = the vm dir)
//                own process group (setsid), stdin = /dev/null, stdout AND stderr appended to <vm-dir>/serial.log
//                (that file is the CVM console that `vmm-cli logs` / GET /logs shows: print boot lines there).
// Environment  : DSTACK_VMM_HOST_API   = <vm-dir>/host-api.sock   (unix socket, already listening at spawn time)
//                DSTACK_VMM_IMAGE_DIR  = <[image] path>/<manifest.image>  (metadata.json, digest.txt, ...)
//                DSTACK_VMM_VM_ID      = <vm-id>
//                DSTACK_VMM_DOCKER_REGISTRY = [cvm] docker_registry (may be empty; also in .sys-config.json)
// Files the VMM writes before EVERY start (runner reads, must not modify except where noted):
//   vm-manifest.json       {id, name, app_id, vcpu, memory(MB), disk_size(GB), image,
//                           port_map[{address, protocol "tcp"|"udp", from = HOST port, to = VM port}],
//                           created_at_ms, hugepages, pin_numa, gpus, kms_urls, gateway_urls, no_tee,
//                           simulated_tee?, swtpm, networks, volumes}   (spec §10.3)
//   vm-state.json          {"started": bool}
//   shared/app-compose.json   the compose_file bytes VERBATIM (compose_hash = sha256 of these bytes)
//   shared/.sys-config.json   regenerated each start (spec §10.3); host_api_url = "unix:<vm-dir>/host-api.sock"
//                             (an rpc URL: methods are POST /api/<Method>), vm_config = JSON string.
//                             (QEMU backend: host_api_url = "vsock://2:<[host_api] port>/api", relayed by the VMM
//                             from vsock to the VM's host-api.sock by guest CID; see vmm/qemu/vsock_relay.h.)
//   shared/.instance_info     {"app_id": hex} initially; the VMM merges instance.info notifications into it.
//   shared/.encrypted-env     raw bytes (only if the deployer gave an env), shared/.user-config (only if given)
// Runner-owned: anything else it creates inside <vm-dir> (e.g. disk/ for named volumes, sockets). It must keep
//   persistent VM data (volumes) inside <vm-dir> so that it survives stop/start and is deleted by RemoveVm.
// Ports        : for each manifest port_map entry the runner binds <address>:<from> on the host and forwards to
//                port <to> inside the CVM. (The VMM validated range/duplicates; a bind failure => boot.error + exit 1.)
// Host API     : HTTP/1.1 over <vm-dir>/host-api.sock, pRPC JSON (spec §1.1): POST /api/<Method>, JSON body,
//                bytes as lowercase hex, errors HTTP 400 {"error": "..."}.
//   Info          {}                               -> {"name": "dstack VMM", "version": "<vmm version>"}
//   Notify        {"event": str, "payload": str}   -> null
//        boot.progress     payload = short text ("booting", "key provider ready", "running", ...) -> VmInfo.boot_progress
//        boot.error        payload = error text -> VmInfo.boot_error
//        shutdown.progress payload text; "powering off" marks the VM as cleanly stopping (exit => stopped, no restart)
//        instance.info     payload = JSON string {"instance_id_seed": hex, "instance_id": hex, "app_id": hex}
//                          -> merged into shared/.instance_info; VmInfo.instance_id
//      every event is also kept in VmInfo.events[{event, body, timestamp(ms)}] (last [event_buffer_size]).
//   GetSealingKey {"quote": hex}                   -> {"encrypted_key": hex, "provider_quote": hex}
//        relayed to the local key provider at [key_provider] address:port (spec §12 framing, 30 s timeout);
//        error "key provider disabled" when [key_provider] enabled = false.
// Signals/exit : SIGTERM = graceful shutdown; exit when the CVM is down. After [cvm] stop_timeout_secs (default 10)
//                the VMM SIGKILLs the whole process group. Exit status: after a VMM stop request or a
//                "powering off" notification => VM stopped. Any other exit (any code, or a signal) => the VM
//                "exited" (crash): reported in events and restarted per [cvm.auto_restart] with backoff.
// =================================================================================================================
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "base/result.h"

namespace dstack::vmm {

struct VmmConfig;

// What to exec for one VM start.
struct LaunchSpec {
  std::vector<std::string> argv;              // argv[0] = executable path (a bare name is looked up in PATH)
  std::map<std::string, std::string> env;     // added to the VMM's environment
  std::string cwd;                            // the vm dir
  // Where the process's stdout+stderr go, relative to the vm dir. Default serial.log (sim runner: it IS the
  // console). QEMU writes serial.log itself (-chardev logfile), so its own output goes to stdout.log.
  std::string stdout_file = "serial.log";
};

struct LaunchContext {
  std::string vm_id;
  std::string vm_dir;          // absolute
  std::string image_dir;       // absolute [image] path/<image>
  std::string host_api_socket; // absolute <vm-dir>/host-api.sock
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  // Whether the backend can run at all (e.g. the runner binary exists); error says what to install/configure.
  virtual Status check() const = 0;
  // The command for one start of the VM. Files of the contract above are already written.
  virtual Result<LaunchSpec> launch_spec(const LaunchContext& ctx) const = 0;
  // host_api_url written to the VM's shared/.sys-config.json: how the guest reaches the host API.
  virtual std::string guest_host_api_url(const LaunchContext& ctx) const { return "unix:" + ctx.host_api_socket; }
  // Called once by VmManager::load() before any VM starts (run_path = absolute VM root), and by
  // VmManager::shutdown() after every VM stopped. E.g. the QEMU backend's vsock host-API relay. Default no-op;
  // a backend that cannot offer a service logs why and still returns Ok unless nothing could work at all.
  virtual Status start_services(const std::string& run_path) { (void)run_path; return Status::Ok(); }
  virtual void stop_services() {}
  // The VM was removed (its dir is gone): release per-VM resources (e.g. its vsock CID). Default no-op.
  virtual void vm_removed(const std::string& vm_id) { (void)vm_id; }
};

// [cvm] backend = "sim" (default) -> runner [cvm] sim_runner (default: dstack-cvm-sim next to dstack-vmm).
// [cvm] backend = "qemu" -> vmm/qemu/qemu_backend.h, QemuConfig from qemu::apply_qemu_toml over every vmm.toml
// document of config.toml_documents (same order), [host_api] port for the vsock relay.
// Any other name is an error naming the supported backends.
Result<std::unique_ptr<Backend>> make_backend(const VmmConfig& config);

}  // namespace dstack::vmm
