// dstack-guest-agent configuration (`dstack.toml`, spec §7.1), read with toml++.
//
//   [default.core]
//   keys_file = "/dstack/.host-shared/.appkeys.json"
//   compose_file = "/dstack/.host-shared/app-compose.json"
//   sys_config_file = "/dstack/.host-shared/.sys-config.json"
//   event_log_dir = "/run/log/dstack"
//   backend = "auto"            # auto | tdx | simulator   (auto: tdx only if the configfs-tsm dir exists)
//   [default.core.tdx]          tsm_report_dir, rtmr3_file, ccel_file
//   [default.core.simulator]    platform_dir, state_dir, mrtd, rtmr0, rtmr1, rtmr2, mr_config_id (hex),
//                               app_id, instance_id (hex, optional), generate_keys = true
//   [internal]     address = "unix:/var/run/dstack/dstack.sock"   mode = "0666"
//   [internal-v0]  address = "unix:/var/run/dstack/tappd.sock"    mode = "0666"
//   [external]     address = "0.0.0.0"  port = 8090    (enabled = true)
// Relative paths are relative to the config file's directory.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "base/bytes.h"
#include "base/result.h"

namespace dstack::guest {

struct ListenerConfig {
  bool enabled = true;
  std::string address;        // "unix:/path" or "HOST" (with port) or "HOST:PORT"
  uint16_t port = 0;
  uint32_t mode = 0666;       // unix socket file mode
  std::string listen_address() const;  // for rpc::HttpServer::listen
};

struct AgentConfig {
  std::string keys_file = "/dstack/.host-shared/.appkeys.json";
  std::string compose_file = "/dstack/.host-shared/app-compose.json";
  std::string sys_config_file = "/dstack/.host-shared/.sys-config.json";
  std::string event_log_dir = "/run/log/dstack";
  std::string backend = "auto";

  std::string tsm_report_dir = "/sys/kernel/config/tsm/report";
  std::string rtmr3_file = "/sys/devices/virtual/misc/tdx_guest/measurements/rtmr3:sha384";
  std::string ccel_file = "/sys/firmware/acpi/tables/data/CCEL";

  std::string sim_platform_dir = "/var/lib/dstack-sim/platform";
  std::string sim_state_dir = "/var/lib/dstack-sim";
  Bytes sim_mrtd, sim_mr_config_id;
  std::optional<Bytes> sim_rtmr0, sim_rtmr1, sim_rtmr2;
  Bytes sim_app_id, sim_instance_id;
  bool sim_generate_keys = true;

  ListenerConfig internal{true, "unix:/var/run/dstack/dstack.sock", 0, 0666};
  ListenerConfig internal_v0{true, "unix:/var/run/dstack/tappd.sock", 0, 0666};
  ListenerConfig external{true, "0.0.0.0", 8090, 0666};

  static Result<AgentConfig> load(const std::string& path);
  static Result<AgentConfig> parse(std::string_view toml_text, const std::string& base_dir);
};

}  // namespace dstack::guest
