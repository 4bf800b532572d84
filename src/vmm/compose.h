// app-compose.json (spec §11.2/§11.3): the CLI's writer (byte format of Python json.dumps(indent=4,
// ensure_ascii=False) with upstream key order), compose hash, app id, and the VMM's validation.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "base/result.h"

namespace dstack::vmm {

struct ComposeOptions {
  std::string name;
  std::string docker_compose;  // YAML text
  bool kms = false;
  bool gateway = false;
  bool local_key_provider = false;
  std::optional<std::string> key_provider;  // none|kms|local|tpm
  std::string key_provider_id;              // hex, "" default
  bool public_logs = false;
  bool public_sysinfo = false;
  std::vector<std::string> allowed_envs;
  bool no_instance_id = false;
  bool secure_time = false;
  std::optional<std::string> pre_launch_script;
  std::optional<uint64_t> swap_size;  // bytes
  std::optional<int> event_log_version;
};

// The exact bytes vmm-cli writes (no trailing newline).
Result<std::string> render_app_compose(const ComposeOptions& opts);

// hex SHA-256 of the exact bytes.
std::string compose_hash(std::string_view compose_file);
// First 40 hex chars of compose_hash (20 bytes).
std::string app_id_of(std::string_view compose_file);

struct ComposeInfo {
  std::string name;
  std::string runner;
  bool kms_enabled = false;
  bool gateway_enabled = false;
  std::string key_provider;  // effective: none|kms|local|tpm
  std::vector<std::string> images;  // docker-compose services' image: refs (docker-compose/nerdctl runners)
};

// Parses and validates an app-compose.json text as the VMM does before creating a VM.
Result<ComposeInfo> validate_app_compose(const std::string& compose_file);

// Docker image reference -> (registry host or "", repository, tag). "reg:5000/a/b:tag" -> ("reg:5000","a/b","tag").
struct ImageRef {
  std::string registry;
  std::string repository;
  std::string tag;
};
ImageRef parse_image_ref(const std::string& ref);

}  // namespace dstack::vmm
