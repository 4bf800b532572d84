// SignCert certificate signing requests (spec §5.6): SCALE-encoded CertSigningRequest V1/V2, signed with
// ECDSA-P256-SHA256 (ASN.1 DER) by the CSR key over the full encoding.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "base/bytes.h"
#include "base/result.h"

namespace dstack::kms {

inline constexpr const char* kCsrConfirm = "please sign cert:";

// CertConfigV2; V1 (CertConfig) has only the first six fields.
struct CertConfig {
  std::optional<std::string> org_name;
  std::string subject;
  std::vector<std::string> subject_alt_names;
  bool usage_server_auth = false;
  bool usage_client_auth = false;
  bool ext_quote = false;
  bool ext_app_info = false;               // V2 only
  std::optional<uint64_t> not_before;      // V2 only, unix s
  std::optional<uint64_t> not_after;       // V2 only, unix s
};

struct CertSigningRequest {
  uint32_t version = 2;        // 1 or 2 (= SignCertRequest.api_version)
  std::string confirm = kCsrConfirm;
  Bytes pubkey;                // DER SubjectPublicKeyInfo
  CertConfig config;
  Bytes attestation;           // V2: VersionedAttestation (rest of the input, no length prefix)
  Bytes quote;                 // V1
  Bytes event_log;             // V1: JSON event log bytes
};

Bytes encode_csr(const CertSigningRequest& csr);
// version: 1 or 2; anything else is an error.
Result<CertSigningRequest> decode_csr(ByteView data, uint32_t version);

}  // namespace dstack::kms
