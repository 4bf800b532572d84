#include "crypto/hash.h"

#include <gtest/gtest.h>

#include "test_util.h"

namespace dstack::crypto {
namespace {

using testing::hex;

TEST(Hash, Sha2Nist) {
  EXPECT_EQ(to_hex(sha256(as_view("abc"))), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(to_hex(sha384(as_view("abc"))),
            "cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed8086072ba1e7cc2358baeca134c825a7");
  EXPECT_EQ(to_hex(sha512(as_view("abc"))),
            "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
            "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f");
}

TEST(Hash, Sha3Nist) {
  EXPECT_EQ(to_hex(sha3_256(as_view("abc"))), "3a985da74fe225b2045c172d6bd390bd855f086e3e9d525b46bfe24511431532");
  EXPECT_EQ(sha3_384(as_view("abc")).size(), 48u);
  EXPECT_EQ(sha3_512(as_view("abc")).size(), 64u);
}

TEST(Hash, KeccakIsNotSha3) {
  EXPECT_EQ(to_hex(keccak256({})), "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470");
  EXPECT_NE(keccak256(as_view("abc")), sha3_256(as_view("abc")));
  EXPECT_EQ(keccak384({}).size(), 48u);
  EXPECT_EQ(keccak512({}).size(), 64u);
  EXPECT_NE(keccak512({}), sha3_512({}));
}

TEST(Hkdf, Rfc5869TestCase1) {
  Bytes ikm(22, 0x0b);
  Bytes salt = hex("000102030405060708090a0b0c");
  Bytes info = hex("f0f1f2f3f4f5f6f7f8f9");
  auto okm = hkdf_sha256(ikm, salt, info, 42);
  ASSERT_TRUE(okm.ok()) << okm.error().message;
  EXPECT_EQ(to_hex(*okm),
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865");
}

TEST(Hkdf, Rfc5869TestCase3EmptySaltAndInfo) {
  auto okm = hkdf_sha256(Bytes(22, 0x0b), {}, {}, 42);
  ASSERT_TRUE(okm.ok()) << okm.error().message;
  EXPECT_EQ(to_hex(*okm),
            "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8");
}

TEST(Hkdf, RejectsBadLength) {
  EXPECT_FALSE(hkdf_sha256(as_view("k"), {}, {}, 0).ok());
  EXPECT_FALSE(hkdf_sha256(as_view("k"), {}, {}, 255 * 32 + 1).ok());
}

TEST(Hkdf, DeriveKeyIsHkdfWithRatlsSaltAndConcatenatedInfo) {
  Bytes ikm = hex("00112233445566778899aabbccddeeff");
  auto a = derive_key(ikm, {as_view("context one"), as_view("context two")}, 32);
  auto b = hkdf_sha256(ikm, as_view("RATLS"), as_view("context onecontext two"), 32);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(*a, *b);
  auto c = derive_key(ikm, {as_view("context on"), as_view("econtext two")}, 32);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(*a, *c);  // no separators or lengths (spec §5.1)
  auto d = derive_key(ikm, {as_view("other")}, 32);
  ASSERT_TRUE(d.ok());
  EXPECT_NE(*a, *d);
}

TEST(Random, ProducesDistinctOutput) {
  Bytes a = random_bytes(32);
  Bytes b = random_bytes(32);
  EXPECT_EQ(a.size(), 32u);
  EXPECT_NE(a, b);
  EXPECT_TRUE(random_bytes(0).empty());
}

}  // namespace
}  // namespace dstack::crypto
