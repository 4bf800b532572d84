// Remote check of a deployed dstack KMS (what `dstack-verify kms` prints): fetch KMS.GetMeta over HTTPS, check
// that the root keys were generated inside a TEE and are bound to the TDX quote, and that the KMS answers fast.
//
// Trust model: the TLS connection to the KMS is NOT authenticated by a CA (the KMS's root CA is self-signed and
// unknown before this check). Trust comes from the quote instead: the quote must verify against the Intel root
// (or an explicitly allowed simulated root) and its report_data must equal
//   keccak256("dstack-kms-genereted-keys-v1:" + hex(ca_pubkey) + ";" + hex(k256_pubkey) + ";") || 32 zero bytes
// (spec §3.3; the typo "genereted" is upstream's), where ca_pubkey is the DER SPKI of the served ca_cert and
// k256_pubkey the served k256_pubkey. Additionally the TLS certificate the server presented must be signed by
// that root CA, so the endpoint we talked to holds a key the attested root certified.
#pragma once

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "attest/collateral.h"
#include "attest/verify.h"
#include "base/bytes.h"
#include "base/result.h"

namespace dstack::verify {

// report_data of the KMS bootstrap binding (64 bytes; spec §3.3).
Bytes kms_bootstrap_report_data(ByteView ca_pubkey_spki_der, ByteView k256_pubkey_compressed);

struct KmsCheckOptions {
  std::string url;  // "https://HOST:PORT" (a trailing "/" or "/prpc" is accepted); GetMeta = <url>/prpc/KMS.GetMeta
  std::chrono::milliseconds timeout{10000};  // per HTTP request
  int64_t max_response_ms = 1000;            // GetMeta must answer faster than this
  int64_t now_unix = 0;                      // quote verification time; 0 = now

  // Quote verification. Exactly one source of trust must be configured, else the quote check fails:
  //  * collateral (+ trust, which defaults to Intel's SGX Root CA; extra_root_pems for --root-ca), or
  //  * sim_platform_dir: root CA and collateral from a dstack-tdx-sim platform; requires allow_sim_root.
  std::optional<attest::Collateral> collateral;
  attest::TrustOptions trust;
  std::string sim_platform_dir;
  bool allow_sim_root = false;
};

struct CheckItem {
  std::string name;    // stable id, e.g. "response_time", "quote_verified"
  bool ok = false;
  std::string detail;  // what was found / what is wrong and what to check
};

struct KmsReport {
  std::string url;
  bool ok = false;                 // every check passed
  std::vector<CheckItem> checks;   // in the order performed
  nlohmann::json get_meta;         // GetMeta response as received (null if not fetched)
  double response_ms = -1;         // GetMeta round trip (fresh TLS connection), -1 if it failed
  // Filled when the quote parsed / verified:
  std::string tcb_status;          // e.g. "UpToDate"
  std::vector<std::string> advisory_ids;
  std::string mr_td, rtmr0, rtmr1, rtmr2, rtmr3, mr_config_id, report_data;  // hex
  std::string trust_root;          // "intel", "custom root CA", "SIMULATED platform <dir>"

  const CheckItem* find(const std::string& name) const;
};

// Runs every check against a live KMS. Never throws; network errors become failed checks.
KmsReport check_kms(const KmsCheckOptions& opts);

// The offline part: checks a GetMeta JSON (+ the TLS chain the server presented, leaf first, DER) and appends
// to `report`. Exposed for tests and for checking a saved GetMeta backup (`--meta-file`).
void check_meta(const nlohmann::json& meta, const std::vector<Bytes>& tls_chain_der, const KmsCheckOptions& opts,
                KmsReport& report);

// Human-readable multi-line report and the --json form.
std::string report_to_text(const KmsReport& report);
nlohmann::ordered_json report_to_json(const KmsReport& report);

}  // namespace dstack::verify
