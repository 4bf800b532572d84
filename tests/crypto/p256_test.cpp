#include "crypto/p256.h"

#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include "crypto/hash.h"
#include "test_util.h"

namespace dstack::crypto {
namespace {

using testing::hex;

// Spec §5.1 test vector (root PKCS#8 DER).
constexpr const char* kRootDer =
    "308187020100301306072a8648ce3d020106082a8648ce3d030107046d306b0201010420f57527cea4ab7ffb49af99b158cdc0e3ec06398f"
    "528349ea236b7d2afe19cec1a1440342000491f50522407ce29dce3ed7d31a15d80c1c42f13a23552d2b33a0ce09ee11e47bce95936f3e"
    "7f80d195f879e28e1b144ef37ac9ab8e36a690cbf930b775897b27";

constexpr const char* kOrderN = "ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551";

Bytes openssl_pkcs8_der(const P256Key& key) {
  PKCS8_PRIV_KEY_INFO* p8 = EVP_PKEY2PKCS8(key.get());
  unsigned char* buf = nullptr;
  int n = p8 ? i2d_PKCS8_PRIV_KEY_INFO(p8, &buf) : -1;
  PKCS8_PRIV_KEY_INFO_free(p8);
  if (n <= 0) return {};
  Bytes out(buf, buf + n);
  OPENSSL_free(buf);
  return out;
}

TEST(P256, DeriveDhSecretSpecVector) {
  auto root = P256Key::from_pkcs8_der(hex(kRootDer));
  ASSERT_TRUE(root.ok()) << root.error().message;
  EXPECT_EQ(to_hex(root->to_dstack_pkcs8_der()), kRootDer);  // our encoder round-trips the spec's bytes
  auto derived = P256Key::derive(root->scalar(), {as_view("context one"), as_view("context two")});
  ASSERT_TRUE(derived.ok()) << derived.error().message;
  Bytes der = derived->to_dstack_pkcs8_der();
  ASSERT_EQ(der.size(), 138u);
  EXPECT_EQ(to_hex(sha256(der)), "663afd58820be8ad645f9c035e93199d114ab16f738db62393bc1d7d623e8813");
}

TEST(P256, DstackDerMatchesOpenSslPkcs8) {
  for (int i = 0; i < 8; ++i) {
    auto key = P256Key::generate();
    ASSERT_TRUE(key.ok());
    Bytes ours = key->to_dstack_pkcs8_der();
    EXPECT_EQ(ours.size(), 138u);
    EXPECT_EQ(ours, openssl_pkcs8_der(*key));
    auto back = P256Key::from_pkcs8_der(ours);
    ASSERT_TRUE(back.ok());
    EXPECT_EQ(back->scalar(), key->scalar());
  }
}

TEST(P256, ScalarOneGivesGenerator) {
  Bytes one(32, 0);
  one[31] = 1;
  auto key = P256Key::from_scalar(one);
  ASSERT_TRUE(key.ok()) << key.error().message;
  EXPECT_EQ(to_hex(key->public_uncompressed()),
            "04"
            "6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296"
            "4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5");
  EXPECT_EQ(key->scalar(), one);
  EXPECT_EQ(key->spki_der().size(), 91u);
}

TEST(P256, FromScalarRejectsOutOfRange) {
  EXPECT_FALSE(P256Key::from_scalar(Bytes(32, 0)).ok());
  EXPECT_FALSE(P256Key::from_scalar(hex(kOrderN)).ok());
  EXPECT_FALSE(P256Key::from_scalar(Bytes(32, 0xff)).ok());
  EXPECT_FALSE(P256Key::from_scalar(Bytes(31, 1)).ok());
  Bytes n_minus_1 = hex(kOrderN);
  n_minus_1[31] -= 1;
  EXPECT_TRUE(P256Key::from_scalar(n_minus_1).ok());
}

TEST(P256, PemRoundTripAndErrors) {
  auto key = P256Key::generate();
  ASSERT_TRUE(key.ok());
  std::string pem = key->to_pkcs8_pem();
  EXPECT_NE(pem.find("-----BEGIN PRIVATE KEY-----"), std::string::npos);
  auto back = P256Key::from_pem(pem);
  ASSERT_TRUE(back.ok()) << back.error().message;
  EXPECT_EQ(back->scalar(), key->scalar());

  EXPECT_FALSE(P256Key::from_pem("").ok());
  EXPECT_FALSE(P256Key::from_pem("-----BEGIN PRIVATE KEY-----\nnot base64!!\n-----END PRIVATE KEY-----\n").ok());
  auto err = P256Key::from_pem("garbage");
  ASSERT_FALSE(err.ok());
  EXPECT_NE(err.error().message.find("PEM"), std::string::npos);
  EXPECT_FALSE(P256Key::from_pkcs8_der(hex("3003020100")).ok());
  EXPECT_FALSE(P256Key::from_pkcs8_der({}).ok());
}

TEST(P256, Sec1PemAccepted) {
  // SEC1 "EC PRIVATE KEY" form of the spec root key, produced by OpenSSL's traditional encoder.
  auto key = P256Key::from_pkcs8_der(hex(kRootDer));
  ASSERT_TRUE(key.ok());
  unsigned char* buf = nullptr;
  int n = i2d_PrivateKey(key->get(), &buf);  // traditional (SEC1) DER for EC keys
  ASSERT_GT(n, 0);
  std::string b64 = base64_encode(ByteView(buf, static_cast<size_t>(n)));
  OPENSSL_free(buf);
  std::string pem = "-----BEGIN EC PRIVATE KEY-----\n";
  for (size_t i = 0; i < b64.size(); i += 64) pem += b64.substr(i, 64) + "\n";
  pem += "-----END EC PRIVATE KEY-----\n";
  auto back = P256Key::from_pem(pem);
  ASSERT_TRUE(back.ok()) << back.error().message;
  EXPECT_EQ(back->scalar(), key->scalar());
}

TEST(P256, RejectsNonP256Keys) {
  EVP_PKEY* ed = EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519");
  ASSERT_NE(ed, nullptr);
  PKCS8_PRIV_KEY_INFO* p8 = EVP_PKEY2PKCS8(ed);
  unsigned char* buf = nullptr;
  int n = i2d_PKCS8_PRIV_KEY_INFO(p8, &buf);
  ASSERT_GT(n, 0);
  Bytes der(buf, buf + n);
  OPENSSL_free(buf);
  PKCS8_PRIV_KEY_INFO_free(p8);
  EVP_PKEY_free(ed);
  EXPECT_FALSE(P256Key::from_pkcs8_der(der).ok());
}

TEST(P256, SignVerify) {
  auto key = P256Key::generate();
  ASSERT_TRUE(key.ok());
  Bytes msg = to_bytes("hello dstack");
  auto der = key->sign_der(msg);
  auto raw = key->sign_raw(msg);
  ASSERT_TRUE(der.ok() && raw.ok());
  EXPECT_EQ(raw->size(), 64u);
  EXPECT_TRUE(ecdsa_p256_verify_der(key->spki_der(), msg, *der));
  EXPECT_TRUE(ecdsa_p256_verify_der(key->public_uncompressed(), msg, *der));
  EXPECT_TRUE(ecdsa_p256_verify_raw(key->spki_der(), msg, *raw));
  Bytes point = key->public_uncompressed();
  Bytes xy(point.begin() + 1, point.end());
  EXPECT_TRUE(ecdsa_p256_verify_raw(xy, msg, *raw));

  // Conversions agree with each other.
  auto der2raw = ecdsa_der_to_raw(*der);
  ASSERT_TRUE(der2raw.ok());
  auto back = ecdsa_raw_to_der(*der2raw);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(*back, *der);

  Bytes other = to_bytes("hello dstacK");
  EXPECT_FALSE(ecdsa_p256_verify_der(key->spki_der(), other, *der));
  EXPECT_FALSE(ecdsa_p256_verify_raw(key->spki_der(), other, *raw));
  Bytes bad = *raw;
  bad[10] ^= 1;
  EXPECT_FALSE(ecdsa_p256_verify_raw(key->spki_der(), msg, bad));
  auto key2 = P256Key::generate();
  ASSERT_TRUE(key2.ok());
  EXPECT_FALSE(ecdsa_p256_verify_der(key2->spki_der(), msg, *der));
  EXPECT_FALSE(ecdsa_p256_verify_der(Bytes(65, 4), msg, *der));  // not a curve point
  EXPECT_FALSE(ecdsa_p256_verify_der(to_bytes("junk"), msg, *der));
}

TEST(P256, PublicOnlyKeyHasNoPrivateEncoding) {
  auto key = P256Key::generate();
  ASSERT_TRUE(key.ok());
  Bytes spki = key->spki_der();
  const unsigned char* ptr = spki.data();
  P256Key pub(d2i_PUBKEY(nullptr, &ptr, static_cast<long>(spki.size())));
  ASSERT_NE(pub.get(), nullptr);
  EXPECT_TRUE(pub.scalar().empty());
  EXPECT_TRUE(pub.to_dstack_pkcs8_der().empty());
  EXPECT_EQ(pub.public_uncompressed(), key->public_uncompressed());
  EXPECT_FALSE(pub.sign_der(as_view("m")).ok());
}

TEST(P256, SpkiFromPoint) {
  auto key = P256Key::generate();
  ASSERT_TRUE(key.ok());
  auto spki = p256_spki_from_point(key->public_uncompressed());
  ASSERT_TRUE(spki.ok()) << spki.error().message;
  EXPECT_EQ(*spki, key->spki_der());
  Bytes off_curve = key->public_uncompressed();
  off_curve[64] ^= 1;
  EXPECT_FALSE(p256_spki_from_point(off_curve).ok());
  EXPECT_FALSE(p256_spki_from_point(Bytes(33, 2)).ok());
}

TEST(P256, SignatureConversionErrors) {
  EXPECT_FALSE(ecdsa_raw_to_der(Bytes(63, 1)).ok());
  EXPECT_FALSE(ecdsa_der_to_raw(to_bytes("not der")).ok());
  EXPECT_FALSE(ecdsa_der_to_raw({}).ok());
}

}  // namespace
}  // namespace dstack::crypto
