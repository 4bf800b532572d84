// Simulated TDX boot measurements of a CVM (spec §8.3-§8.5): MRTD/RTMR0-2 derived deterministically from the OS
// image hash and the VM config (vcpu, memory), so a changed image or config changes mr_aggregated; MR_CONFIG_ID V1
// from the compose hash (attest::mr_config_id_v1). Runtime events, RTMR3 replay and the event log line format come
// from src/attest/eventlog.h (attest::RuntimeEvent, rtmr_extend, runtime_event_to_log_line).
#pragma once

#include <cstdint>

#include "base/bytes.h"
#include "base/result.h"

namespace dstack::cvmsim {

struct BootMeasurement {
  Bytes mrtd, rtmr0, rtmr1, rtmr2;  // 48 bytes each
  Bytes mr_config_id;               // 48 bytes
};

// os_image_hash: any length (normally 32 bytes, vm_config.os_image_hash); compose_hash: 32 bytes.
Result<BootMeasurement> derive_boot_measurement(ByteView os_image_hash, uint32_t vcpu, uint64_t memory_bytes,
                                                ByteView compose_hash);

}  // namespace dstack::cvmsim
