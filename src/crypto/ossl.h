// Internal helpers shared by the crypto implementation files (not part of the public API).
#pragma once

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include <memory>
#include <string>

namespace dstack::crypto::detail {

// Drains OpenSSL's thread-local error queue into a readable string.
inline std::string ossl_error() {
  std::string out;
  unsigned long e;
  while ((e = ERR_get_error()) != 0) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    if (!out.empty()) out += "; ";
    out += buf;
  }
  return out.empty() ? "unknown OpenSSL error" : out;
}

struct BnFree { void operator()(BIGNUM* p) const { BN_clear_free(p); } };
using BnPtr = std::unique_ptr<BIGNUM, BnFree>;
struct PkeyDel { void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); } };
using PkeyPtr = std::unique_ptr<EVP_PKEY, PkeyDel>;
struct X509Del { void operator()(X509* p) const { X509_free(p); } };
using X509Ptr = std::unique_ptr<X509, X509Del>;
struct CipherCtxDel { void operator()(EVP_CIPHER_CTX* p) const { EVP_CIPHER_CTX_free(p); } };
using CipherCtxPtr = std::unique_ptr<EVP_CIPHER_CTX, CipherCtxDel>;

}  // namespace dstack::crypto::detail
