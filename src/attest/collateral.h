// DCAP quote collateral (PCCS "v3"/v4 API data), in the JSON shape used by dcap-qvl and by our test data
// (../shared/testdata/dcap/*_collateral.json):
//   { "pck_crl_issuer_chain": PEM, "root_ca_crl": hex DER, "pck_crl": hex DER,
//     "tcb_info_issuer_chain": PEM, "tcb_info": JSON text of the tcbInfo object, "tcb_info_signature": hex r||s,
//     "qe_identity_issuer_chain": PEM, "qe_identity": JSON text of the enclaveIdentity object,
//     "qe_identity_signature": hex r||s }
// tcb_info / qe_identity are kept as the exact text that was signed.
#pragma once

#include <string>
#include <string_view>

#include "base/bytes.h"
#include "base/result.h"

namespace dstack::attest {

struct Collateral {
  std::string pck_crl_issuer_chain;  // PEM
  Bytes root_ca_crl;                 // DER
  Bytes pck_crl;                     // DER
  std::string tcb_info_issuer_chain; // PEM
  std::string tcb_info;              // exact signed JSON text
  Bytes tcb_info_signature;          // 64 bytes r||s
  std::string qe_identity_issuer_chain;
  std::string qe_identity;
  Bytes qe_identity_signature;
};

// Parses the JSON document. Every field is required; hex fields must decode. Errors name the field.
Result<Collateral> parse_collateral_json(std::string_view json);
// Serialises in the same shape (hex lowercase). parse_collateral_json(collateral_to_json(c)) == c.
std::string collateral_to_json(const Collateral& c);

// SHA-256 over all fields (length-prefixed), used as a cache key.
Bytes collateral_digest(const Collateral& c);

}  // namespace dstack::attest
