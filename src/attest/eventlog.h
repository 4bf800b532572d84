// TDX event logs (spec §8.3): TdxEvent + JSON form, dstack runtime events (RTMR3) with V1/V2 digests,
// RTMR replay (SHA-384 extend from 48 zero bytes), and the runtime-event JSON-lines log file format.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "base/bytes.h"
#include "base/result.h"

namespace dstack::attest {

inline constexpr uint32_t kDstackRuntimeEventType = 0x08000001;  // DSTACK_RUNTIME_EVENT_TYPE
inline constexpr uint32_t kEvEventTag = 6;                         // EV_EVENT_TAG (TCG)
inline constexpr uint32_t kAcpiDataEventType = 10;                 // RTMR0 ACPI DATA events
inline constexpr size_t kRtmrSize = 48;

// Well-known runtime event names (spec §8.3, order written by dstack-util).
namespace events {
inline constexpr const char* kSystemPreparing = "system-preparing";
inline constexpr const char* kAppId = "app-id";
inline constexpr const char* kComposeHash = "compose-hash";
inline constexpr const char* kInitScriptHash = "init-script-hash";
inline constexpr const char* kInstanceId = "instance-id";
inline constexpr const char* kBootMrDone = "boot-mr-done";
inline constexpr const char* kOsImageHash = "os-image-hash";
inline constexpr const char* kKeyProvider = "key-provider";
inline constexpr const char* kStorageFs = "storage-fs";
inline constexpr const char* kSystemReady = "system-ready";
}  // namespace events

// One event of a TDX event log. JSON (GetQuote/Info/legacy cert ext):
// {"imr":u32,"event_type":u32,"digest":"hex","event":"name","event_payload":"hex"[,"version":2][,"preimage":"hex"]}
struct TdxEvent {
  uint32_t imr = 0;              // 0..3 = RTMR0..RTMR3
  uint32_t event_type = 0;
  Bytes digest;                  // SHA-384 (48 B); may be empty in stripped / GetQuote RTMR3 forms
  std::string event;             // name (runtime events, ACPI labels) or ""
  Bytes event_payload;
  std::optional<uint32_t> version;  // runtime event digest version, only written when 2
  std::optional<Bytes> preimage;    // V2 runtime events: the JCS preimage

  bool operator==(const TdxEvent&) const = default;
};

nlohmann::json tdx_event_to_json(const TdxEvent& ev);
Result<TdxEvent> tdx_event_from_json(const nlohmann::json& j);  // accepts "0x" prefixes on hex
// JSON array of TdxEvent (the `event_log` string of GetQuote / tcb_info).
std::string event_log_to_json(const std::vector<TdxEvent>& events);
Result<std::vector<TdxEvent>> event_log_from_json(std::string_view json);

// A dstack runtime event (extends RTMR3). version is 1 (binary preimage) or 2 (JCS JSON preimage).
struct RuntimeEvent {
  std::string event;
  Bytes payload;
  uint32_t version = 1;

  // V1: u32_le(0x08000001) || ":" || event || ":" || payload.
  // V2: JCS {"name":<event>,"payload":"<hex>","type":134217729}.
  Bytes preimage() const;
  Bytes digest() const;  // SHA-384(preimage)
  // imr 3, event_type 0x08000001, digest, payload; V2 => version 2 + preimage.
  TdxEvent to_tdx_event() const;

  bool operator==(const RuntimeEvent&) const = default;
};

// Converts an RTMR3 TdxEvent back (checks imr == 3, event_type == 0x08000001; if a digest is present
// it must equal the recomputed one; V2 preimage, if present, must equal the canonical preimage).
Result<RuntimeEvent> runtime_event_from_tdx_event(const TdxEvent& ev);

// RFC 8785 string serialization (quotes included) used by the V2 preimage.
std::string jcs_string(std::string_view s);

// mr = SHA384(mr || digest). `mr` must be 48 bytes.
Bytes rtmr_extend(ByteView mr, ByteView digest);
// Replays digests starting from 48 zero bytes.
Bytes replay_digests(const std::vector<Bytes>& digests);
// RTMR3 from runtime events: full replay, or (boot_time) stop after the first `boot-mr-done` event.
Bytes replay_runtime_events(const std::vector<RuntimeEvent>& events, bool boot_time = false);
// Replays every IMR of a full TDX event log (events with empty digests are an error).
Result<std::array<Bytes, 4>> replay_event_log(const std::vector<TdxEvent>& events);

// Payload of the first event named `name` that occurs before `system-ready`.
std::optional<Bytes> find_runtime_event(const std::vector<RuntimeEvent>& events, std::string_view name);

// Runtime event log file (/run/log/dstack/runtime_events.log): one JSON object per line
// {"event":"<name>","payload":"<base64>"[,"version":2]}.
std::string runtime_event_to_log_line(const RuntimeEvent& ev);  // without trailing newline
Result<std::vector<RuntimeEvent>> parse_runtime_event_log(std::string_view text);  // blank lines ignored

}  // namespace dstack::attest
