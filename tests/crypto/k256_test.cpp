#include "crypto/k256.h"

#include <gtest/gtest.h>

#include "crypto/hash.h"
#include "test_util.h"

namespace dstack::crypto {
namespace {

using testing::hex;

constexpr const char* kOrderN = "fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141";

TEST(K256, SecretOneKnownAnswers) {
  Bytes one(32, 0);
  one[31] = 1;
  auto key = K256Key::from_secret(one);
  ASSERT_TRUE(key.ok()) << key.error().message;
  EXPECT_EQ(to_hex(key->public_compressed()), "0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798");
  EXPECT_EQ(key->public_uncompressed().size(), 65u);
  EXPECT_EQ(to_hex(key->eth_address()), "7e5f4552091a69125d5dfcb7b8c2659029395bdf");
}

TEST(K256, RejectsInvalidSecrets) {
  EXPECT_FALSE(K256Key::from_secret(Bytes(32, 0)).ok());
  EXPECT_FALSE(K256Key::from_secret(hex(kOrderN)).ok());
  EXPECT_FALSE(K256Key::from_secret(Bytes(16, 1)).ok());
}

TEST(K256, RecoverableSignRecover) {
  K256Key key = K256Key::generate();
  Bytes digest = keccak256(as_view("message"));
  auto sig = key.sign_recoverable(digest);
  ASSERT_TRUE(sig.ok()) << sig.error().message;
  ASSERT_EQ(sig->size(), 65u);
  EXPECT_LE((*sig)[64], 1);
  // RFC 6979: deterministic.
  auto sig2 = key.sign_recoverable(digest);
  ASSERT_TRUE(sig2.ok());
  EXPECT_EQ(*sig, *sig2);

  auto rec = k256_recover(digest, *sig);
  ASSERT_TRUE(rec.ok()) << rec.error().message;
  EXPECT_EQ(*rec, key.public_compressed());

  Bytes eth = *sig;
  eth[64] += 27;
  auto rec27 = k256_recover(digest, eth);
  ASSERT_TRUE(rec27.ok());
  EXPECT_EQ(*rec27, key.public_compressed());

  EXPECT_TRUE(k256_verify(key.public_compressed(), digest, *sig));
  EXPECT_TRUE(k256_verify(key.public_uncompressed(), digest, *sig));
  Bytes other = keccak256(as_view("other"));
  EXPECT_FALSE(k256_verify(key.public_compressed(), other, *sig));
  auto wrong = k256_recover(other, *sig);
  EXPECT_TRUE(!wrong.ok() || *wrong != key.public_compressed());

  Bytes bad_v = *sig;
  bad_v[64] = 5;
  EXPECT_FALSE(k256_recover(digest, bad_v).ok());
  EXPECT_FALSE(k256_recover(digest, Bytes(64, 1)).ok());
  EXPECT_FALSE(key.sign_recoverable(Bytes(31, 0)).ok());
}

TEST(K256, PlainSignIsLowS) {
  K256Key key = K256Key::generate();
  Bytes digest = sha256(as_view("x"));
  auto sig = key.sign(digest);
  ASSERT_TRUE(sig.ok());
  ASSERT_EQ(sig->size(), 64u);
  EXPECT_LT((*sig)[32], 0x80);  // s <= n/2
  EXPECT_TRUE(k256_verify(key.public_compressed(), digest, *sig));
  K256Key other = K256Key::generate();
  EXPECT_FALSE(k256_verify(other.public_compressed(), digest, *sig));
}

TEST(K256, Compress) {
  K256Key key = K256Key::generate();
  auto c = k256_compress(key.public_uncompressed());
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(*c, key.public_compressed());
  auto c2 = k256_compress(key.public_compressed());
  ASSERT_TRUE(c2.ok());
  EXPECT_EQ(*c2, key.public_compressed());
  EXPECT_FALSE(k256_compress(Bytes(33, 7)).ok());
  EXPECT_FALSE(k256_compress(Bytes(20, 2)).ok());
}

TEST(K256, DstackMessageDigest) {
  Bytes app_id = hex("0102030405060708090a0b0c0d0e0f1011121314");
  Bytes msg = hex("aabb");
  EXPECT_EQ(dstack_message_digest("dstack-kms-issued", app_id, msg),
            keccak256(concat({as_view("dstack-kms-issued:"), app_id, msg})));
  EXPECT_EQ(dstack_message_digest_ts("p", app_id, 0x0102030405060708ULL, msg),
            keccak256(concat({as_view("p:"), app_id, hex("0102030405060708"), msg})));
}

}  // namespace
}  // namespace dstack::crypto
