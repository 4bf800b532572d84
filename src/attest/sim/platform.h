// A SIMULATED Intel DCAP platform for machines without TDX/SGX (tests, dev, the `dstack-tdx-sim` tool).
//
// It owns a fake Intel PKI ("dstack-cpp SIMULATED SGX Root CA — NOT INTEL", PCK Platform CA, PCK leaf with the
// Intel SGX extensions, TCB signing cert, CRLs) and a quoting-enclave attestation key, and produces byte-exact
// TDX v4 / SGX v3 quotes plus matching collateral JSON (same shape as testdata/dcap/*_collateral.json).
// These quotes verify ONLY against the simulated root CA; a verifier must opt in to trusting it explicitly.
//
// Directory layout written by create() (keys 0600, atomic writes):
//   root-ca.pem root-ca.der root-ca.key  pck-ca.pem pck-ca.key  pck.pem pck.key  tcb-signing.pem tcb-signing.key
//   qe-attestation.key  platform.json (PPID, FMSPC, CPUSVN, PCESVN, QE identity values, CRL serials...)
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "base/bytes.h"
#include "base/result.h"

namespace dstack::attest::sim {

// Fields of the TD report body (TD 1.0). Empty Bytes = default value (zeros unless noted). Sizes are checked.
struct TdQuoteInput {
  Bytes report_data;       // <= 64, right-padded with zeros
  Bytes mr_td;             // 48
  Bytes mr_config_id;      // 48
  Bytes mr_owner;          // 48
  Bytes mr_owner_config;   // 48
  Bytes rtmr0, rtmr1, rtmr2, rtmr3;  // 48 each
  Bytes td_attributes;     // 8  (default 0: not debug)
  Bytes xfam;              // 8  (default e7 1a 06 00 00 00 00 00 = 0x61ae7)
  Bytes tee_tcb_svn;       // 16 (default: the platform's UpToDate TDX TCB, see SimPlatform::tee_tcb_svn())
  Bytes mr_seam;           // 48 (default: fixed simulated value)
  Bytes mr_signer_seam;    // 48 (default zeros; non-zero is rejected by dstack policy)
  Bytes seam_attributes;   // 8
};

struct SgxQuoteInput {
  Bytes report_data;       // <= 64, right-padded
  Bytes mr_enclave;        // 32
  Bytes mr_signer;         // 32
  uint16_t isv_prod_id = 0;
  uint16_t isv_svn = 0;
  Bytes attributes;        // 16 (default 07 00.. | 0x..: init, mode64bit, not debug; xfrm 0x03)
  Bytes cpu_svn;           // 16 (default: the platform's CPUSVN)
  uint32_t misc_select = 0;
};

class SimPlatform {
 public:
  // Generates a fresh platform into `dir` (created if missing). Fails if a platform already exists there.
  static Result<SimPlatform> create(const std::string& dir);
  static Result<SimPlatform> load(const std::string& dir);
  static Result<SimPlatform> load_or_create(const std::string& dir);

  // TDX quote v4 (TD10 body), signed by the simulated QE attestation key.
  Result<Bytes> quote_tdx(const TdQuoteInput& in) const;
  // SGX quote v3 of an enclave on the same simulated platform (same QE ID).
  Result<Bytes> quote_sgx(const SgxQuoteInput& in) const;

  // Collateral JSON (keys as in testdata/dcap/tdx_quote_collateral.json): TCB info (TDX, v3), QE identity
  // (TD_QE v2), signatures, issuer chains, CRLs; issueDate = now - 1 day, nextUpdate = now + 30 days.
  Result<std::string> tdx_collateral_json(int64_t now) const;
  // Same for SGX quotes (TCB info "SGX" v3, QE identity "QE" v2).
  Result<std::string> sgx_collateral_json(int64_t now) const;

  std::string root_ca_pem() const;
  Bytes root_ca_der() const;
  Bytes ppid() const;          // 16 B
  Bytes fmspc() const;         // 6 B
  Bytes qe_id() const;         // 16 B (QE auth data / user_data)
  Bytes tee_tcb_svn() const;   // 16 B default for TDX quotes
  const std::string& dir() const;

  struct Impl;
  explicit SimPlatform(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}

 private:
  std::shared_ptr<const Impl> impl_;
};

}  // namespace dstack::attest::sim
