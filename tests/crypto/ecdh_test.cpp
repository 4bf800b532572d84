#include "crypto/ecdh.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "test_util.h"

namespace dstack::crypto {
namespace {

using testing::hex;

TEST(X25519, Rfc7748Vector) {
  Bytes alice = hex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
  Bytes bob = hex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb");
  auto alice_pub = x25519_public(alice);
  auto bob_pub = x25519_public(bob);
  ASSERT_TRUE(alice_pub.ok() && bob_pub.ok());
  EXPECT_EQ(to_hex(*alice_pub), "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a");
  EXPECT_EQ(to_hex(*bob_pub), "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f");
  auto k1 = x25519_shared(alice, *bob_pub);
  auto k2 = x25519_shared(bob, *alice_pub);
  ASSERT_TRUE(k1.ok() && k2.ok());
  EXPECT_EQ(to_hex(*k1), "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742");
  EXPECT_EQ(*k1, *k2);
}

TEST(X25519, RejectsLowOrderPointAndBadSizes) {
  auto kp = x25519_generate();
  EXPECT_EQ(kp.public_key.size(), 32u);
  EXPECT_FALSE(x25519_shared(kp.secret, Bytes(32, 0)).ok());  // all-zero output
  Bytes one(32, 0);
  one[0] = 1;
  EXPECT_FALSE(x25519_shared(kp.secret, one).ok());
  EXPECT_FALSE(x25519_public(Bytes(31, 1)).ok());
  EXPECT_FALSE(x25519_shared(kp.secret, Bytes(33, 9)).ok());
}

TEST(Ed25519, Rfc8032Test1) {
  Bytes seed = hex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60");
  auto pub = ed25519_public(seed);
  ASSERT_TRUE(pub.ok());
  EXPECT_EQ(to_hex(*pub), "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a");
  auto sig = ed25519_sign(seed, {});
  ASSERT_TRUE(sig.ok());
  EXPECT_EQ(to_hex(*sig),
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f"
            "0595bbe24655141438e7a100b");
  EXPECT_TRUE(ed25519_verify(*pub, {}, *sig));
  EXPECT_FALSE(ed25519_verify(*pub, as_view("x"), *sig));
  Bytes bad = *sig;
  bad[0] ^= 1;
  EXPECT_FALSE(ed25519_verify(*pub, {}, bad));
  EXPECT_FALSE(ed25519_verify(*pub, {}, Bytes(63, 0)));
}

TEST(AesGcm, NistTestCases) {
  // McGrew/Viega GCM spec test cases 13 and 14 (AES-256, zero key and IV).
  Bytes key(32, 0);
  Bytes iv(12, 0);
  auto empty = aes256gcm_encrypt(key, iv, {});
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(to_hex(*empty), "530f8afbc74536b9a963b4f1c4cb738b");
  auto block = aes256gcm_encrypt(key, iv, Bytes(16, 0));
  ASSERT_TRUE(block.ok());
  EXPECT_EQ(to_hex(*block), "cea7403d4d606b6e074ec5d3baf39d18d0d1c8a799996bf0265b98b5d48ab919");
  auto pt = aes256gcm_decrypt(key, iv, *block);
  ASSERT_TRUE(pt.ok());
  EXPECT_EQ(*pt, Bytes(16, 0));
  auto pt0 = aes256gcm_decrypt(key, iv, *empty);
  ASSERT_TRUE(pt0.ok());
  EXPECT_TRUE(pt0->empty());
}

TEST(AesGcm, TamperAndAad) {
  Bytes key = hex("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f");
  Bytes iv = hex("cafebabefacedbaddecaf888");
  Bytes msg = to_bytes("attack at dawn");
  auto ct = aes256gcm_encrypt(key, iv, msg, as_view("hdr"));
  ASSERT_TRUE(ct.ok());
  EXPECT_EQ(ct->size(), msg.size() + 16);
  auto ok = aes256gcm_decrypt(key, iv, *ct, as_view("hdr"));
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(*ok, msg);
  EXPECT_FALSE(aes256gcm_decrypt(key, iv, *ct).ok());  // AAD missing
  Bytes bad = *ct;
  bad[0] ^= 1;
  EXPECT_FALSE(aes256gcm_decrypt(key, iv, bad, as_view("hdr")).ok());
  EXPECT_FALSE(aes256gcm_decrypt(key, iv, Bytes(15, 0)).ok());
  EXPECT_FALSE(aes256gcm_encrypt(Bytes(16, 0), iv, msg).ok());
  EXPECT_FALSE(aes256gcm_encrypt(key, Bytes(16, 0), msg).ok());
}

TEST(DstackEnv, SpecDecryptionVector) {
  Bytes secret = hex("7c282bf94b35dc47801dc953bfa0896fc2bd313381d3e8eca4e42f6536d2a96f");
  Bytes blob = hex(
      "0bd18749612f4c8b9dd583c7d6a646b90abd34e3c731a7708d0caf9039095641e1f0948e775f0b7351788db7f246d51806954626dc"
      "ccb6a60d64665ca3715c6bef75616cab476d27bba04080361200d6a58cec");
  auto pt = dstack_decrypt_env(secret, blob);
  ASSERT_TRUE(pt.ok()) << pt.error().message;
  auto json = nlohmann::json::parse(to_string(*pt), nullptr, false);
  ASSERT_FALSE(json.is_discarded()) << to_string(*pt);
  // The upstream vector's plaintext is a bare JSON array of {key,value} (spec §9 step 7).
  ASSERT_TRUE(json.is_array()) << to_string(*pt);
  ASSERT_EQ(json.size(), 1u);
  EXPECT_EQ(json[0]["key"], "");
  EXPECT_EQ(json[0]["value"], "");
  Bytes bad = blob;
  bad.back() ^= 1;
  EXPECT_FALSE(dstack_decrypt_env(secret, bad).ok());
  EXPECT_FALSE(dstack_decrypt_env(secret, Bytes(40, 1)).ok());
}

TEST(DstackEnv, RoundTrip) {
  auto kp = x25519_generate();
  std::string msg = R"({"env":[{"key":"A","value":"b"}]})";
  auto blob = dstack_encrypt_env(kp.public_key, as_view(msg));
  ASSERT_TRUE(blob.ok()) << blob.error().message;
  EXPECT_EQ(blob->size(), 32 + 12 + msg.size() + 16);
  auto pt = dstack_decrypt_env(kp.secret, *blob);
  ASSERT_TRUE(pt.ok()) << pt.error().message;
  EXPECT_EQ(to_string(*pt), msg);
  auto other = x25519_generate();
  EXPECT_FALSE(dstack_decrypt_env(other.secret, *blob).ok());
}

TEST(SealedBox, RoundTripAndErrors) {
  auto kp = x25519_generate();
  Bytes msg = to_bytes("sealed secret");
  auto sealed = sealed_box_seal(kp.public_key, msg);
  ASSERT_TRUE(sealed.ok());
  EXPECT_EQ(sealed->size(), msg.size() + 48);
  auto opened = sealed_box_open(kp.public_key, kp.secret, *sealed);
  ASSERT_TRUE(opened.ok()) << opened.error().message;
  EXPECT_EQ(*opened, msg);
  auto other = x25519_generate();
  EXPECT_FALSE(sealed_box_open(other.public_key, other.secret, *sealed).ok());
  Bytes bad = *sealed;
  bad.back() ^= 1;
  EXPECT_FALSE(sealed_box_open(kp.public_key, kp.secret, bad).ok());
  EXPECT_FALSE(sealed_box_open(kp.public_key, kp.secret, Bytes(10, 0)).ok());
  EXPECT_FALSE(sealed_box_seal(Bytes(31, 0), msg).ok());
}

}  // namespace
}  // namespace dstack::crypto
