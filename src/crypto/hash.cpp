#include "crypto/hash.h"

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/params.h>
#include <openssl/rand.h>

#include <cryptopp/keccak.h>
#include <cryptopp/sha3.h>

#include <cstdlib>
#include <memory>

namespace dstack::crypto {
namespace {

Bytes evp_digest(const char* name, ByteView data) {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_MD* md = EVP_MD_fetch(nullptr, name, nullptr);
  if (md == nullptr || EVP_Digest(data.data(), data.size(), out, &len, md, nullptr) != 1) {
    EVP_MD_free(md);
    std::abort();  // A built-in digest being unavailable means OpenSSL is broken.
  }
  EVP_MD_free(md);
  return Bytes(out, out + len);
}

template <typename H>
Bytes cryptopp_digest(ByteView data) {
  H h;
  h.Update(data.data(), data.size());
  Bytes out(H::DIGESTSIZE);
  h.Final(out.data());
  return out;
}

}  // namespace

Bytes sha256(ByteView data) { return evp_digest("SHA256", data); }
Bytes sha384(ByteView data) { return evp_digest("SHA384", data); }
Bytes sha512(ByteView data) { return evp_digest("SHA512", data); }
Bytes sha3_256(ByteView data) { return evp_digest("SHA3-256", data); }
Bytes sha3_384(ByteView data) { return evp_digest("SHA3-384", data); }
Bytes sha3_512(ByteView data) { return evp_digest("SHA3-512", data); }
Bytes keccak256(ByteView data) { return cryptopp_digest<CryptoPP::Keccak_256>(data); }
Bytes keccak384(ByteView data) { return cryptopp_digest<CryptoPP::Keccak_384>(data); }
Bytes keccak512(ByteView data) { return cryptopp_digest<CryptoPP::Keccak_512>(data); }

Result<Bytes> hkdf_sha256(ByteView ikm, ByteView salt, ByteView info, size_t length) {
  if (length == 0 || length > 255 * 32) {
    return make_error("HKDF-SHA256: invalid output length " + std::to_string(length) + " (must be 1..8160)");
  }
  EVP_KDF* kdf = EVP_KDF_fetch(nullptr, "HKDF", nullptr);
  if (kdf == nullptr) return make_error("HKDF-SHA256: OpenSSL HKDF implementation unavailable");
  EVP_KDF_CTX* ctx = EVP_KDF_CTX_new(kdf);
  EVP_KDF_free(kdf);
  if (ctx == nullptr) return make_error("HKDF-SHA256: cannot allocate KDF context");
  char digest[] = "SHA256";
  // OpenSSL's param API takes non-const pointers but does not modify the buffers.
  static const unsigned char kEmpty[1] = {0};
  auto ptr = [](ByteView v) {
    return const_cast<unsigned char*>(v.empty() ? kEmpty : v.data());
  };
  OSSL_PARAM params[5];
  size_t n = 0;
  params[n++] = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, digest, 0);
  params[n++] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, ptr(ikm), ikm.size());
  params[n++] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, ptr(salt), salt.size());
  params[n++] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, ptr(info), info.size());
  params[n++] = OSSL_PARAM_construct_end();
  Bytes out(length);
  int rc = EVP_KDF_derive(ctx, out.data(), out.size(), params);
  EVP_KDF_CTX_free(ctx);
  if (rc != 1) return make_error("HKDF-SHA256: derivation failed");
  return out;
}

Result<Bytes> derive_key(ByteView ikm, std::initializer_list<ByteView> ctx, size_t length) {
  Bytes info = concat(ctx);
  return hkdf_sha256(ikm, as_view("RATLS"), info, length);
}

Bytes random_bytes(size_t n) {
  Bytes out(n);
  if (n > 0 && RAND_bytes(out.data(), static_cast<int>(n)) != 1) {
    std::abort();  // No entropy: continuing would produce predictable keys.
  }
  return out;
}

}  // namespace dstack::crypto
