#include "crypto/p256.h"

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/obj_mac.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "crypto/hash.h"
#include "crypto/ossl.h"

namespace dstack::crypto {
namespace {

using namespace detail;


constexpr const char* kGroup = "prime256v1";

bool is_p256(EVP_PKEY* pkey) {
  if (pkey == nullptr || !EVP_PKEY_is_a(pkey, "EC")) return false;
  char name[64] = {0};
  size_t len = 0;
  if (EVP_PKEY_get_utf8_string_param(pkey, OSSL_PKEY_PARAM_GROUP_NAME, name, sizeof name, &len) != 1) return false;
  return std::string_view(name, len) == kGroup;
}

// Uncompressed public point for scalar d.
Result<Bytes> point_from_scalar(const BIGNUM* d) {
  EC_GROUP* group = EC_GROUP_new_by_curve_name(NID_X9_62_prime256v1);
  EC_POINT* pt = group ? EC_POINT_new(group) : nullptr;
  Bytes out(65);
  bool ok = pt != nullptr && EC_POINT_mul(group, pt, d, nullptr, nullptr, nullptr) == 1 &&
            EC_POINT_point2oct(group, pt, POINT_CONVERSION_UNCOMPRESSED, out.data(), out.size(), nullptr) == 65;
  EC_POINT_free(pt);
  EC_GROUP_free(group);
  if (!ok) return make_error("P-256: computing public key failed: " + ossl_error());
  return out;
}

Result<PkeyPtr> pkey_from_params(const BIGNUM* priv, ByteView pub) {
  OSSL_PARAM_BLD* bld = OSSL_PARAM_BLD_new();
  if (bld == nullptr) return make_error("P-256: out of memory");
  OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, kGroup, 0);
  OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, pub.data(), pub.size());
  if (priv != nullptr) OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_PRIV_KEY, priv);
  OSSL_PARAM* params = OSSL_PARAM_BLD_to_param(bld);
  OSSL_PARAM_BLD_free(bld);
  EVP_PKEY_CTX* ctx = EVP_PKEY_CTX_new_from_name(nullptr, "EC", nullptr);
  EVP_PKEY* pkey = nullptr;
  bool ok = params != nullptr && ctx != nullptr && EVP_PKEY_fromdata_init(ctx) == 1 &&
            EVP_PKEY_fromdata(ctx, &pkey, priv ? EVP_PKEY_KEYPAIR : EVP_PKEY_PUBLIC_KEY, params) == 1;
  EVP_PKEY_CTX_free(ctx);
  OSSL_PARAM_free(params);
  if (!ok) {
    EVP_PKEY_free(pkey);
    return make_error("P-256: building key failed (invalid point?): " + ossl_error());
  }
  return PkeyPtr(pkey);
}

Result<PkeyPtr> public_pkey(ByteView pubkey) {
  if (pubkey.size() == 64 || pubkey.size() == 65) {
    TRY_ASSIGN(Bytes spki, p256_spki_from_point(pubkey));
    return public_pkey(spki);
  }
  const unsigned char* p = pubkey.data();
  EVP_PKEY* pkey = d2i_PUBKEY(nullptr, &p, static_cast<long>(pubkey.size()));
  if (pkey == nullptr || p != pubkey.data() + pubkey.size()) {
    EVP_PKEY_free(pkey);
    ERR_clear_error();
    return make_error("P-256: public key is neither DER SubjectPublicKeyInfo nor a 64/65-byte point");
  }
  PkeyPtr owned(pkey);
  if (!is_p256(pkey)) return make_error("P-256: public key is not on curve P-256");
  return owned;
}

bool verify_der_with(EVP_PKEY* pkey, ByteView msg, ByteView sig) {
  EVP_MD_CTX* md = EVP_MD_CTX_new();
  bool ok = md != nullptr && EVP_DigestVerifyInit(md, nullptr, EVP_sha256(), nullptr, pkey) == 1 &&
            EVP_DigestVerify(md, sig.data(), sig.size(), msg.data(), msg.size()) == 1;
  EVP_MD_CTX_free(md);
  ERR_clear_error();
  return ok;
}

}  // namespace

void P256Key::Free::operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }

P256Key::P256Key(EVP_PKEY* pkey) : pkey_(pkey, Free{}) {}

Result<P256Key> P256Key::generate() {
  EVP_PKEY* pkey = EVP_EC_gen(kGroup);
  if (pkey == nullptr) return make_error("P-256: key generation failed: " + ossl_error());
  return P256Key(pkey);
}

Result<P256Key> P256Key::from_scalar(ByteView scalar) {
  if (scalar.size() != 32) {
    return make_error("P-256: secret scalar must be 32 bytes, got " + std::to_string(scalar.size()));
  }
  BnPtr d(BN_bin2bn(scalar.data(), 32, nullptr));
  EC_GROUP* group = EC_GROUP_new_by_curve_name(NID_X9_62_prime256v1);
  if (!d || group == nullptr) {
    EC_GROUP_free(group);
    return make_error("P-256: out of memory");
  }
  bool in_range = !BN_is_zero(d.get()) && BN_cmp(d.get(), EC_GROUP_get0_order(group)) < 0;
  EC_GROUP_free(group);
  if (!in_range) return make_error("P-256: secret scalar is zero or not below the group order n");
  TRY_ASSIGN(Bytes pub, point_from_scalar(d.get()));
  TRY_ASSIGN(PkeyPtr pkey, pkey_from_params(d.get(), pub));
  return P256Key(pkey.release());
}

Result<P256Key> P256Key::from_pem(std::string_view pem) {
  BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  if (bio == nullptr) return make_error("P-256: out of memory");
  EVP_PKEY* pkey = PEM_read_bio_PrivateKey(bio, nullptr, nullptr, nullptr);
  BIO_free(bio);
  if (pkey == nullptr) {
    return make_error("P-256: cannot parse private key PEM (expected BEGIN PRIVATE KEY or BEGIN EC PRIVATE KEY): " +
                      ossl_error());
  }
  if (!is_p256(pkey)) {
    EVP_PKEY_free(pkey);
    return make_error("P-256: PEM private key is not an EC P-256 key");
  }
  return P256Key(pkey);
}

Result<P256Key> P256Key::from_pkcs8_der(ByteView der) {
  const unsigned char* p = der.data();
  EVP_PKEY* pkey = d2i_AutoPrivateKey(nullptr, &p, static_cast<long>(der.size()));
  if (pkey == nullptr) return make_error("P-256: cannot parse PKCS#8 DER private key: " + ossl_error());
  if (!is_p256(pkey)) {
    EVP_PKEY_free(pkey);
    return make_error("P-256: DER private key is not an EC P-256 key");
  }
  return P256Key(pkey);
}

Result<P256Key> P256Key::derive(ByteView ikm, std::initializer_list<ByteView> ctx) {
  TRY_ASSIGN(Bytes d, derive_key(ikm, ctx, 32));
  auto key = from_scalar(d);
  secure_wipe(d);
  if (!key.ok()) return key.error().wrap("deriving P-256 key");
  return key;
}

std::string P256Key::to_pkcs8_pem() const {
  BIO* bio = BIO_new(BIO_s_mem());
  std::string out;
  if (bio != nullptr && PEM_write_bio_PrivateKey(bio, pkey_.get(), nullptr, nullptr, 0, nullptr, nullptr) == 1) {
    char* data = nullptr;
    long n = BIO_get_mem_data(bio, &data);
    out.assign(data, static_cast<size_t>(n));
    OPENSSL_cleanse(data, static_cast<size_t>(n));
  }
  BIO_free(bio);
  return out;
}

Bytes P256Key::to_dstack_pkcs8_der() const {
  // PrivateKeyInfo { version 0, AlgorithmIdentifier { id-ecPublicKey, prime256v1 },
  //   OCTET STRING { ECPrivateKey { version 1, privateKey OCTET STRING(32), [1] publicKey BIT STRING } } }
  static const uint8_t kPrefix[] = {0x30, 0x81, 0x87, 0x02, 0x01, 0x00, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86,
                                    0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d,
                                    0x03, 0x01, 0x07, 0x04, 0x6d, 0x30, 0x6b, 0x02, 0x01, 0x01, 0x04, 0x20};
  static const uint8_t kMid[] = {0xa1, 0x44, 0x03, 0x42, 0x00};
  Bytes d = scalar();
  Bytes pub = public_uncompressed();
  if (d.size() != 32 || pub.size() != 65) return {};  // public-only key: no private encoding
  Bytes out = concat({ByteView(kPrefix), d, ByteView(kMid), pub});
  secure_wipe(d);
  return out;  // 36 + 32 + 5 + 65 = 138 bytes
}

Bytes P256Key::scalar() const {
  BIGNUM* d = nullptr;
  Bytes out(32);
  if (EVP_PKEY_get_bn_param(pkey_.get(), OSSL_PKEY_PARAM_PRIV_KEY, &d) != 1 || BN_bn2binpad(d, out.data(), 32) != 32) {
    out.clear();
  }
  BN_clear_free(d);
  return out;
}

Bytes P256Key::spki_der() const {
  unsigned char* buf = nullptr;
  int n = i2d_PUBKEY(pkey_.get(), &buf);
  if (n <= 0) return {};
  Bytes out(buf, buf + n);
  OPENSSL_free(buf);
  return out;
}

Bytes P256Key::public_uncompressed() const {
  BIGNUM* x = nullptr;
  BIGNUM* y = nullptr;
  Bytes out(65);
  out[0] = 0x04;
  if (EVP_PKEY_get_bn_param(pkey_.get(), OSSL_PKEY_PARAM_EC_PUB_X, &x) != 1 ||
      EVP_PKEY_get_bn_param(pkey_.get(), OSSL_PKEY_PARAM_EC_PUB_Y, &y) != 1 ||
      BN_bn2binpad(x, out.data() + 1, 32) != 32 || BN_bn2binpad(y, out.data() + 33, 32) != 32) {
    out.clear();
  }
  BN_free(x);
  BN_free(y);
  return out;
}

Result<Bytes> P256Key::sign_der(ByteView msg) const {
  EVP_MD_CTX* md = EVP_MD_CTX_new();
  size_t len = 0;
  Bytes sig;
  bool ok = md != nullptr && EVP_DigestSignInit(md, nullptr, EVP_sha256(), nullptr, pkey_.get()) == 1 &&
            EVP_DigestSign(md, nullptr, &len, msg.data(), msg.size()) == 1;
  if (ok) {
    sig.resize(len);
    ok = EVP_DigestSign(md, sig.data(), &len, msg.data(), msg.size()) == 1;
    sig.resize(len);
  }
  EVP_MD_CTX_free(md);
  if (!ok) return make_error("P-256: ECDSA signing failed: " + ossl_error());
  return sig;
}

Result<Bytes> P256Key::sign_raw(ByteView msg) const {
  TRY_ASSIGN(Bytes der, sign_der(msg));
  return ecdsa_der_to_raw(der);
}

bool ecdsa_p256_verify_der(ByteView pubkey, ByteView msg, ByteView der_signature) {
  auto pk = public_pkey(pubkey);
  if (!pk.ok()) return false;
  return verify_der_with(pk->get(), msg, der_signature);
}

bool ecdsa_p256_verify_raw(ByteView pubkey, ByteView msg, ByteView raw_rs64) {
  auto der = ecdsa_raw_to_der(raw_rs64);
  if (!der.ok()) return false;
  return ecdsa_p256_verify_der(pubkey, msg, *der);
}

Result<Bytes> p256_spki_from_point(ByteView point) {
  Bytes pt;
  if (point.size() == 64) {
    pt.push_back(0x04);
    pt.insert(pt.end(), point.begin(), point.end());
  } else if (point.size() == 65 && point[0] == 0x04) {
    pt.assign(point.begin(), point.end());
  } else {
    return make_error("P-256: public point must be 64 bytes X||Y or 65 bytes 04||X||Y, got " +
                      std::to_string(point.size()) + " bytes");
  }
  TRY_ASSIGN(PkeyPtr pkey, pkey_from_params(nullptr, pt));
  unsigned char* buf = nullptr;
  int n = i2d_PUBKEY(pkey.get(), &buf);
  if (n <= 0) return make_error("P-256: encoding SubjectPublicKeyInfo failed: " + ossl_error());
  Bytes out(buf, buf + n);
  OPENSSL_free(buf);
  return out;
}

Result<Bytes> ecdsa_raw_to_der(ByteView raw_rs64) {
  if (raw_rs64.size() != 64) {
    return make_error("ECDSA: raw signature must be 64 bytes r||s, got " + std::to_string(raw_rs64.size()));
  }
  ECDSA_SIG* sig = ECDSA_SIG_new();
  BIGNUM* r = BN_bin2bn(raw_rs64.data(), 32, nullptr);
  BIGNUM* s = BN_bin2bn(raw_rs64.data() + 32, 32, nullptr);
  if (sig == nullptr || r == nullptr || s == nullptr || ECDSA_SIG_set0(sig, r, s) != 1) {
    ECDSA_SIG_free(sig);
    BN_free(r);
    BN_free(s);
    return make_error("ECDSA: out of memory");
  }
  unsigned char* buf = nullptr;
  int n = i2d_ECDSA_SIG(sig, &buf);
  ECDSA_SIG_free(sig);
  if (n <= 0) return make_error("ECDSA: DER encoding failed");
  Bytes out(buf, buf + n);
  OPENSSL_free(buf);
  return out;
}

Result<Bytes> ecdsa_der_to_raw(ByteView der) {
  const unsigned char* p = der.data();
  ECDSA_SIG* sig = d2i_ECDSA_SIG(nullptr, &p, static_cast<long>(der.size()));
  if (sig == nullptr || p != der.data() + der.size()) {
    ECDSA_SIG_free(sig);
    ERR_clear_error();
    return make_error("ECDSA: malformed DER signature");
  }
  const BIGNUM* r = nullptr;
  const BIGNUM* s = nullptr;
  ECDSA_SIG_get0(sig, &r, &s);
  Bytes out(64);
  bool ok = BN_bn2binpad(r, out.data(), 32) == 32 && BN_bn2binpad(s, out.data() + 32, 32) == 32;
  ECDSA_SIG_free(sig);
  if (!ok) return make_error("ECDSA: signature component larger than 32 bytes (not a P-256 signature)");
  return out;
}

}  // namespace dstack::crypto
