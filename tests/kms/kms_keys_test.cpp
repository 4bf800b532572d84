#include <gtest/gtest.h>

#include "crypto/ecdh.h"
#include "crypto/hash.h"
#include "kms/keys.h"

using namespace dstack;
using namespace dstack::kms;

static Bytes H(const char* s) { return from_hex(s).value(); }

// spec §5.1 test vector (upstream ra-tls kdf test).
TEST(KmsKeys, DeriveDhSecretVector) {
  auto root = crypto::P256Key::from_pkcs8_der(H(
      "308187020100301306072a8648ce3d020106082a8648ce3d030107046d306b0201010420f57527cea4ab7ffb49af99b158cdc0e3ec06398f"
      "528349ea236b7d2afe19cec1a1440342000491f50522407ce29dce3ed7d31a15d80c1c42f13a23552d2b33a0ce09ee11e47bce95936f3e7f"
      "80d195f879e28e1b144ef37ac9ab8e36a690cbf930b775897b27"));
  ASSERT_TRUE(root.ok()) << root.error().message;
  auto s = derive_dh_secret(*root, {as_view("context one"), as_view("context two")});
  ASSERT_TRUE(s.ok()) << s.error().message;
  EXPECT_EQ(to_hex(*s), "663afd58820be8ad645f9c035e93199d114ab16f738db62393bc1d7d623e8813");
}

TEST(KmsKeys, AppKeysFollowSpec) {
  auto root = crypto::P256Key::from_scalar(H("f57527cea4ab7ffb49af99b158cdc0e3ec06398f528349ea236b7d2afe19cec1")).value();
  auto k256 = crypto::K256Key::from_secret(Bytes(32, 0x11)).value();
  Bytes app_id(20, 0xab), inst(20, 0xcd);
  auto k = derive_app_keys(root, k256, app_id, inst);
  ASSERT_TRUE(k.ok()) << k.error().message;
  EXPECT_EQ(k->disk_crypt_key, derive_dh_secret(root, {app_id, inst, as_view("app-disk-crypt-key")}).value());
  EXPECT_EQ(k->env_crypt_key, derive_dh_secret(root, {app_id, as_view("env-encrypt-key")}).value());
  EXPECT_EQ(k->k256_key, crypto::hkdf_sha256(Bytes(32, 0x11), as_view("RATLS"),
                                             concat({app_id, as_view("app-key")}), 32).value());
  // k256_signature: recoverable sig of keccak("dstack-kms-issued:" || app_id || app_pub33) by the root k256.
  auto app_pub = crypto::K256Key::from_secret(k->k256_key).value().public_compressed();
  Bytes digest = crypto::keccak256(concat({as_view("dstack-kms-issued:"), app_id, app_pub}));
  ASSERT_EQ(k->k256_signature.size(), 65u);
  EXPECT_LE(k->k256_signature[64], 1);
  EXPECT_EQ(crypto::k256_recover(digest, k->k256_signature).value(), k256.public_compressed());
  // instance id changes the disk key only
  auto k2 = derive_app_keys(root, k256, app_id, {}).value();
  EXPECT_NE(k2.disk_crypt_key, k->disk_crypt_key);
  EXPECT_EQ(k2.env_crypt_key, k->env_crypt_key);
  EXPECT_FALSE(derive_app_keys(root, k256, Bytes(19, 1), {}).ok());
  EXPECT_FALSE(derive_app_keys(root, k256, app_id, Bytes(5, 1)).ok());
}

TEST(KmsKeys, EnvPubKeySignatures) {
  auto root = crypto::P256Key::generate().value();
  auto k256 = crypto::K256Key::generate();
  Bytes app_id(20, 0x42);
  auto e = app_env_pubkey(root, k256, app_id, 1700000000).value();
  auto keys = derive_app_keys(root, k256, app_id, {}).value();
  EXPECT_EQ(e.public_key, crypto::x25519_public(keys.env_crypt_key).value());
  Bytes d0 = crypto::keccak256(concat({as_view("dstack-env-encrypt-pubkey:"), app_id, e.public_key}));
  EXPECT_EQ(crypto::k256_recover(d0, e.signature).value(), k256.public_compressed());
  Bytes ts = {0, 0, 0, 0, 0x65, 0x53, 0xf1, 0x00};  // 1700000000 big-endian
  Bytes d1 = crypto::keccak256(concat({as_view("dstack-env-encrypt-pubkey:"), app_id, ts, e.public_key}));
  EXPECT_EQ(crypto::k256_recover(d1, e.signature_v1).value(), k256.public_compressed());
}

TEST(KmsKeys, BootstrapBindingUsesTypoAndKeccak) {
  Bytes spki = {0x30, 0x59, 0x01}, k = {0x02, 0xaa};
  Bytes rd = bootstrap_report_data(spki, k);
  ASSERT_EQ(rd.size(), 64u);
  EXPECT_EQ(Bytes(rd.begin(), rd.begin() + 32),
            crypto::keccak256(as_view("dstack-kms-genereted-keys-v1:305901;02aa;")));
  EXPECT_EQ(Bytes(rd.begin() + 32, rd.end()), Bytes(32, 0));
  Bytes r2 = ratls_report_data(spki);
  EXPECT_EQ(r2, crypto::sha512(concat({as_view("ratls-cert:"), spki})));
}

TEST(KmsKeys, CertificateProfiles) {
  auto ca = crypto::P256Key::generate().value();
  auto root = make_root_ca_cert(ca).value();
  EXPECT_EQ(root.subject_cn(), "Dstack KMS CA");
  EXPECT_EQ(root.subject_org(), "Dstack");
  EXPECT_TRUE(root.is_ca());
  EXPECT_EQ(root.path_len(), 1);
  EXPECT_EQ(root.not_before(), 157766400);
  auto tk = crypto::P256Key::generate().value();
  auto tmp = make_tmp_ca_cert(tk).value();
  EXPECT_EQ(tmp.subject_cn(), "Dstack Client Temp CA");
  EXPECT_EQ(tmp.path_len(), 0);
  auto rk = crypto::P256Key::generate().value();
  auto rpc = make_rpc_cert(rk, "kms.example.com", ca, root, std::nullopt).value();
  EXPECT_EQ(rpc.subject_cn(), "kms.example.com");
  EXPECT_EQ(rpc.dns_names(), std::vector<std::string>{"kms.example.com"});
  EXPECT_FALSE(rpc.is_ca());
  EXPECT_TRUE(rpc.signed_by(root));
  EXPECT_EQ(rpc.extension(kOidSpecialUsage).value(), to_bytes("kms:rpc"));
}
