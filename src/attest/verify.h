// Offline DCAP quote verification (TDX v4/v5, SGX v3) against collateral, following Intel's QVL / dcap-qvl:
// PCK certificate chain to a pinned root (Intel SGX Root CA by default), root CA CRL + PCK CRL, TCB info and
// QE identity signatures and issuer chains, QE report signature by the PCK key, QE report data binding of the
// attestation key, quote signature, QE identity policy, TCB level matching (SGX components + PCESVN from the
// PCK certificate, TDX components, TDX module identity) and status convergence, collateral validity at `now`.
//
// Any failure is an Error whose message says what failed (e.g. "collateral expired: TCB info nextUpdate
// 2025-07-19T10:16:03Z is before verification time ..."). A verified quote yields a VerifiedReport; the caller
// decides which TCB statuses to accept (Revoked is always an error).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "attest/collateral.h"
#include "attest/quote.h"
#include "base/bytes.h"
#include "base/result.h"

namespace dstack::attest {

// PEM of Intel's "Intel SGX Root CA" (self-signed, P-256), pinned.
const std::string& intel_sgx_root_ca_pem();

struct TrustOptions {
  // Trust Intel's SGX Root CA (the default). Set false only together with extra_root_pems (e.g. a simulated
  // platform in tests).
  bool trust_intel_root = true;
  // Additional self-signed root certificates (PEM) to accept. Never set implicitly: the caller opts in.
  std::vector<std::string> extra_root_pems;
  // Accept debug TDs (TD_ATTRIBUTES.TUD) / debug enclaves (ATTRIBUTES.DEBUG). Off: they are rejected.
  bool allow_debug = false;
};

struct VerifiedReport {
  std::string status;                     // UpToDate, SWHardeningNeeded, ConfigurationNeeded,
                                          // ConfigurationAndSWHardeningNeeded, OutOfDate,
                                          // OutOfDateConfigurationNeeded
  std::vector<std::string> advisory_ids;  // union of platform, TDX module and QE advisories
  uint32_t tee_type = 0;                  // kTeeTypeTdx / kTeeTypeSgx
  Quote quote;                            // parsed quote (header, TD report or enclave report, signature data)
  Bytes ppid;                             // 16 bytes from the PCK certificate
  Bytes fmspc;                            // 6 bytes from the PCK certificate
  Bytes cpu_svn;                          // 16 bytes from the PCK certificate
  uint16_t pce_svn = 0;                   // from the PCK certificate
  std::string platform_status;            // matched TCB level status (before convergence)
  std::string qe_status;                  // QE identity TCB level status
  std::string tdx_module_status;          // TDX module identity status ("" when not applicable)

  const TdReport* td_report() const { return quote.is_tdx() ? &quote.td_report : nullptr; }
  const EnclaveReport* sgx_report() const { return quote.is_sgx() ? &quote.sgx_report : nullptr; }
};

// One-shot verification (no caching). `now_unix` is the verification time in seconds.
Result<VerifiedReport> verify_quote(ByteView quote, const Collateral& collateral, int64_t now_unix,
                                    const TrustOptions& trust = {});

// Verifier with a cache of collateral verification results (issuer chains, CRLs, TCB info / QE identity
// signatures, parsed JSON) and of PCK certificate chains, keyed by content hash. A cached result is reused
// only while `now` lies inside the validity window computed when it was verified, so results equal those
// of verify_quote. Per quote the remaining work is parsing plus ~2-3 P-256 verifications. Thread-safe.
class QuoteVerifier {
 public:
  explicit QuoteVerifier(TrustOptions trust = {}, size_t max_entries = 64);
  ~QuoteVerifier();
  QuoteVerifier(const QuoteVerifier&) = delete;
  QuoteVerifier& operator=(const QuoteVerifier&) = delete;

  Result<VerifiedReport> verify(ByteView quote, const Collateral& collateral, int64_t now_unix);
  void clear_cache();

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// Convenience: "2025-06-19T10:16:03Z" -> unix seconds.
Result<int64_t> parse_iso8601_utc(std::string_view s);

}  // namespace dstack::attest
