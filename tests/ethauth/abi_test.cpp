// ABI codec against known vectors (selectors from Keccak-256, Solidity ABI spec examples) and malformed input.
#include "ethauth/abi.h"

#include <gtest/gtest.h>

#include "ethauth/auth_service.h"
#include "ethauth/eth_rpc.h"

using namespace dstack;
using namespace dstack::ethauth;
namespace eabi = dstack::ethauth::abi;
using eabi::Value;

namespace {

// Right-aligned 32-byte word from short hex.
std::string w(const std::string& h) { return std::string(64 - h.size(), '0') + h; }
// Left-aligned (bytes/string payload) word.
std::string lw(const std::string& h) { return h + std::string(64 - h.size(), '0'); }
std::string ascii_hex(const std::string& s) { return to_hex(as_view(s)); }

Value u(uint64_t v) { return Value::uint(v); }

}  // namespace

TEST(EthAbi, FunctionSelectors) {
  EXPECT_EQ(to_hex(eabi::selector("transfer(address,uint256)")), "a9059cbb");
  EXPECT_EQ(to_hex(eabi::selector("balanceOf(address)")), "70a08231");
  EXPECT_EQ(to_hex(eabi::selector("baz(uint32,bool)")), "cdcd77c0");
  EXPECT_EQ(to_hex(eabi::selector("sam(bytes,bool,uint256[])")), "a5643bf2");
  EXPECT_EQ(to_hex(eabi::selector("f(uint256,uint32[],bytes10,bytes)")), "8be65246");
  // Error(string), the revert payload selector.
  EXPECT_EQ(to_hex(eabi::selector("Error(string)")), "08c379a0");
}

TEST(EthAbi, StaticArgsBaz) {
  auto enc = eabi::encode_call("baz(uint32,bool)", {u(69), Value::boolean_(true)});
  ASSERT_TRUE(enc.ok()) << enc.error().message;
  EXPECT_EQ(to_hex(*enc), "cdcd77c0" + w("45") + w("1"));
}

TEST(EthAbi, TransferAddressUint) {
  auto addr = from_hex("5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed");
  ASSERT_TRUE(addr.ok());
  auto enc = eabi::encode_call("transfer(address,uint256)", {Value::address(*addr), u(1000000)});
  ASSERT_TRUE(enc.ok());
  EXPECT_EQ(to_hex(*enc), "a9059cbb" + w("5aaeb6053f3e94c9b9a09f33669435e7ef1beaed") + w("f4240"));
}

TEST(EthAbi, DynamicSam) {
  // Solidity ABI spec example: sam("dave", true, [1,2,3]).
  auto enc = eabi::encode_call("sam(bytes,bool,uint256[])",
                              {Value::bytes_(to_bytes("dave")), Value::boolean_(true), Value::array({u(1), u(2), u(3)})});
  ASSERT_TRUE(enc.ok());
  EXPECT_EQ(to_hex(*enc), "a5643bf2" + w("60") + w("1") + w("a0") + w("4") + lw(ascii_hex("dave")) + w("3") + w("1") +
                              w("2") + w("3"));
}

TEST(EthAbi, MixedF) {
  // Solidity ABI spec example: f(0x123, [0x456, 0x789], "1234567890", "Hello, world!").
  auto enc = eabi::encode_call("f(uint256,uint32[],bytes10,bytes)",
                              {u(0x123), Value::array({u(0x456), u(0x789)}), Value::fixed_bytes(to_bytes("1234567890")),
                               Value::bytes_(to_bytes("Hello, world!"))});
  ASSERT_TRUE(enc.ok());
  std::string expect = "8be65246" + w("123") + w("80") + lw(ascii_hex("1234567890")) + w("e0") + w("2") + w("456") +
                       w("789") + w("d") + lw(ascii_hex("Hello, world!"));
  EXPECT_EQ(to_hex(*enc), expect);
}

TEST(EthAbi, NestedArraysAndStringArray) {
  // Solidity ABI spec example: g([[1, 2], [3]], ["one", "two", "three"]).
  auto enc = eabi::encode_call("g(uint256[][],string[])",
                              {Value::array({Value::array({u(1), u(2)}), Value::array({u(3)})}),
                               Value::array({Value::string_("one"), Value::string_("two"), Value::string_("three")})});
  ASSERT_TRUE(enc.ok());
  EXPECT_EQ(to_hex(eabi::selector("g(uint256[][],string[])")), "2289b18c");
  std::string expect = "2289b18c" + w("40") + w("140") + w("2") + w("40") + w("a0") + w("2") + w("1") + w("2") + w("1") +
                       w("3") + w("3") + w("60") + w("a0") + w("e0") + w("3") + lw(ascii_hex("one")) + w("3") +
                       lw(ascii_hex("two")) + w("5") + lw(ascii_hex("three"));
  EXPECT_EQ(to_hex(*enc), expect);

  // And back.
  auto types = eabi::parse_type_list("(uint256[][],string[])");
  ASSERT_TRUE(types.ok());
  auto dec = eabi::decode(*types, ByteView(*enc).subspan(4));
  ASSERT_TRUE(dec.ok()) << dec.error().message;
  ASSERT_EQ((*dec)[0].items.size(), 2u);
  EXPECT_EQ(*(*dec)[0].items[0].items[1].as_u64(), 2u);
  EXPECT_EQ(*(*dec)[0].items[1].items[0].as_u64(), 3u);
  ASSERT_EQ((*dec)[1].items.size(), 3u);
  EXPECT_EQ((*dec)[1].items[2].str, "three");
}

TEST(EthAbi, TupleWithDynamicMembers) {
  // f((uint256,string,bytes32)) with (7, "ab", 0x11..): the tuple is dynamic, so the head holds its offset (0x20);
  // inside the tuple the string's offset is relative to the tuple start (3 head words = 0x60).
  auto types = eabi::parse_type_list("((uint256,string,bytes32))");
  ASSERT_TRUE(types.ok());
  ASSERT_TRUE((*types)[0].is_dynamic());
  Bytes b32(32, 0x11);
  auto enc = eabi::encode(*types, {Value::tuple({u(7), Value::string_("ab"), Value::fixed_bytes(b32)})});
  ASSERT_TRUE(enc.ok());
  EXPECT_EQ(to_hex(*enc), w("20") + w("7") + w("60") + to_hex(b32) + w("2") + lw("6162"));
  auto dec = eabi::decode(*types, *enc);
  ASSERT_TRUE(dec.ok());
  EXPECT_EQ((*dec)[0].items[1].str, "ab");
  EXPECT_EQ((*dec)[0].items[2].bytes, b32);

  // A fully static tuple is encoded inline (no offset).
  auto st = eabi::parse_type_list("((uint8,bool),uint256)");
  ASSERT_TRUE(st.ok());
  EXPECT_FALSE((*st)[0].is_dynamic());
  auto enc2 = eabi::encode(*st, {Value::tuple({u(5), Value::boolean_(false)}), u(9)});
  ASSERT_TRUE(enc2.ok());
  EXPECT_EQ(to_hex(*enc2), w("5") + w("0") + w("9"));
}

TEST(EthAbi, AppBootInfoLayout) {
  BootInfo b;
  b.app_id = Bytes(20, 0xaa);
  b.compose_hash = Bytes(32, 0x01);
  b.instance_id = Bytes(20, 0);
  b.device_id = Bytes(32, 0x02);
  b.mr_aggregated = Bytes(32, 0x03);
  b.mr_system = Bytes(32, 0x04);
  b.os_image_hash = Bytes(32, 0x05);
  b.tcb_status = "UpToDate";
  b.advisory_ids = {"INTEL-SA-00837"};
  auto enc = eabi::encode_call(std::string("isAppAllowed(") + kAppBootInfoTuple + ")", {boot_info_tuple(b)});
  ASSERT_TRUE(enc.ok());
  std::string h = to_hex(*enc);
  std::string expect = to_hex(eabi::selector(std::string("isAppAllowed(") + kAppBootInfoTuple + ")")) + w("20") +
                       w(std::string(40, 'a')) + to_hex(Bytes(32, 1)) + w("0") + to_hex(Bytes(32, 2)) +
                       to_hex(Bytes(32, 3)) + to_hex(Bytes(32, 4)) + to_hex(Bytes(32, 5)) +
                       w("120") /* 9 head words */ + w("160") /* + 2 words of tcbStatus */ + w("8") +
                       lw(ascii_hex("UpToDate")) + w("1") + w("20") + w("e") + lw(ascii_hex("INTEL-SA-00837"));
  EXPECT_EQ(h, expect);
}

TEST(EthAbi, DecodeRejectsMalformed) {
  auto t = eabi::parse_type_list("(bool,string)");
  ASSERT_TRUE(t.ok());
  // Truncated.
  EXPECT_FALSE(eabi::decode(*t, *from_hex(w("1"))).ok());
  // Offset beyond data.
  EXPECT_FALSE(eabi::decode(*t, *from_hex(w("1") + w("1000"))).ok());
  // Bool not 0/1.
  EXPECT_FALSE(eabi::decode(*t, *from_hex(w("2") + w("40") + w("0"))).ok());
  // String length beyond data.
  EXPECT_FALSE(eabi::decode(*t, *from_hex(w("1") + w("40") + w("ff"))).ok());
  // Huge length word (does not fit 64 bits).
  EXPECT_FALSE(eabi::decode(*t, *from_hex(w("1") + w("40") + std::string(64, 'f'))).ok());
  // Valid.
  auto ok = eabi::decode(*t, *from_hex(w("1") + w("40") + w("3") + lw("616263")));
  ASSERT_TRUE(ok.ok());
  EXPECT_TRUE((*ok)[0].boolean);
  EXPECT_EQ((*ok)[1].str, "abc");
  // Address with dirty upper bytes.
  auto ta = eabi::parse_type_list("(address)");
  EXPECT_FALSE(eabi::decode(*ta, *from_hex("01" + std::string(62, '0'))).ok());
  // Aliased offsets: a string[] with many elements all pointing at one long string must not amplify.
  std::string alias = w("20") + w("4");
  for (int i = 0; i < 4; ++i) alias += w("80");
  alias += w("80") + lw("aa") + lw("bb") + lw("cc") + lw("dd");  // 4 x 128 B decoded from 352 B
  auto ts = eabi::parse_type_list("(string[])");
  EXPECT_FALSE(eabi::decode(*ts, *from_hex(alias)).ok());
}

TEST(EthAbi, EncodeRejectsMismatches) {
  EXPECT_FALSE(eabi::encode_call("f(address)", {Value::address(Bytes(19, 0))}).ok());
  EXPECT_FALSE(eabi::encode_call("f(bytes32)", {Value::fixed_bytes(Bytes(31, 0))}).ok());
  EXPECT_FALSE(eabi::encode_call("f(uint8)", {u(256)}).ok());
  EXPECT_FALSE(eabi::encode_call("f(uint256,bool)", {u(1)}).ok());
  EXPECT_FALSE(eabi::encode_call("f(string)", {u(1)}).ok());
  EXPECT_FALSE(eabi::encode_call("f(uint256[2])", {Value::array({u(1)})}).ok());
  EXPECT_FALSE(eabi::parse_type("uint7").ok());
  EXPECT_FALSE(eabi::parse_type("bytes33").ok());
  EXPECT_FALSE(eabi::parse_type("(uint256").ok());
  EXPECT_FALSE(eabi::parse_type("mapping").ok());
  auto t = eabi::parse_type("(address,string)[2][]");
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->canonical(), "(address,string)[2][]");
  EXPECT_EQ(eabi::parse_type("uint")->canonical(), "uint256");
}

TEST(EthAbi, RevertReason) {
  std::string data = "08c379a0" + w("20") + w("17") + lw(ascii_hex("caller is not the owner"));
  auto r = eabi::decode_revert_reason(*from_hex(data));
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(*r, "caller is not the owner");
  EXPECT_FALSE(eabi::decode_revert_reason(*from_hex("deadbeef")).ok());
}

TEST(EthHelpers, ChecksumAndRedaction) {
  // EIP-55 test vectors.
  for (const char* a : {"0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed", "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
                        "0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB", "0xD1220A0cf47c7B9Be7A2E6BA89F429762e7b9aDb"}) {
    auto b = parse_address(a);
    ASSERT_TRUE(b.ok());
    EXPECT_EQ(to_checksum_address(*b), a);
  }
  EXPECT_EQ(redact_url("https://eth-sepolia.g.alchemy.com/v2/SECRETKEY"), "https://eth-sepolia.g.alchemy.com");
  EXPECT_EQ(redact_url("http://user:pw@127.0.0.1:8545/?k=1"), "http://127.0.0.1:8545");
  EXPECT_EQ(*parse_quantity("0xaa36a7"), 11155111u);
  EXPECT_FALSE(parse_quantity("12").ok());
}

TEST(EthBootInfo, SchemaValidation) {
  using nlohmann::json;
  json ok = {{"mrAggregated", "0x01"}, {"osImageHash", "02"},      {"appId", "0xAB"},
             {"composeHash", "ff"},    {"instanceId", ""},          {"deviceId", "0x" + std::string(64, 'c')},
             {"tcbStatus", "UpToDate"}, {"advisoryIds", {"A", "B"}}, {"teeVariant", "dstack-tdx"}};
  auto b = parse_boot_info(ok);
  ASSERT_TRUE(b.ok()) << b.error().message;
  EXPECT_EQ(to_hex(b->app_id), std::string(38, '0') + "ab");
  EXPECT_EQ(b->mr_aggregated.size(), 32u);
  EXPECT_EQ(b->mr_aggregated.back(), 1);
  EXPECT_EQ(b->instance_id, Bytes(20, 0));
  EXPECT_EQ(b->mr_system, Bytes(32, 0));
  EXPECT_EQ(b->advisory_ids.size(), 2u);
  // Odd-length hex is left-padded with a zero nibble.
  json odd = ok;
  odd["composeHash"] = "abc";
  EXPECT_EQ(to_hex(parse_boot_info(odd)->compose_hash), std::string(60, '0') + "0abc");

  for (const char* req : {"mrAggregated", "osImageHash", "appId", "composeHash", "instanceId", "deviceId"}) {
    json bad = ok;
    bad.erase(req);
    auto r = parse_boot_info(bad);
    ASSERT_FALSE(r.ok()) << req;
    EXPECT_NE(r.error().message.find(req), std::string::npos);
  }
  json too_long = ok;
  too_long["appId"] = std::string(42, 'a');
  EXPECT_FALSE(parse_boot_info(too_long).ok());
  json not_hex = ok;
  not_hex["deviceId"] = "xyz";
  EXPECT_FALSE(parse_boot_info(not_hex).ok());
  json bad_adv = ok;
  bad_adv["advisoryIds"] = {1, 2};
  EXPECT_FALSE(parse_boot_info(bad_adv).ok());
  json bad_tcb = ok;
  bad_tcb["tcbStatus"] = 5;
  EXPECT_FALSE(parse_boot_info(bad_tcb).ok());
  EXPECT_FALSE(parse_boot_info(json::array()).ok());
}
