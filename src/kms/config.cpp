#include "kms/config.h"

#include <toml++/toml.h>

#include <cstdlib>

#include "base/fs.h"

namespace dstack::kms {

namespace {

Result<std::chrono::milliseconds> parse_duration(const toml::node& n, const std::string& key) {
  if (auto i = n.value<int64_t>(); i && !n.is_string()) {
    if (*i < 0) return make_error(key + ": duration must not be negative");
    return std::chrono::milliseconds(*i * 1000);  // bare numbers are seconds
  }
  auto s = n.value<std::string>();
  if (!s) return make_error(key + ": expected a duration like \"5s\", \"500ms\", \"2m\"");
  std::string v = *s;
  size_t pos = 0;
  while (pos < v.size() && (isdigit(static_cast<unsigned char>(v[pos])) || v[pos] == '.')) pos++;
  if (pos == 0) return make_error(key + ": bad duration \"" + v + "\"");
  double num = std::stod(v.substr(0, pos));
  std::string unit = v.substr(pos);
  double ms;
  if (unit == "ms") ms = num;
  else if (unit == "s" || unit.empty()) ms = num * 1000;
  else if (unit == "m") ms = num * 60000;
  else if (unit == "h") ms = num * 3600000;
  else return make_error(key + ": bad duration unit in \"" + v + "\" (use ms, s, m, h)");
  return std::chrono::milliseconds(static_cast<int64_t>(ms));
}

template <typename T>
Status get(const toml::table& t, const char* path, T& out) {
  auto n = t.at_path(path);
  if (!n) return Status::Ok();
  auto v = n.value<T>();
  if (!v) return make_error(std::string("config key ") + path + " has the wrong type");
  out = *v;
  return Status::Ok();
}

Status get_port(const toml::table& t, const char* path, uint16_t& out) {
  int64_t v = out;
  TRY(get(t, path, v));
  if (v < 0 || v > 65535) return make_error(std::string("config key ") + path + " is not a port number");
  out = static_cast<uint16_t>(v);
  return Status::Ok();
}

Status get_dur(const toml::table& t, const char* path, std::chrono::milliseconds& out) {
  auto n = t.at_path(path);
  if (!n) return Status::Ok();
  TRY_ASSIGN(out, parse_duration(*n.node(), path));
  return Status::Ok();
}

Status apply(const toml::table& t, KmsConfig& c) {
  int64_t workers = c.workers;
  TRY(get(t, "default.workers", workers));
  TRY(get(t, "rpc.workers", workers));
  if (workers < 1 || workers > 256) return make_error("config key workers must be 1..256");
  c.workers = static_cast<int>(workers);
  TRY(get(t, "rpc.address", c.rpc_address));
  TRY(get_port(t, "rpc.port", c.rpc_port));
  TRY(get(t, "rpc.tls.key", c.rpc_tls_key));
  TRY(get(t, "rpc.tls.certs", c.rpc_tls_certs));
  TRY(get(t, "rpc.tls.mutual.ca_certs", c.rpc_mutual_ca));
  TRY(get(t, "rpc.tls.mutual.mandatory", c.rpc_mutual_mandatory));

  TRY(get(t, "core.cert_dir", c.cert_dir));
  TRY(get(t, "core.site_name", c.site_name));
  TRY(get(t, "core.enforce_self_authorization", c.enforce_self_authorization));
  TRY(get(t, "core.attest_rpc_cert", c.attest_rpc_cert));
  TRY(get(t, "core.onboard.quote_enabled", c.attest_rpc_cert));  // [v0.5.x] name
  TRY(get(t, "core.guest_agent", c.guest_agent));

  TRY(get(t, "core.attestation.insecure_allow_external_trust_anchors", c.insecure_allow_external_trust_anchors));
  TRY(get(t, "core.attestation.urls.pccs", c.pccs_url));
  TRY(get(t, "core.attestation.collateral_file", c.collateral_file));
  if (auto rc = t.at_path("core.attestation.root_ca").as_table()) {
    for (const auto& [k, v] : *rc) {
      auto s = v.value<std::string>();
      if (!s) return make_error("config key core.attestation.root_ca." + std::string(k.str()) + " must be a path");
      c.root_ca[std::string(k.str())] = *s;
    }
  }

  TRY(get(t, "core.image.verify", c.image_verify));
  TRY(get(t, "core.metrics.enabled", c.metrics_enabled));

  TRY(get(t, "core.auth_api.type", c.auth_type));
  TRY(get(t, "core.auth_api.webhook.url", c.webhook_url));
  TRY(get_dur(t, "core.auth_api.webhook.timeout", c.webhook_timeout));
  TRY(get_dur(t, "core.auth_api.webhook.info_timeout", c.webhook_info_timeout));
  TRY(get_dur(t, "core.auth_api.webhook.refresh_interval", c.webhook_refresh));
  TRY(get(t, "core.auth_api.dev.gateway_app_id", c.dev_gateway_app_id));
  TRY(get(t, "core.auth_api.file.path", c.file_policy_path));

  TRY(get(t, "core.onboard.enabled", c.onboard_enabled));
  TRY(get(t, "core.onboard.auto_bootstrap_domain", c.auto_bootstrap_domain));
  TRY(get(t, "core.onboard.address", c.onboard_address));
  TRY(get_port(t, "core.onboard.port", c.onboard_port));
  return Status::Ok();
}

Status validate(const KmsConfig& c) {
  if (c.auth_type != "webhook" && c.auth_type != "dev" && c.auth_type != "file")
    return make_error("core.auth_api.type must be \"webhook\", \"dev\" or \"file\" (got \"" + c.auth_type + "\")");
  if (c.cert_dir.empty()) return make_error("core.cert_dir must not be empty");
  if (!c.root_ca.empty() && !c.insecure_allow_external_trust_anchors)
    return make_error(
        "core.attestation.root_ca is set but core.attestation.insecure_allow_external_trust_anchors is false; "
        "set it to true to trust a non-Intel root (simulated TDX only)");
  if (!c.auto_bootstrap_domain.empty()) TRY(validate_domain(c.auto_bootstrap_domain));
  return Status::Ok();
}

}  // namespace

Status validate_domain(const std::string& d) {
  auto bad = [&](const std::string& why) { return make_error("invalid domain \"" + d + "\": " + why); };
  if (d.empty() || d.size() > 253) return bad("must be 1-253 characters");
  size_t start = 0;
  while (true) {
    size_t dot = d.find('.', start);
    std::string label = d.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    if (label.empty() || label.size() > 63) return bad("each label must be 1-63 characters");
    if (label.front() == '-' || label.back() == '-') return bad("labels must not start or end with '-'");
    for (char ch : label)
      if (!(isalnum(static_cast<unsigned char>(ch)) || ch == '-')) return bad("only A-Z a-z 0-9 - and . allowed");
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  return Status::Ok();
}

Result<KmsConfig> parse_config_text(const std::string& text, KmsConfig base) {
  toml::table t;
  try {
    t = toml::parse(text);
  } catch (const toml::parse_error& e) {
    return make_error(std::string("TOML syntax error: ") + std::string(e.description()) + " at line " +
                      std::to_string(e.source().begin.line));
  }
  TRY(apply(t, base));
  return base;
}

Result<KmsConfig> load_config(const std::optional<std::string>& path,
                              const std::function<const char*(const char*)>& env_fn, bool include_system_files) {
  auto env = [&](const char* k) -> const char* { return env_fn ? env_fn(k) : std::getenv(k); };
  KmsConfig c;
  std::vector<std::string> files;
  if (include_system_files) files = {"/etc/kms/kms.toml", "./kms.toml"};
  for (const auto& f : files) {
    if (!file_exists(f)) continue;
    TRY_ASSIGN(std::string text, read_file(f));
    auto r = parse_config_text(text, c);
    if (!r.ok()) return r.error().wrap("config " + f);
    c = std::move(r).value();
    c.loaded_files.push_back(f);
  }
  if (path) {
    auto text = read_file(*path);
    if (!text.ok()) return text.error().wrap("config file given with -c");
    auto r = parse_config_text(*text, c);
    if (!r.ok()) return r.error().wrap("config " + *path);
    c = std::move(r).value();
    c.loaded_files.push_back(*path);
  }
  if (const char* d = env("KMS_DOMAIN"); d && *d) c.auto_bootstrap_domain = d;
  if (c.guest_agent.empty()) {
    const char* a = env("DSTACK_AGENT_ADDRESS");
    c.guest_agent = (a && *a) ? a : "unix:/var/run/dstack.sock";
  }
  std::string dir = c.cert_dir;
  if (c.rpc_tls_key.empty()) c.rpc_tls_key = dir + "/rpc.key";
  if (c.rpc_tls_certs.empty()) c.rpc_tls_certs = dir + "/rpc.crt";
  if (c.rpc_mutual_ca.empty()) c.rpc_mutual_ca = dir + "/tmp-ca.crt";
  TRY(validate(c));
  return c;
}

}  // namespace dstack::kms
