// VM work dir files (spec §10.3): vm-manifest.json, vm-state.json; port mapping specs (spec §10.4).
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "base/result.h"

namespace dstack::vmm {

// One port mapping as the VMM stores it (manifest `port_map`): host address:from -> VM port `to`.
struct PortMap {
  std::string address;   // host address
  std::string protocol;  // "tcp" | "udp"
  uint16_t from = 0;     // host port
  uint16_t to = 0;       // vm port
  bool operator==(const PortMap&) const = default;
};

// "proto:host_port:vm_port" (address = default_address) or "proto:host_addr:host_port:vm_port".
Result<PortMap> parse_port_spec(const std::string& spec, const std::string& default_address = "127.0.0.1");
std::string format_port(const PortMap& p);  // "tcp:127.0.0.1:9100:9100"

// pRPC PortMapping JSON {protocol, host_port, vm_port, host_address} <-> PortMap.
Result<PortMap> port_from_rpc(const nlohmann::json& j, const std::string& default_address);
nlohmann::json port_to_rpc(const PortMap& p);

struct VmManifest {
  std::string id;
  std::string name;
  std::string app_id;  // hex, lowercase, no 0x
  uint32_t vcpu = 1;
  uint32_t memory = 1024;    // MB
  uint32_t disk_size = 20;   // GB
  std::string image;
  std::vector<PortMap> port_map;
  uint64_t created_at_ms = 0;
  bool hugepages = false;
  bool pin_numa = false;
  std::vector<std::string> kms_urls;
  std::vector<std::string> gateway_urls;
  bool no_tee = false;
  std::optional<std::string> simulated_tee;
  bool operator==(const VmManifest&) const = default;
};

nlohmann::ordered_json manifest_to_json(const VmManifest& m);
Result<VmManifest> manifest_from_json(const nlohmann::json& j);

struct VmState {
  bool started = false;
};

}  // namespace dstack::vmm
