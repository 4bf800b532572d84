#include "vmm/manifest.h"

#include <charconv>

namespace dstack::vmm {
namespace {

std::vector<std::string> split(const std::string& s, char d) {
  std::vector<std::string> out;
  size_t start = 0;
  while (true) {
    size_t p = s.find(d, start);
    out.push_back(s.substr(start, p == std::string::npos ? std::string::npos : p - start));
    if (p == std::string::npos) break;
    start = p + 1;
  }
  return out;
}

Result<uint16_t> parse_port_num(const std::string& s, const std::string& what, const std::string& spec) {
  unsigned v = 0;
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc() || ptr != s.data() + s.size() || v < 1 || v > 65535)
    return make_error("invalid port mapping '" + spec + "': " + what + " '" + s + "' must be a number 1-65535");
  return static_cast<uint16_t>(v);
}

}  // namespace

Result<PortMap> parse_port_spec(const std::string& spec, const std::string& default_address) {
  auto parts = split(spec, ':');
  if (parts.size() != 3 && parts.size() != 4)
    return make_error("invalid port mapping '" + spec +
                      "': expected protocol:host_port:vm_port or protocol:host_address:host_port:vm_port "
                      "(e.g. tcp:127.0.0.1:9100:9100)");
  PortMap p;
  p.protocol = parts[0];
  if (p.protocol != "tcp" && p.protocol != "udp")
    return make_error("invalid port mapping '" + spec + "': protocol must be tcp or udp");
  size_t i = 1;
  if (parts.size() == 4) {
    p.address = parts[1];
    if (p.address.empty()) return make_error("invalid port mapping '" + spec + "': empty host address");
    i = 2;
  } else {
    p.address = default_address;
  }
  TRY_ASSIGN(p.from, parse_port_num(parts[i], "host port", spec));
  TRY_ASSIGN(p.to, parse_port_num(parts[i + 1], "vm port", spec));
  return p;
}

std::string format_port(const PortMap& p) {
  return p.protocol + ":" + p.address + ":" + std::to_string(p.from) + ":" + std::to_string(p.to);
}

Result<PortMap> port_from_rpc(const nlohmann::json& j, const std::string& default_address) {
  if (!j.is_object()) return make_error("port mapping must be an object {protocol, host_port, vm_port, host_address}");
  PortMap p;
  p.protocol = j.value("protocol", std::string("tcp"));
  if (p.protocol.empty()) p.protocol = "tcp";
  if (p.protocol != "tcp" && p.protocol != "udp")
    return make_error("port mapping: protocol must be tcp or udp (got \"" + p.protocol + "\")");
  auto num = [&](const char* k) -> Result<uint16_t> {
    if (!j.contains(k) || !j[k].is_number_integer()) return make_error(std::string("port mapping: missing number ") + k);
    auto v = j[k].get<int64_t>();
    if (v < 1 || v > 65535) return make_error(std::string("port mapping: ") + k + " " + std::to_string(v) + " is outside 1-65535");
    return static_cast<uint16_t>(v);
  };
  TRY_ASSIGN(p.from, num("host_port"));
  TRY_ASSIGN(p.to, num("vm_port"));
  p.address = j.value("host_address", std::string());
  if (p.address.empty()) p.address = default_address;
  return p;
}

nlohmann::json port_to_rpc(const PortMap& p) {
  return {{"protocol", p.protocol}, {"host_port", p.from}, {"vm_port", p.to}, {"host_address", p.address}};
}

nlohmann::ordered_json manifest_to_json(const VmManifest& m) {
  nlohmann::ordered_json j;
  j["id"] = m.id;
  j["name"] = m.name;
  j["app_id"] = m.app_id;
  j["vcpu"] = m.vcpu;
  j["memory"] = m.memory;
  j["disk_size"] = m.disk_size;
  j["image"] = m.image;
  j["port_map"] = nlohmann::ordered_json::array();
  for (const auto& p : m.port_map)
    j["port_map"].push_back({{"address", p.address}, {"protocol", p.protocol}, {"from", p.from}, {"to", p.to}});
  j["created_at_ms"] = m.created_at_ms;
  j["hugepages"] = m.hugepages;
  j["pin_numa"] = m.pin_numa;
  j["gpus"] = {{"attach_mode", "listed"}, {"gpus", nlohmann::ordered_json::array()},
               {"bridges", nlohmann::ordered_json::array()}};
  j["kms_urls"] = m.kms_urls;
  j["gateway_urls"] = m.gateway_urls;
  j["no_tee"] = m.no_tee;
  if (m.simulated_tee) j["simulated_tee"] = *m.simulated_tee;
  j["swtpm"] = false;
  j["networks"] = nlohmann::ordered_json::array();
  j["volumes"] = nlohmann::ordered_json::array();
  j["networking"] = {{"mode", "user"}};
  return j;
}

Result<VmManifest> manifest_from_json(const nlohmann::json& j) {
  try {
    VmManifest m;
    m.id = j.at("id").get<std::string>();
    m.name = j.at("name").get<std::string>();
    m.app_id = j.value("app_id", std::string());
    m.vcpu = j.value("vcpu", 1u);
    m.memory = j.value("memory", 1024u);
    m.disk_size = j.value("disk_size", 20u);
    m.image = j.at("image").get<std::string>();
    if (j.contains("port_map"))
      for (const auto& p : j["port_map"])
        m.port_map.push_back(PortMap{p.value("address", std::string("127.0.0.1")), p.value("protocol", std::string("tcp")),
                                     p.at("from").get<uint16_t>(), p.at("to").get<uint16_t>()});
    m.created_at_ms = j.value("created_at_ms", uint64_t{0});
    m.hugepages = j.value("hugepages", false);
    m.pin_numa = j.value("pin_numa", false);
    if (j.contains("kms_urls")) m.kms_urls = j["kms_urls"].get<std::vector<std::string>>();
    if (j.contains("gateway_urls")) m.gateway_urls = j["gateway_urls"].get<std::vector<std::string>>();
    m.no_tee = j.value("no_tee", false);
    if (j.contains("simulated_tee") && j["simulated_tee"].is_string()) m.simulated_tee = j["simulated_tee"].get<std::string>();
    return m;
  } catch (const std::exception& e) {
    return make_error(std::string("invalid vm-manifest.json: ") + e.what());
  }
}

}  // namespace dstack::vmm
