// TDX backends of the guest agent: quotes and RTMR3 extension.
//   real:      Linux configfs-tsm (<tsm_report_dir>/<entry>/{inblob,outblob,generation,provider}) for quotes and
//              the tdx_guest sysfs RTMR file (".../measurements/rtmr3:sha384", write 48 bytes) for extension.
//   simulated: attest::sim::SimPlatform signs TDX quotes; MRTD/RTMR0-2 from config (or replayed from synthetic
//              boot events); RTMR3 is kept by the agent and persisted in a state file so a restart keeps it.
#pragma once

#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "attest/eventlog.h"
#include "base/bytes.h"
#include "base/result.h"

namespace dstack::guest {

class TdxBackend {
 public:
  virtual ~TdxBackend() = default;
  virtual std::string name() const = 0;
  // Quote over exactly 64 bytes of report data.
  virtual Result<Bytes> get_quote(ByteView report_data64) = 0;
  // RTMR3 <- SHA384(RTMR3 || digest48).
  virtual Status extend_rtmr3(ByteView digest48) = 0;
  // Boot-time (CCEL) event log: RTMR0-2 events, digests present.
  virtual Result<std::vector<attest::TdxEvent>> boot_event_log() = 0;
  // PPID when the platform knows it without verification (simulator); empty otherwise.
  virtual Bytes ppid() const { return {}; }
};

struct SimBackendConfig {
  std::string platform_dir;     // SimPlatform directory (created if missing)
  std::string state_file;       // persisted RTMR3 (hex)
  Bytes mr_td;                  // 48, default: fixed simulated value
  Bytes mr_config_id, mr_owner, mr_owner_config;  // 48 each, default zeros
  // RTMR0-2: if empty they are replayed from synthetic boot events (so an event-log replay reproduces them).
  std::optional<Bytes> rtmr0, rtmr1, rtmr2;
};
Result<std::unique_ptr<TdxBackend>> make_sim_backend(const SimBackendConfig& cfg);

struct RealBackendConfig {
  std::string tsm_report_dir = "/sys/kernel/config/tsm/report";
  std::string rtmr3_file = "/sys/devices/virtual/misc/tdx_guest/measurements/rtmr3:sha384";
  std::string ccel_file = "/sys/firmware/acpi/tables/data/CCEL";   // read only if it exists (not parsed yet)
  int quote_timeout_ms = 30000;   // waiting for outblob (real kernel: read blocks; fake trees: file appears)
};
Result<std::unique_ptr<TdxBackend>> make_real_backend(const RealBackendConfig& cfg);

}  // namespace dstack::guest
