#include "guest/config.h"

#include <toml++/toml.h>

#include <filesystem>

#include "base/fs.h"

namespace dstack::guest {

std::string ListenerConfig::listen_address() const {
  if (address.rfind("unix:", 0) == 0) return address;
  if (address.find(':') != std::string::npos && address.find('[') == std::string::npos) return address;
  return address + ":" + std::to_string(port);
}

namespace {

std::string resolve(const std::string& base, const std::string& p) {
  if (p.empty() || p[0] == '/' || base.empty()) return p;
  return (std::filesystem::path(base) / p).lexically_normal().string();
}

Status get_str(const toml::node_view<const toml::node>& t, const char* key, std::string& out) {
  auto n = t[key];
  if (!n) return Status::Ok();
  if (auto v = n.value<std::string>()) {
    out = *v;
    return Status::Ok();
  }
  return make_error(std::string("config key ") + key + " must be a string");
}

Status get_hex(const toml::node_view<const toml::node>& t, const char* key, Bytes& out, size_t size) {
  std::string s;
  TRY(get_str(t, key, s));
  if (s.empty()) return Status::Ok();
  auto b = from_hex(s);
  if (!b.ok()) return b.error().wrap(std::string("config key ") + key);
  if (size && b->size() != size) {
    return make_error(std::string("config key ") + key + " must be " + std::to_string(size) + " bytes");
  }
  out = std::move(*b);
  return Status::Ok();
}

Status get_listener(const toml::node_view<const toml::node>& t, ListenerConfig& l) {
  if (!t) return Status::Ok();
  TRY(get_str(t, "address", l.address));
  if (auto p = t["port"].value<int64_t>()) {
    if (*p < 0 || *p > 65535) return make_error("listener port out of range");
    l.port = static_cast<uint16_t>(*p);
  }
  if (auto e = t["enabled"].value<bool>()) l.enabled = *e;
  std::string mode;
  TRY(get_str(t, "mode", mode));
  if (!mode.empty()) {
    try {
      l.mode = static_cast<uint32_t>(std::stoul(mode, nullptr, 8));
    } catch (...) {
      return make_error("listener mode must be an octal string like \"0660\"");
    }
  }
  return Status::Ok();
}

}  // namespace

Result<AgentConfig> AgentConfig::parse(std::string_view text, const std::string& base_dir) {
  toml::table tbl;
  try {
    tbl = toml::parse(text);
  } catch (const toml::parse_error& e) {
    return make_error(std::string("invalid TOML: ") + std::string(e.description()));
  }
  AgentConfig c;
  const toml::node_view<const toml::node> root{static_cast<const toml::node&>(tbl)};
  auto core = root["default"]["core"];
  if (!core) core = root["core"];
  TRY(get_str(core, "keys_file", c.keys_file));
  TRY(get_str(core, "compose_file", c.compose_file));
  TRY(get_str(core, "sys_config_file", c.sys_config_file));
  TRY(get_str(core, "event_log_dir", c.event_log_dir));
  TRY(get_str(core, "backend", c.backend));
  if (c.backend != "auto" && c.backend != "tdx" && c.backend != "simulator") {
    return make_error("core.backend must be auto, tdx or simulator (got \"" + c.backend + "\")");
  }
  auto tdx = core["tdx"];
  TRY(get_str(tdx, "tsm_report_dir", c.tsm_report_dir));
  TRY(get_str(tdx, "rtmr3_file", c.rtmr3_file));
  TRY(get_str(tdx, "ccel_file", c.ccel_file));
  auto sim = core["simulator"];
  TRY(get_str(sim, "platform_dir", c.sim_platform_dir));
  TRY(get_str(sim, "state_dir", c.sim_state_dir));
  TRY(get_hex(sim, "mrtd", c.sim_mrtd, 48));
  TRY(get_hex(sim, "mr_config_id", c.sim_mr_config_id, 48));
  const char* rk[3] = {"rtmr0", "rtmr1", "rtmr2"};
  std::optional<Bytes>* rv[3] = {&c.sim_rtmr0, &c.sim_rtmr1, &c.sim_rtmr2};
  for (int i = 0; i < 3; ++i) {
    Bytes b;
    TRY(get_hex(sim, rk[i], b, 48));
    if (!b.empty()) *rv[i] = b;
  }
  TRY(get_hex(sim, "app_id", c.sim_app_id, 20));
  TRY(get_hex(sim, "instance_id", c.sim_instance_id, 20));
  if (auto g = sim["generate_keys"].value<bool>()) c.sim_generate_keys = *g;
  if (sim["enabled"].value<bool>().value_or(false) && c.backend == "auto") c.backend = "simulator";

  TRY(get_listener(root["internal"], c.internal));
  TRY(get_listener(root["internal-v0"], c.internal_v0));
  TRY(get_listener(root["external"], c.external));

  for (std::string* p : {&c.keys_file, &c.compose_file, &c.sys_config_file, &c.event_log_dir,
                         &c.sim_platform_dir, &c.sim_state_dir}) {
    *p = resolve(base_dir, *p);
  }
  for (ListenerConfig* l : {&c.internal, &c.internal_v0, &c.external}) {
    if (l->address.rfind("unix:", 0) == 0) l->address = "unix:" + resolve(base_dir, l->address.substr(5));
  }
  return c;
}

Result<AgentConfig> AgentConfig::load(const std::string& path) {
  auto text = read_file(path);
  if (!text.ok()) return text.error().wrap("reading config " + path);
  auto base = std::filesystem::absolute(path).parent_path().string();
  auto c = parse(*text, base);
  if (!c.ok()) return c.error().wrap(path);
  return c;
}

}  // namespace dstack::guest
