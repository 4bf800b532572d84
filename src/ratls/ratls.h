// RA-TLS (spec §3.2, §3.3, §5.5): certificates that carry a TDX attestation bound to the certificate key,
// and verification of such a certificate (or of a bare VersionedAttestation) into a BootInfo for the KMS
// auth webhook (spec §6.1).
//
// Binding: report_data = SHA-512("ratls-cert:" || DER SubjectPublicKeyInfo of the certificate key).
// Extensions (arc 1.3.6.1.4.1.62397.1, all non-critical, payload wrapped in an OCTET STRING):
//   .1 legacy TDX quote, .2 legacy event log JSON (optional "ELGZv1" gzip), .3 app id (20 B),
//   .4 special usage (UTF-8, e.g. "kms:rpc", "app:ca", "app:custom"), .8 stripped VersionedAttestation,
//   .9 app info (MessagePack). Readers prefer .8 and fall back to .1 + .2.
#pragma once

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "base/bytes.h"
#include "base/result.h"
#include "crypto/p256.h"
#include "crypto/x509.h"

namespace dstack::ratls {

inline constexpr const char* kOidTdxQuote = "1.3.6.1.4.1.62397.1.1";
inline constexpr const char* kOidEventLog = "1.3.6.1.4.1.62397.1.2";
inline constexpr const char* kOidAppId = "1.3.6.1.4.1.62397.1.3";
inline constexpr const char* kOidSpecialUsage = "1.3.6.1.4.1.62397.1.4";
inline constexpr const char* kOidAttestation = "1.3.6.1.4.1.62397.1.8";
inline constexpr const char* kOidAppInfo = "1.3.6.1.4.1.62397.1.9";

// ---- report_data constructions (spec §3.3) ----

// SHA-512("ratls-cert:" || spki_der): the full 64 bytes.
Bytes ratls_report_data(ByteView spki_der);
// H(tag || ":" || content) zero-padded to 64 bytes. hash: sha256|sha384|sha512 (default)|sha3-256|sha3-384|
// sha3-512|keccak256|keccak384|keccak512|raw ("raw": content must be exactly 64 bytes, tag ignored).
Result<Bytes> quote_content_report_data(std::string_view tag, ByteView content, std::string_view hash = "sha512");

// ---- building certificates ----

struct RaTlsCertParams {
  std::optional<std::string> org_name;
  std::string common_name;
  std::vector<std::string> alt_names;
  bool is_ca = false;
  int ca_path_len = -1;
  bool usage_server_auth = false;
  bool usage_client_auth = false;
  std::optional<int64_t> not_before;            // unix s; default rcgen's 1975-01-01
  std::optional<int64_t> not_after;             // unix s; default now + 3650 days
  // VersionedAttestation bytes (as returned by the guest agent's Attest). It is stripped (spec §8.6) before
  // it goes into extension .8. Its report_data must equal ratls_report_data(subject key SPKI); checked.
  std::optional<Bytes> attestation;
  std::optional<Bytes> app_id;                  // extension .3 (20 bytes)
  std::optional<std::string> special_usage;     // extension .4
  std::optional<Bytes> app_info;                // extension .9 (already encoded)
  // Legacy attestation extensions (.1 quote, .2 JSON event log), e.g. for a V1 SignCert CSR. Not checked.
  std::optional<Bytes> legacy_quote;
  std::optional<std::string> legacy_event_log;
};

// Issues a certificate for `subject_key` signed by `issuer_key` (issuer == nullptr => self-signed, and then
// issuer_key must be subject_key).
Result<crypto::Certificate> issue_cert(const RaTlsCertParams& params, const crypto::P256Key& subject_key,
                                       const crypto::P256Key& issuer_key, const crypto::Certificate* issuer);

// What a certificate carries (no verification).
struct CertExtensions {
  std::optional<Bytes> attestation;          // .8 (stripped VersionedAttestation), as stored
  std::optional<Bytes> legacy_quote;         // .1
  std::optional<std::string> legacy_event_log;  // .2 (decompressed if ELGZv1)
  std::optional<Bytes> app_id;               // .3
  std::optional<std::string> special_usage;  // .4
  std::optional<Bytes> app_info;             // .9
  bool has_attestation() const { return attestation.has_value() || legacy_quote.has_value(); }
};
Result<CertExtensions> read_extensions(ByteView cert_der);
Result<CertExtensions> read_extensions(const crypto::Certificate& cert);

// ---- verification ----

// Collateral in dcap-qvl JSON form (keys pck_crl_issuer_chain, root_ca_crl, pck_crl, tcb_info_issuer_chain,
// tcb_info, tcb_info_signature, qe_identity_issuer_chain, qe_identity, qe_identity_signature), for a quote.
using CollateralFetcher = std::function<Result<nlohmann::json>(ByteView quote)>;

struct CollateralSource {
  CollateralFetcher fetch;
  // Same collateral for every quote (a file written by `dstack-tdx-sim collateral` or a captured PCCS answer).
  static CollateralSource from_json(nlohmann::json collateral);
  static Result<CollateralSource> from_file(const std::string& path);
  // PCCS / Intel PCS v4 API (e.g. "https://pccs.phala.network"): FMSPC and CA type from the quote's PCK
  // certificate, then GET pckcrl, {tdx|sgx}/tcb, qe/identity, rootcacrl (each with `timeout`).
  static CollateralSource pccs(std::string base_url, std::chrono::milliseconds timeout = std::chrono::seconds(20));
};

struct TrustOptions {
  // PEM of the root CA the PCK chain must end in. Empty => the embedded Intel SGX Root CA.
  // A non-empty value is an external trust anchor (the simulated platform's root); callers must opt in.
  std::string root_ca_pem;
  bool allow_debug_td = false;   // validate_tcb rejects debug TDs unless set
};

struct VerifyOptions {
  CollateralSource collateral;
  TrustOptions trust;
  int64_t now = 0;               // unix seconds for collateral/cert validity; 0 = current time
  bool use_boottime_mr = false;  // mr_aggregated from RTMR3 replayed up to "boot-mr-done"; key_provider_info ""
};

// Identity of a booted CVM as sent to the auth webhook (spec §6.1).
struct BootInfo {
  std::string tee_variant = "dstack-tdx";
  Bytes mr_aggregated;    // 32
  Bytes os_image_hash;    // 32 (or empty if vm_config has none)
  Bytes mr_system;        // 32
  Bytes app_id;           // 20
  Bytes compose_hash;     // 32
  Bytes instance_id;      // 20 or empty
  Bytes device_id;        // 32 = SHA256(ppid)
  Bytes key_provider_info;  // UTF-8 JSON {"name":..,"id":..}; empty for boot-time MR
  std::string tcb_status;
  std::vector<std::string> advisory_ids;

  // camelCase keys, hex without 0x (keyProviderInfo = hex of the JSON bytes).
  nlohmann::json to_webhook_json() const;
  // Accepts hex with or without 0x; missing keys => empty.
  static Result<BootInfo> from_webhook_json(const nlohmann::json& j);
};

struct RuntimeEvent {
  std::string event;
  Bytes payload;
  int version = 1;
};

struct VerifiedAttestation {
  // DCAP verdict.
  std::string tcb_status;                 // e.g. "UpToDate"
  std::vector<std::string> advisory_ids;
  Bytes ppid;                             // 16 B from the PCK certificate (may be empty)
  // TD report fields (quote offsets of spec §8.1).
  Bytes tee_tcb_svn, mr_seam, mr_signer_seam, seam_attributes, td_attributes, xfam;
  Bytes mr_td, mr_config_id, mr_owner, mr_owner_config;
  Bytes rtmr0, rtmr1, rtmr2, rtmr3;
  Bytes report_data;                      // 64
  // dstack stack.
  std::vector<RuntimeEvent> runtime_events;
  std::string vm_config;                  // JSON string carried by the attestation ("" for legacy certs)
  Bytes quote;
  BootInfo boot_info;
};

// Verifies a VersionedAttestation (stripped or full, V0 SCALE or V1 msgpack): DCAP quote verification
// against the collateral and trust anchor, TD validation, RTMR3 replay from the runtime events, quote
// report_data == stack report_data, and, if `expected_report_data` is given, equality with it.
Result<VerifiedAttestation> verify_attestation(ByteView versioned_attestation,
                                               std::optional<ByteView> expected_report_data,
                                               const VerifyOptions& opts);

// Verifies a legacy attestation: a TDX quote plus (optionally) its JSON event log, whose IMR-3 events are
// the runtime events (cert extensions .1 + .2, SignCert CSR V1). report_data is taken from the quote.
Result<VerifiedAttestation> verify_legacy_attestation(ByteView quote, const std::optional<std::string>& event_log_json,
                                                      std::optional<ByteView> expected_report_data,
                                                      const VerifyOptions& opts);

// P-256 public key (no private part) from DER SubjectPublicKeyInfo, e.g. to issue a certificate for a CSR key.
Result<crypto::P256Key> p256_public_key_from_spki(ByteView spki_der);

// Verifies the attestation carried by an RA-TLS certificate (DER): extension .8 (or legacy .1 + .2), bound
// to the certificate key (report_data == ratls_report_data(cert SPKI)). Error "No attestation provided"
// when the certificate has no attestation extension.
Result<VerifiedAttestation> verify_peer_attestation(ByteView cert_der, const VerifyOptions& opts);

}  // namespace dstack::ratls
