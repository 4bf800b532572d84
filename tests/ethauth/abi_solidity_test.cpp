// The ABI codec checked against Solidity's own encoder/decoder (tests/ethauth/AbiProbe.sol on ganache).
#include <gtest/gtest.h>

#include <cstdio>

#include "crypto/hash.h"
#include "ethauth/abi.h"
#include "ethauth/auth_service.h"
#include "ethauth/deploy.h"
#include "ganache.h"

using namespace dstack;
using namespace dstack::ethauth;
namespace eabi = dstack::ethauth::abi;
using eabi::Value;

namespace {

std::string probe_bytecode() {
  std::string cmd = std::string("node ") + DSTACK_SOURCE_DIR + "/tests/ethauth/eth-abi-probe.js";
  std::string out;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) return out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  if (::pclose(p) != 0) return "";
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
  return out;
}

}  // namespace

TEST(EthAbiSolidity, MatchesSolidityEncoderAndDecoder) {
  ethtest::Ganache chain;
  ASSERT_EQ(chain.start(), "");
  EthRpc rpc(chain.url());
  std::string code = probe_bytecode();
  ASSERT_FALSE(code.empty()) << "compiling AbiProbe.sol failed";
  Artifact art{"AbiProbe", *from_hex(code), {}};
  auto from = default_sender(rpc);
  ASSERT_TRUE(from.ok()) << from.error().message;
  auto probe = deploy_contract(rpc, *from, art, "()", {});
  ASSERT_TRUE(probe.ok()) << probe.error().message;

  auto tuple_t = eabi::parse_type_list(std::string("(") + kAppBootInfoTuple + ")");
  ASSERT_TRUE(tuple_t.ok());

  // 1. Solidity-encoded sample == our encoding of the same values.
  BootInfo b;
  b.app_id = *from_hex("00000000000000000000000000000000deadbeef");
  b.compose_hash = crypto::keccak256(as_view("compose"));
  b.instance_id = Bytes(20, 0);
  b.device_id = Bytes(32, 0);
  b.device_id[31] = 1;
  b.mr_aggregated = Bytes(32, 0);
  b.mr_aggregated[31] = 2;
  b.mr_system = Bytes(32, 0);
  b.mr_system[31] = 3;
  b.os_image_hash = Bytes(32, 0);
  b.os_image_hash[31] = 4;
  b.tcb_status = "SWHardeningNeeded";
  b.advisory_ids = {"INTEL-SA-00837", "", "a string that is longer than thirty-two bytes, spanning words"};
  auto ours = eabi::encode(*tuple_t, {boot_info_tuple(b)});
  ASSERT_TRUE(ours.ok());
  auto sample = view_call(rpc, *probe, "sample()", {}, "(bytes)");
  ASSERT_TRUE(sample.ok()) << sample.error().message;
  EXPECT_EQ(to_hex((*sample)[0].bytes), to_hex(*ours));

  // And our decoder reads Solidity's encoding back into the same values.
  auto dec = eabi::decode(*tuple_t, (*sample)[0].bytes);
  ASSERT_TRUE(dec.ok()) << dec.error().message;
  const auto& t = (*dec)[0].items;
  EXPECT_EQ(t[0].bytes, b.app_id);
  EXPECT_EQ(t[1].bytes, b.compose_hash);
  EXPECT_EQ(t[7].str, "SWHardeningNeeded");
  ASSERT_EQ(t[8].items.size(), 3u);
  EXPECT_EQ(t[8].items[2].str, b.advisory_ids[2]);

  // 2. Solidity decodes our calldata (it reverts on malformed input) and re-encodes the same bytes.
  b.advisory_ids = {};
  b.tcb_status = "";
  auto ours2 = eabi::encode(*tuple_t, {boot_info_tuple(b)});
  auto echo = view_call(rpc, *probe, std::string("echo(") + kAppBootInfoTuple + ")", {boot_info_tuple(b)}, "(bytes)");
  ASSERT_TRUE(echo.ok()) << echo.error().message;
  EXPECT_EQ(to_hex((*echo)[0].bytes), to_hex(*ours2));

  // 3. A string[] return value plus a static member.
  auto s = view_call(rpc, *probe, "strings()", {}, "(string[],uint256)");
  ASSERT_TRUE(s.ok()) << s.error().message;
  ASSERT_EQ((*s)[0].items.size(), 3u);
  EXPECT_EQ((*s)[0].items[0].str, "one");
  EXPECT_EQ((*s)[0].items[2].str, "three");
  EXPECT_EQ(*(*s)[1].as_u64(), 42u);
}
