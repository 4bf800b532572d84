#include "vmm/compose.h"

#include <nlohmann/json.hpp>
#include <yaml-cpp/yaml.h>

#include "crypto/hash.h"

namespace dstack::vmm {

using ojson = nlohmann::ordered_json;

Result<std::string> render_app_compose(const ComposeOptions& o) {
  if (o.name.empty()) return make_error("compose: --name is required");
  if (o.key_provider && *o.key_provider != "none" && *o.key_provider != "kms" && *o.key_provider != "local" &&
      *o.key_provider != "tpm")
    return make_error("compose: --key-provider must be one of none, kms, local, tpm (got \"" + *o.key_provider + "\")");
  if (o.event_log_version && *o.event_log_version != 1 && *o.event_log_version != 2)
    return make_error("compose: --event-log-version must be 1 or 2");
  ojson j;
  j["manifest_version"] = 2;
  j["name"] = o.name;
  j["runner"] = "docker-compose";
  j["docker_compose_file"] = o.docker_compose;
  j["kms_enabled"] = o.kms;
  j["gateway_enabled"] = o.gateway;
  j["local_key_provider_enabled"] = o.local_key_provider;
  j["key_provider_id"] = o.key_provider_id;
  j["public_logs"] = o.public_logs;
  j["public_sysinfo"] = o.public_sysinfo;
  j["allowed_envs"] = o.allowed_envs;
  j["no_instance_id"] = o.no_instance_id;
  j["secure_time"] = o.secure_time;
  if (o.key_provider) j["key_provider"] = *o.key_provider;
  if (o.pre_launch_script) j["pre_launch_script"] = *o.pre_launch_script;
  if (o.swap_size) j["swap_size"] = *o.swap_size;
  if (o.event_log_version) j["event_log_version"] = *o.event_log_version;
  try {
    // nlohmann's indented dump matches Python json.dumps(indent=4, ensure_ascii=False): ", "-free item
    // separator with newlines, ": " key separator, "[]"/"{}" for empty containers, same escapes.
    return j.dump(4, ' ', false, nlohmann::json::error_handler_t::strict);
  } catch (const std::exception& e) {
    return make_error(std::string("compose: input is not valid UTF-8: ") + e.what());
  }
}

std::string compose_hash(std::string_view compose_file) {
  return to_hex(crypto::sha256(as_view(compose_file)));
}

std::string app_id_of(std::string_view compose_file) { return compose_hash(compose_file).substr(0, 40); }

ImageRef parse_image_ref(const std::string& ref_in) {
  ImageRef r;
  std::string ref = ref_in;
  if (auto at = ref.find('@'); at != std::string::npos) {
    r.tag = ref.substr(at + 1);
    ref = ref.substr(0, at);
  }
  auto slash = ref.find('/');
  if (slash != std::string::npos) {
    std::string first = ref.substr(0, slash);
    if (first.find('.') != std::string::npos || first.find(':') != std::string::npos || first == "localhost") {
      r.registry = first;
      ref = ref.substr(slash + 1);
    }
  }
  auto colon = ref.rfind(':');
  if (colon != std::string::npos && r.tag.empty()) {
    r.tag = ref.substr(colon + 1);
    ref = ref.substr(0, colon);
  }
  if (r.tag.empty()) r.tag = "latest";
  r.repository = ref;
  return r;
}

Result<ComposeInfo> validate_app_compose(const std::string& compose_file) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(compose_file);
  } catch (const std::exception& e) {
    return make_error(std::string("app compose is not valid JSON: ") + e.what());
  }
  if (!j.is_object()) return make_error("app compose must be a JSON object");
  ComposeInfo info;
  if (!j.contains("manifest_version")) return make_error("app compose: missing field \"manifest_version\"");
  const auto& mv = j["manifest_version"];
  bool mv_ok = (mv.is_number_unsigned() && mv.get<uint64_t>() >= 1) ||
               (mv.is_string() && !mv.get<std::string>().empty() &&
                mv.get<std::string>().find_first_not_of("0123456789") == std::string::npos &&
                mv.get<std::string>()[0] != '0');
  if (!mv_ok) return make_error("app compose: \"manifest_version\" must be a positive integer");
  if (!j.contains("name") || !j["name"].is_string()) return make_error("app compose: missing string field \"name\"");
  info.name = j["name"].get<std::string>();
  if (!j.contains("runner") || !j["runner"].is_string())
    return make_error("app compose: missing string field \"runner\" (docker-compose, nerdctl-compose or bash)");
  info.runner = j["runner"].get<std::string>();
  if (info.runner != "docker-compose" && info.runner != "nerdctl-compose" && info.runner != "bash")
    return make_error("app compose: unknown runner \"" + info.runner +
                      "\" (supported: docker-compose, nerdctl-compose, bash)");
  auto get_bool = [&](const char* k) -> Result<bool> {
    if (!j.contains(k) || j[k].is_null()) return false;
    if (!j[k].is_boolean()) return make_error(std::string("app compose: \"") + k + "\" must be a boolean");
    return j[k].get<bool>();
  };
  TRY_ASSIGN(info.kms_enabled, get_bool("kms_enabled"));
  TRY_ASSIGN(info.gateway_enabled, get_bool("gateway_enabled"));
  if (!info.gateway_enabled && j.contains("tproxy_enabled")) {
    TRY_ASSIGN(info.gateway_enabled, get_bool("tproxy_enabled"));
  }
  TRY_ASSIGN(bool local, get_bool("local_key_provider_enabled"));
  if (j.contains("key_provider") && !j["key_provider"].is_null()) {
    if (!j["key_provider"].is_string()) return make_error("app compose: \"key_provider\" must be a string");
    info.key_provider = j["key_provider"].get<std::string>();
    if (info.key_provider != "none" && info.key_provider != "kms" && info.key_provider != "local" &&
        info.key_provider != "tpm")
      return make_error("app compose: unknown key_provider \"" + info.key_provider + "\" (none, kms, local, tpm)");
  } else {
    info.key_provider = info.kms_enabled ? "kms" : local ? "local" : "none";
  }
  if (info.runner == "bash") {
    if (!j.contains("bash_script") || !j["bash_script"].is_string())
      return make_error("app compose: runner \"bash\" needs a string field \"bash_script\"");
    return info;
  }
  if (!j.contains("docker_compose_file") || !j["docker_compose_file"].is_string())
    return make_error("app compose: runner \"" + info.runner + "\" needs a string field \"docker_compose_file\"");
  YAML::Node y;
  try {
    y = YAML::Load(j["docker_compose_file"].get<std::string>());
  } catch (const std::exception& e) {
    return make_error(std::string("app compose: docker_compose_file is not valid YAML: ") + e.what());
  }
  if (!y.IsMap() || !y["services"] || !y["services"].IsMap() || y["services"].size() == 0)
    return make_error("app compose: docker_compose_file has no services");
  for (auto it = y["services"].begin(); it != y["services"].end(); ++it) {
    std::string svc = it->first.as<std::string>();
    const YAML::Node& s = it->second;
    if (!s.IsMap()) return make_error("app compose: service \"" + svc + "\" must be a mapping");
    if (!s["image"]) {
      if (s["build"]) return make_error("app compose: service \"" + svc + "\" uses build:, which a CVM cannot do; push an image and use image:");
      return make_error("app compose: service \"" + svc + "\" has no image:");
    }
    info.images.push_back(s["image"].as<std::string>());
  }
  return info;
}

}  // namespace dstack::vmm
