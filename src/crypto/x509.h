// X.509 certificates (OpenSSL 3): issue without CSR, parse, custom extensions, chain checks.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "base/bytes.h"
#include "crypto/p256.h"

typedef struct x509_st X509;

namespace dstack::crypto {

class Certificate {
 public:
  static Result<Certificate> from_pem(std::string_view pem);
  static Result<Certificate> from_der(ByteView der);
  // Every certificate in a PEM bundle, in order.
  static Result<std::vector<Certificate>> chain_from_pem(std::string_view pem);

  std::string to_pem() const;
  Bytes to_der() const;
  Bytes spki_der() const;
  std::string subject_cn() const;
  std::string subject_org() const;
  std::string issuer_cn() const;
  std::vector<std::string> dns_names() const;
  int64_t not_before() const;  // unix seconds
  int64_t not_after() const;
  bool is_ca() const;
  std::optional<int> path_len() const;

  // Custom extension by dotted OID. Returns the payload, unwrapping the extra OCTET STRING that dstack
  // puts inside extnValue (spec §3.2): i.e. the bytes given to CertSpec::extensions.
  std::optional<Bytes> extension(const std::string& oid) const;
  // Raw extnValue contents (DER inside the extension's OCTET STRING), for standard extensions.
  std::optional<Bytes> extension_raw(const std::string& oid) const;

  // Signature on this certificate verifies with `issuer`'s public key.
  bool signed_by(const Certificate& issuer) const;
  bool signed_by_key(const P256Key& issuer_key) const;

  X509* get() const { return x509_.get(); }
  Certificate(X509* x);  // takes ownership

 private:
  struct Free { void operator()(X509* p) const; };
  std::shared_ptr<X509> x509_;
};

struct CertSpec {
  std::optional<std::string> org_name;      // O=
  std::string common_name;                  // CN=
  std::vector<std::string> alt_names;       // IP literal => iPAddress SAN, else dNSName
  bool is_ca = false;
  int ca_path_len = -1;                     // -1 => no pathLen constraint
  bool usage_server_auth = false;           // EKU only if any usage set
  bool usage_client_auth = false;
  int64_t not_before = 157766400;           // 1975-01-01T00:00:00Z (rcgen default)
  std::optional<int64_t> not_after;         // default now + 3650 days
  // Custom non-critical extensions: OID -> payload (wrapped in an OCTET STRING inside extnValue).
  std::map<std::string, Bytes> extensions;
};

// Signs a certificate for `subject_public` (any EVP key; here P-256). issuer == nullptr => self-signed
// (then issuer_key must be the subject's own key).
Result<Certificate> issue_certificate(const CertSpec& spec, const P256Key& subject_key_public,
                                      const P256Key& issuer_key, const Certificate* issuer);

// Verifies leaf -> intermediates -> trusted root at `at_time` (unix s; 0 = now). Returns error text naming
// the failing certificate. CRLs (PEM or DER) are checked when given.
Status verify_chain(const Certificate& leaf, const std::vector<Certificate>& intermediates,
                    const Certificate& trusted_root, int64_t at_time = 0);

}  // namespace dstack::crypto
