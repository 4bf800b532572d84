// dstack identities derived from a TDX quote + runtime events (spec §8.4, §8.5).
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "attest/attestation.h"
#include "attest/eventlog.h"
#include "base/bytes.h"
#include "base/result.h"

namespace dstack::attest {

// The TD report fields the measurements need, read at the fixed offsets of spec §8.1 (TDX quote v4, TD10 body).
// (Independent of the full quote parser so it works on any well-formed quote; it does NOT verify anything.)
struct TdMeasurements {
  Bytes tee_tcb_svn;       // 16
  Bytes mr_seam;           // 48
  Bytes mr_signer_seam;    // 48
  Bytes td_attributes;     // 8
  Bytes xfam;              // 8
  Bytes mr_td;             // 48
  Bytes mr_config_id;      // 48
  Bytes mr_owner;          // 48
  Bytes mr_owner_config;   // 48
  Bytes rtmr0, rtmr1, rtmr2, rtmr3;  // 48 each
  Bytes report_data;       // 64

  // Requires version 4, tee_type 0x81 and at least 632 bytes.
  static Result<TdMeasurements> from_quote(ByteView quote);
};

// SHA256(key_provider_info) or 32 zero bytes if empty.
Bytes mr_key_provider(std::string_view key_provider_info);
// SHA256(mr_td || rtmr0 || rtmr1 || rtmr2 || mr_key_provider).
Bytes mr_system(const TdMeasurements& m, std::string_view key_provider_info);
// SHA256(mr_td || rtmr0 || rtmr1 || rtmr2 || rtmr3 [|| mr_config_id || mr_owner || mr_owner_config]); the 144
// bytes are appended only if any of the three is non-zero. `rtmr3` is the replayed value to use.
Bytes mr_aggregated(const TdMeasurements& m, ByteView rtmr3);

// MR_CONFIG_ID (48 bytes).
enum class KeyProviderKind : uint8_t { None = 0, Local = 1, Kms = 2, Tpm = 3 };
Result<Bytes> mr_config_id_v1(ByteView compose_hash32);  // 0x01 || compose_hash || 15 zeros
Result<Bytes> mr_config_id_v2(ByteView compose_hash32, ByteView app_id20, KeyProviderKind kp,
                              ByteView key_provider_id);  // 0x02 || keccak256(...) || 15 zeros
Result<KeyProviderKind> key_provider_kind_from_name(std::string_view name);  // none|local|local-sgx|kms|tpm

// What the KMS learns about a verified TDX CVM (the identity part of BootInfo).
struct BootInfo {
  Bytes mr_td, rtmr0, rtmr1, rtmr2, rtmr3;  // from the quote
  Bytes mr_aggregated;       // 32
  Bytes mr_system;           // 32
  Bytes os_image_hash;       // from vm_config JSON "os_image_hash" (empty if absent)
  Bytes app_id;              // payload of `app-id`
  Bytes compose_hash;        // payload of `compose-hash`
  Bytes instance_id;         // payload of `instance-id`
  Bytes device_id;           // SHA256(ppid) when known, else empty (set by the caller)
  std::string key_provider_info;  // payload of `key-provider` (empty for boot-time MR)
  Bytes mr_config_id;
  std::string tee_variant = "dstack-tdx";
};

// Builds the identity from a (separately verified) quote and its runtime events. Fails if replaying all runtime
// events does not reproduce the quoted RTMR3. boot_time_mr: rtmr3' is replayed up to `boot-mr-done` and
// key_provider_info is left empty (spec §8.4). vm_config may be "" (then os_image_hash is empty).
Result<BootInfo> compute_boot_info(const TdMeasurements& m, const std::vector<RuntimeEvent>& runtime_events,
                                   std::string_view vm_config, bool boot_time_mr = false);
Result<BootInfo> compute_boot_info(ByteView quote, const std::vector<RuntimeEvent>& runtime_events,
                                   std::string_view vm_config, bool boot_time_mr = false);

// From a decoded VersionedAttestation (whose quote the caller has verified with attest/verify.h): additionally
// requires the attestation's report_data to equal the quote's, a non-debug TD (TD_ATTRIBUTES bit 0 clear) and an
// all-zero mr_signer_seam (dcap-qvl validate_tcb, spec §8.2), then computes the identity as above.
Result<BootInfo> compute_boot_info(const VersionedAttestation& attestation, bool boot_time_mr = false);

}  // namespace dstack::attest
