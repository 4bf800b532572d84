#include "cvmsim/config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <functional>
#include <set>

#include "crypto/hash.h"

namespace dstack::cvmsim {

using nlohmann::json;

namespace {

template <typename T>
T jget(const json& j, const char* key, T def) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return def;
  try {
    return it->get<T>();
  } catch (const std::exception&) {
    return def;
  }
}

}  // namespace

Result<VmManifest> parse_manifest(const std::string& text) {
  json j = json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return make_error("vm-manifest.json is not a JSON object");
  VmManifest m;
  m.id = jget<std::string>(j, "id", "");
  m.name = jget<std::string>(j, "name", "");
  m.app_id = jget<std::string>(j, "app_id", "");
  m.image = jget<std::string>(j, "image", "");
  m.vcpu = jget<uint32_t>(j, "vcpu", 1);
  m.memory = jget<uint32_t>(j, "memory", 1024);
  m.disk_size = jget<uint32_t>(j, "disk_size", 0);
  m.kms_urls = jget<std::vector<std::string>>(j, "kms_urls", {});
  if (auto it = j.find("port_map"); it != j.end() && it->is_array()) {
    for (const auto& p : *it) {
      PortMap pm;
      pm.protocol = jget<std::string>(p, "protocol", "tcp");
      pm.address = jget<std::string>(p, "address", "127.0.0.1");
      if (pm.address.empty()) pm.address = "127.0.0.1";
      int from = jget<int>(p, "from", 0), to = jget<int>(p, "to", 0);
      if (from <= 0 || from > 65535 || to <= 0 || to > 65535)
        return make_error("vm-manifest.json: port_map entry has an invalid port (from=" + std::to_string(from) +
                          ", to=" + std::to_string(to) + ")");
      pm.from = static_cast<uint16_t>(from);
      pm.to = static_cast<uint16_t>(to);
      if (pm.protocol != "tcp") return make_error("vm-manifest.json: only tcp port mappings are simulated, got " + pm.protocol);
      m.port_map.push_back(pm);
    }
  }
  return m;
}

Result<AppCompose> parse_app_compose(const std::string& raw) {
  json j = json::parse(raw, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return make_error("app-compose.json is not a JSON object");
  AppCompose a;
  a.raw = raw;
  a.compose_hash = crypto::sha256(as_view(raw));
  a.name = jget<std::string>(j, "name", "");
  a.runner = jget<std::string>(j, "runner", "");
  a.docker_compose_file = jget<std::string>(j, "docker_compose_file", "");
  a.pre_launch_script = jget<std::string>(j, "pre_launch_script", "");
  a.allowed_envs = jget<std::vector<std::string>>(j, "allowed_envs", {});
  a.no_instance_id = jget<bool>(j, "no_instance_id", false);
  a.secure_time = jget<bool>(j, "secure_time", true);
  a.event_log_version = jget<int>(j, "event_log_version", 1);
  std::string kp = jget<std::string>(j, "key_provider", "");
  if (kp.empty()) {
    if (jget<bool>(j, "kms_enabled", false)) kp = "kms";
    else if (jget<bool>(j, "local_key_provider_enabled", false)) kp = "local";
    else kp = "none";
  }
  if (kp != "none" && kp != "kms" && kp != "local" && kp != "tpm")
    return make_error("app-compose.json: unknown key_provider '" + kp + "' (expected none, kms, local or tpm)");
  a.key_provider = kp;
  auto kpid = jget<std::string>(j, "key_provider_id", "");
  if (!kpid.empty()) {
    TRY_ASSIGN(a.key_provider_id, from_hex(kpid));
  }
  if (a.runner != "docker-compose" && a.runner != "nerdctl-compose" && a.runner != "bash")
    return make_error("app-compose.json: unknown runner '" + a.runner + "' (expected docker-compose)");
  return a;
}

Result<SysConfig> parse_sys_config(const std::string& text) {
  json j = json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return make_error(".sys-config.json is not a JSON object");
  SysConfig s;
  s.kms_urls = jget<std::vector<std::string>>(j, "kms_urls", {});
  s.docker_registry = jget<std::string>(j, "docker_registry", "");
  s.vm_config = jget<std::string>(j, "vm_config", "");
  if (!s.vm_config.empty()) {
    json v = json::parse(s.vm_config, nullptr, false);
    if (v.is_object()) {
      s.os_image_hash_hex = jget<std::string>(v, "os_image_hash", "");
      s.cpu_count = jget<uint32_t>(v, "cpu_count", 0);
      s.memory_size = jget<uint64_t>(v, "memory_size", 0);
    }
  }
  return s;
}

std::string interpolate(const std::string& s, const std::map<std::string, std::string>& env) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '$' || i + 1 >= s.size()) {
      out += s[i];
      continue;
    }
    if (s[i + 1] == '$') {  // "$$" escapes a dollar
      out += '$';
      ++i;
      continue;
    }
    if (s[i + 1] == '{') {
      size_t end = s.find('}', i + 2);
      if (end == std::string::npos) {
        out += s.substr(i);
        break;
      }
      std::string expr = s.substr(i + 2, end - i - 2);
      std::string name = expr, def;
      bool has_def = false;
      if (auto p = expr.find(":-"); p != std::string::npos) {
        name = expr.substr(0, p);
        def = expr.substr(p + 2);
        has_def = true;
      } else if (auto q = expr.find('-'); q != std::string::npos) {
        name = expr.substr(0, q);
        def = expr.substr(q + 1);
        has_def = true;
      }
      auto it = env.find(name);
      if (it != env.end() && !(has_def && it->second.empty())) out += it->second;
      else if (has_def) out += def;
      i = end;
      continue;
    }
    size_t j = i + 1;
    while (j < s.size() && (std::isalnum(static_cast<unsigned char>(s[j])) || s[j] == '_')) ++j;
    if (j == i + 1) {
      out += '$';
      continue;
    }
    auto it = env.find(s.substr(i + 1, j - i - 1));
    if (it != env.end()) out += it->second;
    i = j - 1;
  }
  return out;
}

namespace {

Result<std::vector<std::string>> string_or_list(const YAML::Node& n, const std::string& what,
                                                const std::map<std::string, std::string>& env) {
  std::vector<std::string> out;
  if (n.IsScalar()) {
    // Shell-like split on whitespace with simple quotes, as docker compose does for string commands.
    std::string s = interpolate(n.as<std::string>(), env), cur;
    bool in_s = false, in_d = false, have = false;
    for (char c : s) {
      if (c == '\'' && !in_d) { in_s = !in_s; have = true; continue; }
      if (c == '"' && !in_s) { in_d = !in_d; have = true; continue; }
      if (std::isspace(static_cast<unsigned char>(c)) && !in_s && !in_d) {
        if (have) out.push_back(cur);
        cur.clear();
        have = false;
        continue;
      }
      cur += c;
      have = true;
    }
    if (have) out.push_back(cur);
    return out;
  }
  if (n.IsSequence()) {
    for (const auto& e : n) out.push_back(interpolate(e.as<std::string>(), env));
    return out;
  }
  return make_error(what + " must be a string or a list of strings");
}

}  // namespace

Result<ComposeProject> parse_docker_compose(const std::string& yaml_text, const std::map<std::string, std::string>& env) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const std::exception& e) {
    return make_error(std::string("docker_compose_file is not valid YAML: ") + e.what());
  }
  if (!root.IsMap() || !root["services"] || !root["services"].IsMap())
    return make_error("docker_compose_file has no 'services' map");
  ComposeProject proj;
  if (root["volumes"] && root["volumes"].IsMap())
    for (const auto& v : root["volumes"]) proj.volumes.push_back(v.first.as<std::string>());
  std::vector<ServiceSpec> all;
  try {
    for (const auto& kv : root["services"]) {
      ServiceSpec s;
      s.name = kv.first.as<std::string>();
      const YAML::Node& n = kv.second;
      if (!n.IsMap()) return make_error("service '" + s.name + "' is not a map");
      const std::string ctx = "service '" + s.name + "': ";
      if (!n["image"]) return make_error(ctx + "no 'image' (build: is not supported in the simulator)");
      s.image = interpolate(n["image"].as<std::string>(), env);
      if (n["entrypoint"]) { TRY_ASSIGN(s.entrypoint, string_or_list(n["entrypoint"], ctx + "entrypoint", env)); }
      if (n["command"]) { TRY_ASSIGN(s.command, string_or_list(n["command"], ctx + "command", env)); }
      if (n["working_dir"]) s.working_dir = interpolate(n["working_dir"].as<std::string>(), env);
      if (n["restart"]) s.restart = n["restart"].as<std::string>();
      if (s.restart != "no" && s.restart != "always" && s.restart != "unless-stopped" &&
          s.restart.rfind("on-failure", 0) != 0)
        return make_error(ctx + "unknown restart policy '" + s.restart + "'");
      if (auto e = n["environment"]) {
        if (e.IsMap()) {
          for (const auto& ev : e) {
            std::string k = ev.first.as<std::string>();
            if (ev.second.IsNull()) {
              auto it = env.find(k);
              if (it != env.end()) s.environment.emplace_back(k, it->second);
            } else {
              s.environment.emplace_back(k, interpolate(ev.second.as<std::string>(), env));
            }
          }
        } else if (e.IsSequence()) {
          for (const auto& ev : e) {
            std::string item = ev.as<std::string>();
            auto eq = item.find('=');
            if (eq == std::string::npos) {
              auto it = env.find(item);
              if (it != env.end()) s.environment.emplace_back(item, it->second);
            } else {
              s.environment.emplace_back(item.substr(0, eq), interpolate(item.substr(eq + 1), env));
            }
          }
        } else {
          return make_error(ctx + "environment must be a list or a map");
        }
      }
      if (auto vs = n["volumes"]) {
        if (!vs.IsSequence()) return make_error(ctx + "volumes must be a list");
        for (const auto& v : vs) {
          VolumeMount m;
          if (v.IsMap()) {
            std::string type = v["type"] ? v["type"].as<std::string>() : "volume";
            m.source = v["source"] ? interpolate(v["source"].as<std::string>(), env) : "";
            m.target = v["target"] ? v["target"].as<std::string>() : "";
            m.read_only = v["read_only"] && v["read_only"].as<bool>();
            m.named = type == "volume";
          } else {
            std::string spec = interpolate(v.as<std::string>(), env);
            std::vector<std::string> parts;
            size_t start = 0;
            for (;;) {
              auto c = spec.find(':', start);
              parts.push_back(spec.substr(start, c == std::string::npos ? std::string::npos : c - start));
              if (c == std::string::npos) break;
              start = c + 1;
            }
            if (parts.size() == 1) return make_error(ctx + "anonymous volume '" + spec + "' is not supported; name it");
            m.source = parts[0];
            m.target = parts[1];
            if (parts.size() > 2) m.read_only = parts[2].find("ro") != std::string::npos;
            m.named = !m.source.empty() && m.source[0] != '/' && m.source[0] != '.';
          }
          if (m.target.empty() || m.target[0] != '/') return make_error(ctx + "volume target must be an absolute path");
          if (m.source.empty()) return make_error(ctx + "volume without a source");
          if (!m.named && m.source[0] != '/') return make_error(ctx + "relative bind source '" + m.source + "' is not supported");
          if (m.named && m.source.find('/') != std::string::npos) return make_error(ctx + "bad volume name '" + m.source + "'");
          s.volumes.push_back(m);
        }
      }
      if (auto d = n["depends_on"]) {
        if (d.IsSequence()) for (const auto& x : d) s.depends_on.push_back(x.as<std::string>());
        else if (d.IsMap()) for (const auto& x : d) s.depends_on.push_back(x.first.as<std::string>());
      }
      all.push_back(std::move(s));
    }
  } catch (const YAML::Exception& e) {
    return make_error(std::string("docker_compose_file: ") + e.what());
  }
  // Order by depends_on (stable, depth first); cycles and unknown names are errors.
  std::map<std::string, const ServiceSpec*> by_name;
  for (const auto& s : all) by_name[s.name] = &s;
  std::set<std::string> done, visiting;
  std::function<Status(const ServiceSpec&)> visit = [&](const ServiceSpec& s) -> Status {
    if (done.count(s.name)) return Status::Ok();
    if (visiting.count(s.name)) return make_error("depends_on cycle at service '" + s.name + "'");
    visiting.insert(s.name);
    for (const auto& d : s.depends_on) {
      auto it = by_name.find(d);
      if (it == by_name.end()) return make_error("service '" + s.name + "' depends on unknown service '" + d + "'");
      TRY(visit(*it->second));
    }
    visiting.erase(s.name);
    done.insert(s.name);
    proj.services.push_back(s);
    return Status::Ok();
  };
  for (const auto& s : all) TRY(visit(s));
  return proj;
}

}  // namespace dstack::cvmsim
