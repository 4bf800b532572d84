// auth-eth against a real local chain (ganache): contracts deployed by our deploy code, decisions by eth_call.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <thread>

#include "crypto/hash.h"
#include "ethauth/auth_service.h"
#include "ethauth/deploy.h"
#include "ganache.h"
#include "rpc/http.h"

using namespace dstack;
using namespace dstack::ethauth;
namespace eabi = dstack::ethauth::abi;
using eabi::Value;
using nlohmann::json;

namespace {

Bytes h32(uint8_t fill) { return Bytes(32, fill); }

class ChainAuth : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string err = chain_.start();
    ASSERT_EQ(err, "");
    rpc_ = std::make_unique<EthRpc>(chain_.url());
    DeployOptions o;
    o.contracts_dir = DSTACK_CONTRACTS_DIR;
    o.compose_hash = compose_;
    o.app_device_id = app_device_;
    o.os_image_hashes = {os_image_};
    o.kms_aggregated_mrs = {kms_mr_};
    o.kms_device_ids = {kms_device_};
    o.gateway_app_id = "gateway-app-1";
    auto d = deploy_all(*rpc_, o);
    ASSERT_TRUE(d.ok()) << d.error().message;
    dep_ = *d;
    kms_ = dep_.kms_contract_addr;
    ASSERT_FALSE(dep_.app_id.empty());
    AuthEthConfig cfg;
    cfg.eth_rpc_url = chain_.url();
    cfg.kms_contract_addr = kms_;
    auto svc = AuthEthService::create(cfg);
    ASSERT_TRUE(svc.ok()) << svc.error().message;
    svc_ = std::move(*svc);
  }

  BootInfo app_boot() const {
    BootInfo b;
    b.app_id = *parse_address(dep_.app_id);
    b.compose_hash = compose_;
    b.instance_id = Bytes(20, 0x07);
    b.device_id = app_device_;
    b.mr_aggregated = h32(0x55);
    b.mr_system = h32(0x66);
    b.os_image_hash = os_image_;
    b.tcb_status = "UpToDate";
    b.advisory_ids = {"INTEL-SA-00837", "INTEL-SA-00615"};
    return b;
  }
  BootInfo kms_boot() const {
    BootInfo b = app_boot();
    b.mr_aggregated = kms_mr_;
    b.device_id = kms_device_;
    return b;
  }
  void admin(const std::string& to, const std::string& sig, Bytes arg) {
    auto r = send_call(*rpc_, dep_.owner, to, sig, {Value::fixed_bytes(std::move(arg))});
    ASSERT_TRUE(r.ok()) << r.error().message;
  }

  ethtest::Ganache chain_;
  std::unique_ptr<EthRpc> rpc_;
  DeployResult dep_;
  std::string kms_;
  std::unique_ptr<AuthEthService> svc_;
  const Bytes compose_ = crypto::sha256(as_view("app-compose.json"));
  const Bytes app_device_ = h32(0xd1);
  const Bytes os_image_ = h32(0x0a);
  const Bytes kms_mr_ = h32(0x4b);
  const Bytes kms_device_ = h32(0xd2);
};

void expect_decision(const AuthDecision& d, bool allowed, const std::string& reason) {
  EXPECT_EQ(d.is_allowed, allowed) << d.reason;
  EXPECT_EQ(d.reason, reason);
  EXPECT_EQ(d.gateway_app_id, "gateway-app-1");
}

}  // namespace

TEST_F(ChainAuth, AppDecisionsFollowTheContracts) {
  expect_decision(svc_->boot_auth(false, app_boot()), true, "");

  BootInfo unregistered = app_boot();
  unregistered.app_id = Bytes(20, 0x99);
  expect_decision(svc_->boot_auth(false, unregistered), false, "App not registered");

  BootInfo wrong_compose = app_boot();
  wrong_compose.compose_hash = h32(0xee);
  expect_decision(svc_->boot_auth(false, wrong_compose), false, "Compose hash not allowed");

  BootInfo unknown_device = app_boot();
  unknown_device.device_id = h32(0xde);
  expect_decision(svc_->boot_auth(false, unknown_device), false, "Device not allowed");

  BootInfo bad_os = app_boot();
  bad_os.os_image_hash = h32(0x0b);
  expect_decision(svc_->boot_auth(false, bad_os), false, "OS image is not allowed");

  // Registered address without code.
  Bytes eoa(20, 0x42);
  auto reg = send_call(*rpc_, dep_.owner, kms_, "registerApp(address)", {Value::address(eoa)});
  ASSERT_TRUE(reg.ok()) << reg.error().message;
  BootInfo no_code = app_boot();
  no_code.app_id = eoa;
  expect_decision(svc_->boot_auth(false, no_code), false, "App not deployed or invalid address");

  // App-owner changes take effect on the next call.
  admin(dep_.app_id, "addComposeHash(bytes32)", h32(0xee));
  expect_decision(svc_->boot_auth(false, wrong_compose), true, "");
  admin(dep_.app_id, "removeComposeHash(bytes32)", compose_);
  expect_decision(svc_->boot_auth(false, app_boot()), false, "Compose hash not allowed");
  admin(dep_.app_id, "addDevice(bytes32)", h32(0xde));
  BootInfo new_dev = wrong_compose;
  new_dev.device_id = h32(0xde);
  expect_decision(svc_->boot_auth(false, new_dev), true, "");

  // KMS-side change: OS image revoked.
  admin(kms_, "removeOsImageHash(bytes32)", os_image_);
  expect_decision(svc_->boot_auth(false, new_dev), false, "OS image is not allowed");
}

TEST_F(ChainAuth, AppRequiringUpToDateTcb) {
  auto r = send_call(*rpc_, dep_.owner, dep_.app_id, "setRequireTcbUpToDate(bool)", {Value::boolean_(true)});
  ASSERT_TRUE(r.ok()) << r.error().message;
  BootInfo b = app_boot();
  expect_decision(svc_->boot_auth(false, b), true, "");
  b.tcb_status = "SWHardeningNeeded";
  expect_decision(svc_->boot_auth(false, b), false, "TCB status is not up to date");
}

TEST_F(ChainAuth, KmsDecisionsAndAdminChanges) {
  expect_decision(svc_->boot_auth(true, kms_boot()), true, "");

  BootInfo tcb = kms_boot();
  tcb.tcb_status = "OutOfDate";
  expect_decision(svc_->boot_auth(true, tcb), false, "TCB status is not up to date");
  tcb.tcb_status = "";
  expect_decision(svc_->boot_auth(true, tcb), false, "TCB status is not up to date");

  BootInfo mr = kms_boot();
  mr.mr_aggregated = h32(0x01);
  expect_decision(svc_->boot_auth(true, mr), false, "Aggregated MR not allowed");

  BootInfo dev = kms_boot();
  dev.device_id = h32(0x02);
  expect_decision(svc_->boot_auth(true, dev), false, "KMS is not allowed to boot on this device");

  BootInfo os = kms_boot();
  os.os_image_hash = h32(0x03);
  expect_decision(svc_->boot_auth(true, os), false, "OS image is not allowed");

  // Admin changes take effect on the next call.
  admin(kms_, "addKmsDevice(bytes32)", h32(0x02));
  expect_decision(svc_->boot_auth(true, dev), true, "");
  admin(kms_, "addKmsAggregatedMr(bytes32)", h32(0x01));
  expect_decision(svc_->boot_auth(true, mr), true, "");
  admin(kms_, "removeKmsAggregatedMr(bytes32)", kms_mr_);
  expect_decision(svc_->boot_auth(true, kms_boot()), false, "Aggregated MR not allowed");
  BootInfo mr_dev = mr;  // allowed MR 0x01 on the newly allowed device 0x02
  mr_dev.device_id = h32(0x02);
  expect_decision(svc_->boot_auth(true, mr_dev), true, "");
  admin(kms_, "removeKmsDevice(bytes32)", h32(0x02));
  expect_decision(svc_->boot_auth(true, mr_dev), false, "KMS is not allowed to boot on this device");
}

TEST_F(ChainAuth, OnlyOwnerMayAdminister) {
  auto accts = rpc_->accounts();
  ASSERT_TRUE(accts.ok());
  ASSERT_GE(accts->size(), 2u);
  auto r = send_call(*rpc_, (*accts)[1], kms_, "addKmsDevice(bytes32)", {Value::fixed_bytes(h32(0x77))});
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("caller is not the owner"), std::string::npos) << r.error().message;
  BootInfo dev = kms_boot();
  dev.device_id = h32(0x77);
  expect_decision(svc_->boot_auth(true, dev), false, "KMS is not allowed to boot on this device");

  // Views read back what deploy wrote.
  auto impl = view_call(*rpc_, kms_, "appImplementation()", {}, "(address)");
  ASSERT_TRUE(impl.ok());
  EXPECT_EQ(to_checksum_address((*impl)[0].bytes), dep_.app_implementation);
  auto reg = view_call(*rpc_, kms_, "registeredApps(address)", {Value::address(*parse_address(dep_.app_id))}, "(bool)");
  ASSERT_TRUE(reg.ok());
  EXPECT_TRUE((*reg)[0].boolean);
}

namespace {

std::string run_capture(const std::string& cmd, int* rc) {
  std::string out;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) return out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  *rc = ::pclose(p);
  return out;
}

}  // namespace

// The shipped binary: deploy prints addresses, serve answers GET / and /bootAuth/*, admin subcommands work.
TEST(ChainAuthBinary, DeployServeAdmin) {
  ethtest::Ganache chain;
  ASSERT_EQ(chain.start(), "");
  const std::string bin = std::string(DSTACK_BIN_DIR) + "/dstack-auth-eth";
  const std::string compose = to_hex(crypto::sha256(as_view("compose")));
  int rc = -1;
  std::string out = run_capture(bin + " deploy --rpc-url " + chain.url() + " --contracts-dir " + DSTACK_CONTRACTS_DIR +
                                    " --compose-hash 0x" + compose + " --app-allow-any-device --os-image 0x0a" +
                                    " --kms-mr 4b --kms-device d2 --gateway-app-id gw 2>/dev/null",
                                &rc);
  ASSERT_EQ(rc, 0) << out;
  json dep = json::parse(out, nullptr, false);
  ASSERT_TRUE(dep.is_object()) << out;
  const std::string kms = dep["kmsContractAddr"], app = dep["appId"], impl = dep["appImplementation"];
  EXPECT_EQ(dep["chainId"], 1337);

  const int port = ethtest::free_port();
  pid_t pid = ::fork();
  if (pid == 0) {
    ::setenv("ETH_RPC_URL", chain.url().c_str(), 1);
    ::setenv("KMS_CONTRACT_ADDR", kms.c_str(), 1);
    ::setenv("HOST", "127.0.0.1", 1);
    ::setenv("PORT", std::to_string(port).c_str(), 1);
    ::execl(bin.c_str(), bin.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  struct Killer {
    pid_t pid;
    ~Killer() {
      ::kill(pid, SIGTERM);
      ::waitpid(pid, nullptr, 0);
    }
  } killer{pid};
  const std::string base = "http://127.0.0.1:" + std::to_string(port);
  rpc::ClientOptions co;
  co.timeout = std::chrono::milliseconds(2000);
  json info;
  for (int i = 0; i < 100; ++i) {
    auto r = rpc::http_request("GET", base + "/", "", co);
    if (r.ok() && r->status == 200) {
      info = json::parse(r->body);
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_TRUE(info.is_object()) << "GET / never answered 200";
  EXPECT_EQ(info["status"], "ok");
  EXPECT_EQ(info["kmsContractAddr"], kms);
  EXPECT_EQ(info["chainId"], 1337);
  EXPECT_EQ(info["gatewayAppId"], "gw");
  EXPECT_EQ(info["appImplementation"], impl);
  EXPECT_EQ(info["appAuthImplementation"], impl);
  EXPECT_EQ(info["ethRpcUrl"], chain.url());

  json body = {{"teeVariant", "dstack-tdx"}, {"mrAggregated", std::string(64, '1')}, {"osImageHash", "0x0a"},
               {"mrSystem", std::string(64, '2')}, {"appId", app.substr(2)}, {"composeHash", compose},
               {"instanceId", ""}, {"deviceId", std::string(64, '3')}, {"keyProviderInfo", ""},
               {"tcbStatus", "UpToDate"}, {"advisoryIds", json::array()}};
  auto r = rpc::http_request("POST", base + "/bootAuth/app", body.dump(), co);
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(json::parse(r->body), (json{{"isAllowed", true}, {"reason", ""}, {"gatewayAppId", "gw"}}));

  // Wrong compose hash, then allowed through the admin subcommand, then allowed on the next call.
  body["composeHash"] = std::string(64, 'e');
  r = rpc::http_request("POST", base + "/bootAuth/app", body.dump(), co);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(json::parse(r->body)["reason"], "Compose hash not allowed");
  out = run_capture(bin + " allow-compose-hash --rpc-url " + chain.url() + " --app " + app + " 0x" +
                        std::string(64, 'e') + " 2>&1",
                    &rc);
  ASSERT_EQ(rc, 0) << out;
  r = rpc::http_request("POST", base + "/bootAuth/app", body.dump(), co);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(json::parse(r->body)["isAllowed"], true) << r->body;

  // KMS endpoint.
  json kbody = body;
  kbody["mrAggregated"] = "4b";
  kbody["deviceId"] = "0xd2";
  r = rpc::http_request("POST", base + "/bootAuth/kms", kbody.dump(), co);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(json::parse(r->body)["isAllowed"], true) << r->body;  // both sides left-pad "4b" to 32 bytes
  kbody["mrAggregated"] = "0x4c";
  r = rpc::http_request("POST", base + "/bootAuth/kms", kbody.dump(), co);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(json::parse(r->body),
            (json{{"isAllowed", false}, {"reason", "Aggregated MR not allowed"}, {"gatewayAppId", "gw"}}));

  // Schema failures are 400.
  for (const std::string& bad : {std::string("not json"), std::string("{}"), json{{"appId", 5}}.dump()}) {
    r = rpc::http_request("POST", base + "/bootAuth/app", bad, co);
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r->status, 400) << bad;
  }
}
