// dstack-auth-eth configuration: file (TOML/JSON) then env, with errors that name the bad key.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <fstream>

#include "ethauth/auth_service.h"

using namespace dstack;
using namespace dstack::ethauth;

namespace {
std::string write_tmp(const std::string& suffix, const std::string& text) {
  char t[] = "/tmp/eth-cfg-XXXXXX";
  std::string dir = mkdtemp(t);
  std::string p = dir + "/auth-eth" + suffix;
  std::ofstream(p) << text;
  return p;
}
}  // namespace

TEST(EthAuthConfig, TomlJsonAndEnv) {
  AuthEthConfig c;
  auto toml = write_tmp(".toml", "eth_rpc_url = \"http://node:8545\"\nkms_contract_addr = \"0x" + std::string(40, '1') +
                                     "\"\nport = 9000\nbudget_ms = 1500\ninfo_ttl_s = 10\n");
  ASSERT_TRUE(load_config_file(toml, c).ok());
  EXPECT_EQ(c.eth_rpc_url, "http://node:8545");
  EXPECT_EQ(c.port, 9000);
  EXPECT_EQ(c.budget.count(), 1500);
  EXPECT_EQ(c.info_ttl.count(), 10);
  EXPECT_EQ(c.host, "127.0.0.1");

  AuthEthConfig j;
  ASSERT_TRUE(load_config_file(write_tmp(".json", R"({"host":"0.0.0.0","attempt_timeout_ms":700})"), j).ok());
  EXPECT_EQ(j.host, "0.0.0.0");
  EXPECT_EQ(j.attempt_timeout.count(), 700);
  EXPECT_EQ(j.budget.count(), 4000) << "default budget is 4 s (< the KMS's 5 s webhook timeout)";

  AuthEthConfig bad;
  auto st = load_config_file(write_tmp(".toml", "prot = 1\n"), bad);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.error().message.find("prot"), std::string::npos);
  EXPECT_FALSE(load_config_file(write_tmp(".toml", "port = 70000\n"), bad).ok());
  EXPECT_FALSE(load_config_file(write_tmp(".json", "{"), bad).ok());
  EXPECT_FALSE(load_config_file("/nonexistent/auth-eth.toml", bad).ok());

  ::setenv("ETH_RPC_URL", "https://rpc.example/v2/key", 1);
  ::setenv("PORT", "8123", 1);
  ASSERT_TRUE(apply_env(c).ok());
  EXPECT_EQ(c.eth_rpc_url, "https://rpc.example/v2/key");
  EXPECT_EQ(c.port, 8123);
  ::setenv("PORT", "80a", 1);
  EXPECT_FALSE(apply_env(c).ok());
  ::unsetenv("PORT");
  ::unsetenv("ETH_RPC_URL");

  AuthEthConfig none;
  EXPECT_FALSE(AuthEthService::create(none).ok()) << "KMS contract address is required";
  none.kms_contract_addr = "0x1234";
  EXPECT_FALSE(AuthEthService::create(none).ok());
  none.kms_contract_addr = "0x" + std::string(40, 'a');
  none.eth_rpc_url = "ftp://x";
  EXPECT_FALSE(AuthEthService::create(none).ok());
}
