// vmm.toml (spec §10.2): built-in defaults -> /etc/vmm/vmm.toml -> ./vmm.toml -> the file given with -c.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "base/result.h"

namespace dstack::vmm {

struct PortRange {
  std::string protocol = "tcp";  // "tcp" | "udp"
  uint32_t from = 1;
  uint32_t to = 20000;
};

struct VmmConfig {
  // Server (top level, Rocket-style keys).
  std::string address = "127.0.0.1";  // "HOST" (+ port), "tcp:HOST:PORT" or "unix:/path.sock"
  uint16_t port = 9080;
  int workers = 8;
  std::string log_level = "info";
  std::string kms_url = "http://127.0.0.1:8081";
  size_t event_buffer_size = 20;
  std::string node_name;
  std::string run_path;  // default ~/.dstack-vmm/vm (absolute after load)

  struct Image {
    std::string path;  // default ~/.dstack-vmm/image
    std::string registry;
  } image;

  struct Cvm {
    std::string backend = "sim";
    std::string sim_runner;  // default: dstack-cvm-sim next to the dstack-vmm executable
    std::vector<std::string> kms_urls{"http://127.0.0.1:8081"};
    std::vector<std::string> gateway_urls{"http://127.0.0.1:8082"};
    std::string pccs_url;
    std::string docker_registry;          // "host:port"; when set CreateVm checks compose images exist there
    uint32_t docker_registry_timeout_ms = 3000;
    uint32_t max_allocable_vcpu = 20;
    uint64_t max_allocable_memory_in_mb = 100000;
    double stop_timeout_secs = 10;        // SIGTERM -> SIGKILL grace
    struct PortMapping {
      bool enabled = true;
      std::string address = "127.0.0.1";
      std::vector<PortRange> range{{"tcp", 1, 20000}, {"udp", 1, 20000}};
    } port_mapping;
    struct AutoRestart {
      bool enabled = true;
      double interval = 20;          // seconds between health checks (upstream); here: min uptime to count as healthy
      uint32_t max_retries = 5;      // consecutive failed restarts before giving up
      double initial_backoff = 5;    // seconds
      double max_backoff = 300;
      double reset_window = 300;     // uptime after which the retry counter resets
    } auto_restart;
    struct Log {
      uint64_t max_bytes = 4 * 1024 * 1024;  // "4M" accepted
      uint32_t max_backups = 3;
      double check_interval_secs = 5;
    } log;
  } cvm;

  struct Gateway {
    std::string base_domain = "localhost";
    uint32_t port = 8082;
    uint32_t agent_port = 8090;
  } gateway;

  struct HostApi {
    std::string ident = "dstack VMM";
    uint32_t port = 10000;  // vsock port of the host API for QEMU guests (vsock://2:<port>/api)
  } host_api;

  struct KeyProvider {
    bool enabled = true;
    std::string address = "127.0.0.1";
    uint16_t port = 3443;
    uint32_t timeout_ms = 30000;
  } key_provider;

  // Where each setting came from (for `dstack-vmm --print-config` / logs).
  std::vector<std::string> loaded_files;
  // The TOML documents applied, in order (origin, text): backends with their own keys (qemu) parse them too.
  std::vector<std::pair<std::string, std::string>> toml_documents;
};

// "4M", "512K", "1G", "1024" (bytes) -> bytes.
Result<uint64_t> parse_byte_size(const std::string& s);

// Applies one TOML document over `cfg`. Unknown keys are ignored (upstream has many QEMU-only keys).
Status apply_toml(VmmConfig& cfg, const std::string& toml_text, const std::string& origin);

// Defaults + /etc/vmm/vmm.toml + ./vmm.toml + explicit file (if non-empty; must exist). Paths made absolute.
Result<VmmConfig> load_config(const std::string& explicit_file);

// The listen address in HttpServer::listen form.
std::string listen_address(const VmmConfig& cfg);

}  // namespace dstack::vmm
