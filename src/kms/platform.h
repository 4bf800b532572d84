// What the KMS needs from its platform: its own attestation (guest agent) and verification of other
// parties' attestations (RA-TLS). Interfaces so services can be unit-tested with fakes.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "auth/auth.h"
#include "base/bytes.h"
#include "base/result.h"
#include "kms/config.h"

namespace dstack::kms {

class Attester {
 public:
  virtual ~Attester() = default;
  // VersionedAttestation bytes for this 64-byte report_data (guest agent `Attest`).
  virtual Result<Bytes> attest(ByteView report_data) = 0;
  // The VM's vm_config string (guest agent `Info`).
  virtual Result<std::string> vm_config() = 0;
};

// Guest agent on `address` ("unix:/path.sock", "/path.sock" or "http://host:port").
std::shared_ptr<Attester> make_guest_agent_attester(const std::string& address,
                                                    std::chrono::milliseconds timeout = std::chrono::seconds(30));

class Verifier {
 public:
  virtual ~Verifier() = default;
  // RA-TLS certificate (DER) -> BootInfo; error "No attestation provided" if it has none.
  virtual Result<auth::BootInfo> verify_cert(ByteView cert_der, bool boot_time_mr = false) = 0;
  // Bare VersionedAttestation that must carry expected_report_data.
  virtual Result<auth::BootInfo> verify_attestation(ByteView attestation, ByteView expected_report_data) = 0;
  // SignCert evidence (spec §2.3), identity with the boot-time MR (§8.4): a VersionedAttestation (CSR V2) or a
  // legacy quote + JSON event log (CSR V1). The defaults refuse (verifiers that cannot do it).
  virtual Result<auth::BootInfo> verify_boot_attestation(ByteView attestation, ByteView expected_report_data);
  virtual Result<auth::BootInfo> verify_legacy_boot_attestation(ByteView quote, const std::string& event_log_json,
                                                                ByteView expected_report_data);
};

// DCAP + event-log verification (src/ratls) with the trust settings of [core.attestation].
Result<std::shared_ptr<Verifier>> make_ratls_verifier(const KmsConfig& cfg);

}  // namespace dstack::kms
