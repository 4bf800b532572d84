#include <gtest/gtest.h>

#include "attest/scale.h"

using namespace dstack;
using namespace dstack::attest::scale;

namespace {
std::string enc_compact(uint64_t v) { return to_hex(Encoder().compact(v).data()); }
}  // namespace

TEST(Scale, CompactEncodingKnownAnswers) {
  // Values from the Parity SCALE documentation.
  EXPECT_EQ(enc_compact(0), "00");
  EXPECT_EQ(enc_compact(1), "04");
  EXPECT_EQ(enc_compact(42), "a8");
  EXPECT_EQ(enc_compact(63), "fc");
  EXPECT_EQ(enc_compact(64), "0101");
  EXPECT_EQ(enc_compact(69), "1501");
  EXPECT_EQ(enc_compact(16383), "fdff");
  EXPECT_EQ(enc_compact(16384), "02000100");
  EXPECT_EQ(enc_compact(1073741823), "feffffff");
  EXPECT_EQ(enc_compact(1073741824), "0300000040");
  EXPECT_EQ(enc_compact(100000000000000ull), "0b00407a10f35a");
  EXPECT_EQ(enc_compact(UINT64_MAX), "13ffffffffffffffff");
}

TEST(Scale, CompactRoundTripAndCanonical) {
  for (uint64_t v : std::initializer_list<uint64_t>{0ull, 1ull, 63ull, 64ull, 16383ull, 16384ull, (1ull << 30) - 1, 1ull << 30, 1ull << 32,
                     (1ull << 56) + 5, uint64_t{UINT64_MAX}}) {
    Encoder e;
    e.compact(v);
    Decoder d(e.data());
    auto r = d.compact();
    ASSERT_TRUE(r.ok()) << v << ": " << r.error().message;
    EXPECT_EQ(*r, v);
    EXPECT_TRUE(d.finish().ok());
  }
  // 1 encoded in two-byte mode is not canonical.
  Bytes over{0x05, 0x00};
  Decoder d(over);
  EXPECT_FALSE(d.compact().ok());
}

TEST(Scale, PrimitivesStringsOptions) {
  Encoder e;
  e.boolean(true).u32(0x01020304).u64(0x1122334455667788ull).str("héllo").bytes(Bytes{1, 2, 3});
  e.option_u64(std::nullopt).option_u64(7).option_str(std::string("x")).str_vec({"a", "bc"});
  EXPECT_EQ(to_hex(Bytes(e.data().begin(), e.data().begin() + 13)), "01040302018877665544332211");
  Decoder d(e.data());
  EXPECT_TRUE(*d.boolean());
  EXPECT_EQ(*d.u32(), 0x01020304u);
  EXPECT_EQ(*d.u64(), 0x1122334455667788ull);
  EXPECT_EQ(*d.str(), "héllo");
  EXPECT_EQ(*d.bytes(), (Bytes{1, 2, 3}));
  EXPECT_FALSE(d.option_u64()->has_value());
  EXPECT_EQ(d.option_u64()->value(), 7u);
  EXPECT_EQ(d.option_str()->value(), "x");
  EXPECT_EQ(*d.str_vec(), (std::vector<std::string>{"a", "bc"}));
  EXPECT_TRUE(d.finish().ok());
}

TEST(Scale, DecoderRejectsMalformedInput) {
  {
    Bytes b{0x02};  // invalid bool
    Decoder d(b);
    EXPECT_FALSE(d.boolean().ok());
  }
  {
    Bytes b{0x10, 'a'};  // Vec of length 4 with 1 byte present
    Decoder d(b);
    auto r = d.bytes();
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.error().message.find("exceeds the remaining input"), std::string::npos);
  }
  {
    Bytes b{0x13, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};  // huge length, no data
    Decoder d(b);
    EXPECT_FALSE(d.bytes().ok());
  }
  {
    Bytes b{0x08, 0xc3, 0x28};  // invalid UTF-8
    Decoder d(b);
    EXPECT_FALSE(d.str().ok());
  }
  {
    Bytes b{0x02, 0x00};  // invalid Option tag
    Decoder d(b);
    EXPECT_FALSE(d.option_u64().ok());
  }
  {
    Bytes b{0x01, 0x02, 0x03};
    Decoder d(b);
    EXPECT_FALSE(d.u32().ok());
    EXPECT_EQ(d.position(), 0u);
    ASSERT_TRUE(d.u8().ok());
    auto st = d.finish();
    ASSERT_FALSE(st.ok());
    EXPECT_NE(st.error().message.find("trailing"), std::string::npos);
  }
  EXPECT_TRUE(is_valid_utf8("plain ascii"));
  EXPECT_FALSE(is_valid_utf8(std::string("\xed\xa0\x80", 3)));  // surrogate
  EXPECT_FALSE(is_valid_utf8(std::string("\xc0\xaf", 2)));      // overlong
  EXPECT_FALSE(is_valid_utf8(std::string("\xe2\x82", 2)));       // truncated
}
