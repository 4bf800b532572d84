// What the simulated CVM reads: the VMM's vm-manifest.json (spec §10.3), the host share's app-compose.json
// (spec §11.2), .sys-config.json, and the docker-compose YAML inside app-compose.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/bytes.h"
#include "base/result.h"

namespace dstack::cvmsim {

struct PortMap {
  std::string protocol = "tcp";
  std::string address = "127.0.0.1";
  uint16_t from = 0;  // host port
  uint16_t to = 0;    // VM port
};

struct VmManifest {
  std::string id, name, app_id, image;
  uint32_t vcpu = 1;
  uint32_t memory = 1024;  // MB
  uint32_t disk_size = 0;  // GB
  std::vector<PortMap> port_map;
  std::vector<std::string> kms_urls;
};
Result<VmManifest> parse_manifest(const std::string& json_text);

struct AppCompose {
  std::string raw;           // exact file bytes (hashed)
  Bytes compose_hash;        // SHA256(raw)
  std::string name, runner, docker_compose_file, pre_launch_script;
  std::string key_provider;  // resolved: "none" | "kms" | "local" | "tpm"
  Bytes key_provider_id;
  std::vector<std::string> allowed_envs;
  bool no_instance_id = false;
  bool secure_time = true;   // default true when absent (spec §11.2)
  int event_log_version = 1;
};
Result<AppCompose> parse_app_compose(const std::string& raw);

// .sys-config.json (spec §10.3); all fields optional here.
struct SysConfig {
  std::vector<std::string> kms_urls;
  std::string docker_registry;
  std::string vm_config;          // the JSON string
  std::string os_image_hash_hex;  // from vm_config
  uint32_t cpu_count = 0;
  uint64_t memory_size = 0;       // bytes
};
Result<SysConfig> parse_sys_config(const std::string& json_text);

struct VolumeMount {
  bool named = false;      // named volume (persisted under <vm-dir>/volumes/<source>) vs bind of a guest path
  std::string source;      // volume name or absolute guest path
  std::string target;      // absolute path in the container
  bool read_only = false;
};

struct ServiceSpec {
  std::string name;
  std::string image;
  std::optional<std::vector<std::string>> entrypoint;  // overrides the image's
  std::optional<std::vector<std::string>> command;     // overrides the image's Cmd
  std::vector<std::pair<std::string, std::string>> environment;
  std::vector<VolumeMount> volumes;
  std::string restart = "no";  // no | always | unless-stopped | on-failure[:N]
  std::string working_dir;
  std::vector<std::string> depends_on;
};

struct ComposeProject {
  std::vector<ServiceSpec> services;  // in start order (depends_on first)
  std::vector<std::string> volumes;   // declared named volumes
};

// `env` supplies ${VAR}, ${VAR:-default} and $VAR interpolation (the decrypted app env, as docker compose
// would see it) and the values of environment entries given without "=value".
Result<ComposeProject> parse_docker_compose(const std::string& yaml_text,
                                            const std::map<std::string, std::string>& env = {});

std::string interpolate(const std::string& s, const std::map<std::string, std::string>& env);

}  // namespace dstack::cvmsim
