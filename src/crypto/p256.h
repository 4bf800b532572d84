// NIST P-256 keys (OpenSSL 3 EVP_PKEY), ECDSA-SHA256 signing and verification.
#pragma once

#include <memory>
#include <string>

#include "base/bytes.h"

typedef struct evp_pkey_st EVP_PKEY;

namespace dstack::crypto {

class P256Key {
 public:
  static Result<P256Key> generate();
  // From a 32-byte big-endian secret scalar (fails if 0 or >= n).
  static Result<P256Key> from_scalar(ByteView scalar);
  // PKCS#8 PEM ("BEGIN PRIVATE KEY") or SEC1 ("BEGIN EC PRIVATE KEY").
  static Result<P256Key> from_pem(std::string_view pem);
  static Result<P256Key> from_pkcs8_der(ByteView der);

  // dstack KDF (spec §5.1 derive_p256_key_pair[_from_bytes]): scalar = HKDF(ikm, ctx).
  static Result<P256Key> derive(ByteView ikm, std::initializer_list<ByteView> ctx);

  std::string to_pkcs8_pem() const;
  // The 138-byte PKCS#8 DER form of spec §5.1 (ECPrivateKey v1 with public key, no inner params).
  Bytes to_dstack_pkcs8_der() const;
  Bytes scalar() const;              // 32 bytes big-endian
  Bytes spki_der() const;            // DER SubjectPublicKeyInfo (91 bytes)
  Bytes public_uncompressed() const; // 65 bytes 0x04||X||Y

  // ECDSA-SHA256 over msg; DER-encoded signature / raw r||s (64 bytes).
  Result<Bytes> sign_der(ByteView msg) const;
  Result<Bytes> sign_raw(ByteView msg) const;

  EVP_PKEY* get() const { return pkey_.get(); }
  P256Key(EVP_PKEY* pkey);  // takes ownership

 private:
  struct Free { void operator()(EVP_PKEY* p) const; };
  std::shared_ptr<EVP_PKEY> pkey_;
};

// Public-key-only verification. `pubkey` is DER SPKI or a 65-byte uncompressed point (or 64-byte X||Y).
bool ecdsa_p256_verify_der(ByteView pubkey, ByteView msg, ByteView der_signature);
bool ecdsa_p256_verify_raw(ByteView pubkey, ByteView msg, ByteView raw_rs64);

// DER SPKI from a 64/65-byte P-256 point.
Result<Bytes> p256_spki_from_point(ByteView point);

// ECDSA signature format conversion.
Result<Bytes> ecdsa_raw_to_der(ByteView raw_rs64);
Result<Bytes> ecdsa_der_to_raw(ByteView der);

}  // namespace dstack::crypto
