// Internal helpers for DCAP verification (OpenSSL 3): certificate chains with CRLs at a given time,
// validity windows for caching, ECDSA P-256 raw-signature checks, and the Intel PCK certificate SGX extension.
// Not a public API: use attest/verify.h.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "base/bytes.h"
#include "base/result.h"

typedef struct x509_st X509;
typedef struct X509_crl_st X509_CRL;
typedef struct evp_pkey_st EVP_PKEY;

namespace dstack::attest::pki {

using X509Ptr = std::shared_ptr<X509>;
using CrlPtr = std::shared_ptr<X509_CRL>;
using PkeyPtr = std::shared_ptr<EVP_PKEY>;

// Time interval [lo, hi] (unix seconds) during which a verification result stays valid.
struct Window {
  int64_t lo = INT64_MIN;
  int64_t hi = INT64_MAX;
  void narrow(int64_t l, int64_t h) {
    if (l > lo) lo = l;
    if (h < hi) hi = h;
  }
  bool contains(int64_t t) const { return t >= lo && t <= hi; }
};

Result<std::vector<X509Ptr>> certs_from_pem(std::string_view pem, const std::string& what);
Result<X509Ptr> cert_from_der(ByteView der, const std::string& what);
Result<CrlPtr> crl_from_der(ByteView der, const std::string& what);
std::string cert_cn(X509* cert);

// Verifies chain[0] (leaf) through chain[1..] to one of `roots` at `now`, checking every certificate
// against `crls` (each must be signed by its issuer). Narrows `window` to the certificates' and CRLs'
// validity periods. Errors say which certificate failed and why ("certificate has expired", "certificate
// revoked", ...), prefixed with `what`.
Status verify_chain(const std::vector<X509Ptr>& chain, const std::vector<X509Ptr>& roots,
                    const std::vector<CrlPtr>& crls, int64_t now, const std::string& what, Window& window);

// ECDSA-P256-SHA256 with a raw 64-byte r||s signature.
bool verify_raw_sig(EVP_PKEY* key, ByteView msg, ByteView sig64);
// EVP_PKEY from a raw 64-byte X||Y P-256 point.
Result<PkeyPtr> pkey_from_xy(ByteView xy64);
PkeyPtr cert_pubkey(const X509Ptr& cert);

// Fields of the Intel SGX extension (OID 1.2.840.113741.1.13.1) of a PCK certificate.
struct PckExtension {
  Bytes ppid;            // 16
  Bytes cpu_svn;         // 16 (TCB comp 1..16 as in the cert's CPUSVN octet string)
  std::vector<uint8_t> sgx_tcb_components;  // 16 component SVNs (OIDs .2.1..2.16)
  uint16_t pce_svn = 0;  // .2.17
  Bytes pce_id;          // 2
  Bytes fmspc;           // 6
};
Result<PckExtension> parse_pck_extension(X509* cert);

// ASN1 time -> unix seconds.
int64_t asn1_time_to_unix(const void* asn1_time);

}  // namespace dstack::attest::pki
