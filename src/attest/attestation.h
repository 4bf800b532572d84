// VersionedAttestation (spec §8.6): the bytes in RA-TLS cert extension 1.3.6.1.4.1.62397.1.8, the guest agent
// `Attest` response and the KMS BootstrapResponse. Only the TDX platform (AttestationQuote::DstackTdx) is
// supported. V0 = 0x00 || SCALE(Attestation); V1 (MessagePack) is recognised and rejected with a clear error.
#pragma once

#include <string>
#include <vector>

#include "attest/eventlog.h"
#include "base/bytes.h"
#include "base/result.h"

namespace dstack::attest {

inline constexpr size_t kMaxAttestationSize = 10 * 1024 * 1024;

struct VersionedAttestation {
  // AttestationQuote::DstackTdx(TdxQuote{quote, event_log})
  Bytes quote;                           // raw TDX quote v4
  std::vector<TdxEvent> event_log;       // CCEL (boot-time) events; version/preimage are not encoded in V0
  // Stack data
  std::vector<RuntimeEvent> runtime_events;  // V0 carries only {event, payload} (version 1)
  Bytes report_data;                     // 64 bytes (raw)
  std::string config;                    // the VM's vm_config JSON string

  // 0x00 || enum V0 ... ; errors if report_data is not 64 bytes or a runtime event is V2 (V0 cannot carry it).
  Result<Bytes> to_bytes() const;
  // Decodes V0; no trailing bytes allowed; max 10 MiB.
  static Result<VersionedAttestation> from_bytes(ByteView data);

  // Certificate form: event log reduced to RTMR3 events (digest removed, payload kept) plus the ACPI DATA
  // events of RTMR0 (digest kept, payload "ACPI DATA"); everything else dropped. Quote bytes unchanged.
  VersionedAttestation stripped() const;

  bool operator==(const VersionedAttestation&) const = default;
};

}  // namespace dstack::attest
