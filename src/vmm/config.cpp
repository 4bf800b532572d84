#include "vmm/config.h"

#include <toml++/toml.h>

#include <cstdlib>
#include <filesystem>
#include <sstream>

#include "base/fs.h"

namespace dstack::vmm {
namespace {

std::string home_dir() {
  const char* h = std::getenv("HOME");
  return (h && *h) ? h : "/root";
}

template <typename T>
void set_int(const toml::node_view<const toml::node>& n, T& out) {
  if (auto v = n.value<int64_t>()) out = static_cast<T>(*v);
}
void set_double(const toml::node_view<const toml::node>& n, double& out) {
  if (auto v = n.value<double>()) out = *v;  // toml++ converts integers to double
}
void set_str(const toml::node_view<const toml::node>& n, std::string& out) {
  if (auto v = n.value<std::string>()) out = *v;
}
void set_bool(const toml::node_view<const toml::node>& n, bool& out) {
  if (auto v = n.value<bool>()) out = *v;
}
void set_str_list(const toml::node_view<const toml::node>& n, std::vector<std::string>& out) {
  if (auto arr = n.as_array()) {
    out.clear();
    for (auto& e : *arr)
      if (auto s = e.value<std::string>()) out.push_back(*s);
  }
}

std::string make_abs(const std::string& p) {
  if (p.empty()) return p;
  std::string q = p;
  if (q.rfind("~/", 0) == 0) q = home_dir() + q.substr(1);
  return std::filesystem::absolute(q).lexically_normal().string();
}

}  // namespace

Result<uint64_t> parse_byte_size(const std::string& s) {
  if (s.empty()) return make_error("empty size");
  size_t i = 0;
  while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) ++i;
  if (i == 0) return make_error("invalid size '" + s + "': expected a number with optional K/M/G suffix");
  uint64_t n = std::stoull(s.substr(0, i));
  std::string unit = s.substr(i);
  for (auto& c : unit) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  if (unit.empty() || unit == "B") return n;
  if (unit == "K" || unit == "KB" || unit == "KIB") return n << 10;
  if (unit == "M" || unit == "MB" || unit == "MIB") return n << 20;
  if (unit == "G" || unit == "GB" || unit == "GIB") return n << 30;
  return make_error("invalid size unit in '" + s + "': use K, M or G");
}

Status apply_toml(VmmConfig& cfg, const std::string& toml_text, const std::string& origin) {
  toml::table t;
  try {
    t = toml::parse(toml_text, origin);
  } catch (const toml::parse_error& e) {
    std::ostringstream os;
    os << "parsing " << origin << ": " << e.description() << " (line " << e.source().begin.line << ")";
    return make_error(os.str());
  }
  const toml::node_view<const toml::node> root{static_cast<const toml::node&>(t)};
  set_str(root["address"], cfg.address);
  set_int(root["port"], cfg.port);
  set_int(root["workers"], cfg.workers);
  set_str(root["log_level"], cfg.log_level);
  set_str(root["kms_url"], cfg.kms_url);
  set_int(root["event_buffer_size"], cfg.event_buffer_size);
  set_str(root["node_name"], cfg.node_name);
  set_str(root["run_path"], cfg.run_path);
  set_str(root["image"]["path"], cfg.image.path);
  set_str(root["image"]["registry"], cfg.image.registry);

  auto cvm = root["cvm"];
  set_str(cvm["backend"], cfg.cvm.backend);
  set_str(cvm["sim_runner"], cfg.cvm.sim_runner);
  set_str_list(cvm["kms_urls"], cfg.cvm.kms_urls);
  set_str_list(cvm["gateway_urls"], cfg.cvm.gateway_urls);
  set_str(cvm["pccs_url"], cfg.cvm.pccs_url);
  set_str(cvm["docker_registry"], cfg.cvm.docker_registry);
  set_int(cvm["docker_registry_timeout_ms"], cfg.cvm.docker_registry_timeout_ms);
  set_int(cvm["max_allocable_vcpu"], cfg.cvm.max_allocable_vcpu);
  set_int(cvm["max_allocable_memory_in_mb"], cfg.cvm.max_allocable_memory_in_mb);
  set_double(cvm["stop_timeout_secs"], cfg.cvm.stop_timeout_secs);

  auto pm = cvm["port_mapping"];
  set_bool(pm["enabled"], cfg.cvm.port_mapping.enabled);
  set_str(pm["address"], cfg.cvm.port_mapping.address);
  if (auto arr = pm["range"].as_array()) {
    cfg.cvm.port_mapping.range.clear();
    for (auto& e : *arr) {
      auto* tbl = e.as_table();
      if (!tbl) return make_error(origin + ": [cvm.port_mapping] range entries must be tables {protocol, from, to}");
      PortRange r;
      r.protocol = (*tbl)["protocol"].value_or(std::string("tcp"));
      r.from = static_cast<uint32_t>((*tbl)["from"].value_or(int64_t{1}));
      r.to = static_cast<uint32_t>((*tbl)["to"].value_or(int64_t{65535}));
      if (r.protocol != "tcp" && r.protocol != "udp")
        return make_error(origin + ": [cvm.port_mapping] range protocol must be \"tcp\" or \"udp\", got \"" + r.protocol + "\"");
      if (r.from < 1 || r.to > 65535 || r.from > r.to)
        return make_error(origin + ": [cvm.port_mapping] range must satisfy 1 <= from <= to <= 65535");
      cfg.cvm.port_mapping.range.push_back(r);
    }
  }
  auto ar = cvm["auto_restart"];
  set_bool(ar["enabled"], cfg.cvm.auto_restart.enabled);
  set_double(ar["interval"], cfg.cvm.auto_restart.interval);
  set_int(ar["max_retries"], cfg.cvm.auto_restart.max_retries);
  set_double(ar["initial_backoff"], cfg.cvm.auto_restart.initial_backoff);
  set_double(ar["max_backoff"], cfg.cvm.auto_restart.max_backoff);
  set_double(ar["reset_window"], cfg.cvm.auto_restart.reset_window);

  auto lg = cvm["log"];
  if (auto s = lg["max_bytes"].value<std::string>()) {
    auto b = parse_byte_size(*s);
    if (!b) return b.error().wrap(origin + ": [cvm.log] max_bytes");
    cfg.cvm.log.max_bytes = *b;
  } else {
    set_int(lg["max_bytes"], cfg.cvm.log.max_bytes);
  }
  set_int(lg["max_backups"], cfg.cvm.log.max_backups);
  set_double(lg["check_interval_secs"], cfg.cvm.log.check_interval_secs);

  set_str(root["gateway"]["base_domain"], cfg.gateway.base_domain);
  set_int(root["gateway"]["port"], cfg.gateway.port);
  set_int(root["gateway"]["agent_port"], cfg.gateway.agent_port);
  set_str(root["host_api"]["ident"], cfg.host_api.ident);
  set_int(root["host_api"]["port"], cfg.host_api.port);
  auto kp = root["key_provider"];
  set_bool(kp["enabled"], cfg.key_provider.enabled);
  set_str(kp["address"], cfg.key_provider.address);
  set_int(kp["port"], cfg.key_provider.port);
  set_int(kp["timeout_ms"], cfg.key_provider.timeout_ms);
  cfg.loaded_files.push_back(origin);
  cfg.toml_documents.emplace_back(origin, toml_text);
  return Status::Ok();
}

Result<VmmConfig> load_config(const std::string& explicit_file) {
  VmmConfig cfg;
  std::vector<std::string> files{"/etc/vmm/vmm.toml", "./vmm.toml"};
  for (const auto& f : files) {
    if (!file_exists(f)) continue;
    TRY_ASSIGN(auto text, read_file(f));
    TRY(apply_toml(cfg, text, f));
  }
  if (!explicit_file.empty()) {
    auto text = read_file(explicit_file);
    if (!text) return text.error().wrap("reading config file " + explicit_file);
    TRY(apply_toml(cfg, *text, explicit_file));
  }
  if (cfg.run_path.empty()) cfg.run_path = home_dir() + "/.dstack-vmm/vm";
  if (cfg.image.path.empty()) cfg.image.path = home_dir() + "/.dstack-vmm/image";
  cfg.run_path = make_abs(cfg.run_path);
  cfg.image.path = make_abs(cfg.image.path);
  if (!cfg.cvm.sim_runner.empty()) cfg.cvm.sim_runner = make_abs(cfg.cvm.sim_runner);
  if (cfg.workers < 2) cfg.workers = 2;
  return cfg;
}

std::string listen_address(const VmmConfig& cfg) {
  const std::string& a = cfg.address;
  if (a.rfind("unix:", 0) == 0) {
    std::string p = a.substr(5);
    return "unix:" + make_abs(p);
  }
  if (a.rfind("tcp:", 0) == 0) return a;
  return "tcp:" + a + ":" + std::to_string(cfg.port);
}

}  // namespace dstack::vmm
