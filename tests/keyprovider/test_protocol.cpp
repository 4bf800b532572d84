// Wire format of the local key provider: frames and JSON byte arrays (spec §12).
#include <gtest/gtest.h>

#include "keyprovider/protocol.h"

using namespace dstack;
using namespace dstack::keyprovider;

TEST(KeyProviderFrame, EncodesBigEndianLength) {
  auto f = encode_frame("{\"quote\":[1]}");
  ASSERT_TRUE(f.ok());
  ASSERT_EQ(f->size(), 4u + 13u);
  EXPECT_EQ((*f)[0], 0);
  EXPECT_EQ((*f)[1], 0);
  EXPECT_EQ((*f)[2], 0);
  EXPECT_EQ((*f)[3], 13);
  EXPECT_EQ(to_string(ByteView(*f).subspan(4)), "{\"quote\":[1]}");
  uint8_t big[4] = {0x00, 0x01, 0x02, 0x03};
  auto n = decode_frame_length(ByteView(big, 4));
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, 0x010203u);
}

TEST(KeyProviderFrame, RejectsZeroAndTooLong) {
  uint8_t zero[4] = {0, 0, 0, 0};
  auto z = decode_frame_length(ByteView(zero, 4));
  ASSERT_FALSE(z.ok());
  EXPECT_NE(z.error().message.find("zero length"), std::string::npos);
  // 8 MiB exactly is allowed, one more byte is not.
  uint8_t max[4] = {0x00, 0x80, 0x00, 0x00};
  EXPECT_TRUE(decode_frame_length(ByteView(max, 4)).ok());
  uint8_t over[4] = {0x00, 0x80, 0x00, 0x01};
  auto o = decode_frame_length(ByteView(over, 4));
  ASSERT_FALSE(o.ok());
  EXPECT_NE(o.error().message.find("exceeds"), std::string::npos);
  uint8_t huge[4] = {0xff, 0xff, 0xff, 0xff};
  EXPECT_FALSE(decode_frame_length(ByteView(huge, 4)).ok());
  EXPECT_FALSE(encode_frame("").ok());
  EXPECT_FALSE(encode_frame(std::string(kMaxFrameLen + 1, ' ')).ok());
}

TEST(KeyProviderRequest, RoundTrip) {
  Bytes q = {0, 1, 2, 254, 255};
  std::string j = encode_request(q);
  EXPECT_EQ(j, "{\"quote\":[0,1,2,254,255]}");
  auto d = decode_request(j);
  ASSERT_TRUE(d.ok()) << d.error().message;
  EXPECT_EQ(*d, q);
}

TEST(KeyProviderRequest, RejectsBadJson) {
  for (std::string bad : {"", "{", "not json", "[1,2,3]", "\"quote\"", "{\"quote\":[1,2,}", "null"}) {
    auto d = decode_request(bad);
    EXPECT_FALSE(d.ok()) << bad;
  }
  EXPECT_FALSE(decode_request("{}").ok());
  EXPECT_FALSE(decode_request("{\"quote\":\"AAEC\"}").ok());  // base64 string instead of array
  EXPECT_FALSE(decode_request("{\"quote\":[]}").ok());
  auto deep = decode_request("{\"quote\":[[[[1]]]]}");
  ASSERT_FALSE(deep.ok());
}

TEST(KeyProviderRequest, RejectsNonByteElements) {
  for (std::string el : {"256", "-1", "1.5", "1e2", "\"1\"", "true", "null", "18446744073709551615"}) {
    auto d = decode_request("{\"quote\":[1," + el + ",3]}");
    ASSERT_FALSE(d.ok()) << el;
    EXPECT_NE(d.error().message.find("quote\"[1]"), std::string::npos) << d.error().message;
  }
  // Nested arrays/objects as elements are refused before parsing (depth limit).
  for (std::string el : {"[1]", "{}"}) EXPECT_FALSE(decode_request("{\"quote\":[1," + el + ",3]}").ok()) << el;
}

TEST(KeyProviderRequest, QuoteSizeLimit) {
  std::string ok = "{\"quote\":[";
  for (size_t i = 0; i < kMaxQuoteLen; ++i) ok += i ? ",7" : "7";
  ok += "]}";
  auto a = decode_request(ok);
  ASSERT_TRUE(a.ok()) << a.error().message;
  EXPECT_EQ(a->size(), kMaxQuoteLen);
  std::string over = ok.substr(0, ok.size() - 2) + ",7]}";
  auto b = decode_request(over);
  ASSERT_FALSE(b.ok());
  EXPECT_NE(b.error().message.find("limit"), std::string::npos);
}

TEST(KeyProviderResponse, RoundTripAndErrorFrame) {
  SealingKeyResponse r{{1, 2, 3}, {4, 5}};
  std::string j = encode_response(r);
  EXPECT_EQ(j, "{\"encrypted_key\":[1,2,3],\"provider_quote\":[4,5]}");
  auto d = decode_response(j);
  ASSERT_TRUE(d.ok()) << d.error().message;
  EXPECT_EQ(d->encrypted_key, r.encrypted_key);
  EXPECT_EQ(d->provider_quote, r.provider_quote);
  auto e = decode_response(encode_error("TDX quote rejected: bad signature"));
  ASSERT_FALSE(e.ok());
  EXPECT_NE(e.error().message.find("TDX quote rejected: bad signature"), std::string::npos);
  EXPECT_FALSE(decode_response("{\"encrypted_key\":[1]}").ok());
  EXPECT_FALSE(decode_response("{\"encrypted_key\":[1],\"provider_quote\":[300]}").ok());
}
