// End-to-end tests of `dstack-verify quote` (the binary in DSTACK_BIN_DIR).
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>

namespace {

const std::string kDir = std::string(DSTACK_SHARED_DIR) + "/testdata/dcap/";
const std::string kBin = std::string(DSTACK_BIN_DIR) + "/dstack-verify";

struct CliRun {
  int code;
  std::string out;
};

CliRun run(const std::string& args) {
  std::string cmd = kBin + " " + args + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  EXPECT_NE(p, nullptr);
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  int st = pclose(p);
  return {WIFEXITED(st) ? WEXITSTATUS(st) : -1, out};
}

}  // namespace

TEST(VerifyCli, TdxQuoteUpToDateJson) {
  CliRun r = run("quote --quote " + kDir + "tdx_quote --collateral " + kDir + "tdx_quote_collateral.json --time 1750331763 --json");
  ASSERT_EQ(r.code, 0) << r.out;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["status"], "UpToDate");
  EXPECT_EQ(j["tee_type"], "TDX");
  EXPECT_TRUE(j["advisory_ids"].is_array());
  for (const char* k : {"mr_td", "rtmr0", "rtmr1", "rtmr2", "rtmr3"}) EXPECT_EQ(j[k].get<std::string>().size(), 96u) << k;
  EXPECT_EQ(j["report_data"].get<std::string>().size(), 128u);
}

TEST(VerifyCli, SgxQuoteJson) {
  CliRun r = run("quote --quote " + kDir + "sgx_quote --collateral " + kDir + "sgx_quote_collateral.json --time 1750334171 --json");
  ASSERT_EQ(r.code, 0) << r.out;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["status"], "ConfigurationAndSWHardeningNeeded");
  EXPECT_EQ(j["mr_enclave"].get<std::string>().size(), 64u);
  EXPECT_EQ(j["mr_signer"].get<std::string>().size(), 64u);
}

TEST(VerifyCli, ExpiredFailsWithOneLineReason) {
  CliRun r = run("quote --quote " + kDir + "tdx_quote --collateral " + kDir + "tdx_quote_collateral.json --time 1800000000");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("expired"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find('\n'), r.out.size() - 1) << r.out;
}

TEST(VerifyCli, ParseOnlyHex) {
  CliRun r = run("quote --hex --quote " + kDir + "quote-from-tappd.hex --json");
  ASSERT_EQ(r.code, 0) << r.out;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["verified"], false);
  EXPECT_EQ(j["tee_type"], "TDX");
}

TEST(VerifyCli, MissingFilesFail) {
  CliRun r = run("quote --quote " + kDir + "tdx_quote --collateral " + kDir +
              "tdx_quote_collateral.json --time 1750331763 --root-ca /nonexistent.pem");
  EXPECT_NE(r.code, 0);
  CliRun bad = run("quote --quote /nonexistent-quote");
  EXPECT_NE(bad.code, 0);
}
