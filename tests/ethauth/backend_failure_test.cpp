// Misbehaving Ethereum RPC backends (HTTP 429, 5xx, never answering): /bootAuth denies within the budget,
// GET / never waits on the chain, retries recover from transient errors.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <thread>

#include "ethauth/abi.h"
#include "ethauth/auth_service.h"
#include "ethauth/eth_rpc.h"
#include "rpc/http.h"

using namespace dstack;
using namespace dstack::ethauth;
namespace eabi = dstack::ethauth::abi;
using nlohmann::json;
using std::chrono::milliseconds;

namespace {

rpc::ServerOptions opts4() {
  rpc::ServerOptions o;
  o.threads = 4;
  return o;
}

const char* kKms = "0x5b1869D9A4C187F2EAa108f3062412ecf0526b24";

// A JSON-RPC node whose behaviour the test controls: status_code != 200 answers that HTTP status.
struct FakeNode {
  std::atomic<int> status_code{200};
  std::atomic<int> fail_first{0};  // answer 429 to the first N requests
  std::atomic<int> hits{0};
  rpc::HttpServer server{opts4()};

  FakeNode() {
    server.route_prefix("*", "/", [this](const rpc::HttpRequest& req) {
      int n = hits++;
      if (n < fail_first) return rpc::HttpResponse::json(429, R"({"error":"rate limited"})");
      if (status_code != 200) return rpc::HttpResponse::json(status_code, R"({"error":"unavailable"})");
      json r = json::parse(req.body);
      json out = {{"jsonrpc", "2.0"}, {"id", r["id"]}};
      std::string m = r["method"];
      if (m == "eth_chainId") {
        out["result"] = "0xaa36a7";
      } else if (m == "eth_call") {
        std::string data = r["params"][0]["data"];
        Bytes enc;
        if (data.rfind("0x" + to_hex(eabi::selector("gatewayAppId()")), 0) == 0) {
          enc = *eabi::encode(*eabi::parse_type_list("(string)"), {eabi::Value::string_("gw-fake")});
        } else if (data.rfind("0x" + to_hex(eabi::selector("appImplementation()")), 0) == 0) {
          enc = *eabi::encode(*eabi::parse_type_list("(address)"), {eabi::Value::address(Bytes(20, 0xc3))});
        } else {
          enc = *eabi::encode(*eabi::parse_type_list("(bool,string)"),
                             {eabi::Value::boolean_(true), eabi::Value::string_("")});
        }
        out["result"] = to_0x(enc);
      } else {
        out["error"] = {{"code", -32601}, {"message", "method not found"}};
      }
      return rpc::HttpResponse::json(200, out.dump());
    });
    EXPECT_TRUE(server.listen("127.0.0.1:0").ok());
    server.start();
  }
  ~FakeNode() { server.stop(); }
  std::string url() { return "http://127.0.0.1:" + std::to_string(server.bound_port()) + "/"; }
};

// Accepts TCP connections (kernel backlog) but never reads or answers.
struct SilentNode {
  int fd = -1;
  int port = 0;
  SilentNode() {
    fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(a);
    EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
    EXPECT_EQ(::listen(fd, 64), 0);
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
    port = ntohs(a.sin_port);
  }
  ~SilentNode() { ::close(fd); }
  std::string url() { return "http://127.0.0.1:" + std::to_string(port); }
};

BootInfo some_boot() {
  BootInfo b;
  b.app_id = Bytes(20, 1);
  b.compose_hash = b.device_id = b.mr_aggregated = b.mr_system = b.os_image_hash = Bytes(32, 2);
  b.instance_id = Bytes(20, 0);
  b.tcb_status = "UpToDate";
  return b;
}

std::unique_ptr<AuthEthService> make_service(const std::string& url, AuthEthConfig cfg = {}) {
  cfg.eth_rpc_url = url;
  cfg.kms_contract_addr = kKms;
  auto s = AuthEthService::create(cfg);
  EXPECT_TRUE(s.ok());
  return std::move(*s);
}

long ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration_cast<milliseconds>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

TEST(EthBackendFailure, RateLimitedDeniesWithinDefaultBudget) {
  FakeNode node;
  node.status_code = 429;
  auto svc = make_service(node.url());
  ASSERT_LE(svc->config().budget.count(), 5000) << "default budget must be <= 5 s";
  auto t0 = std::chrono::steady_clock::now();
  AuthDecision d = svc->boot_auth(false, some_boot());
  long el = ms_since(t0);
  EXPECT_FALSE(d.is_allowed);
  EXPECT_EQ(d.reason, "authorization backend unavailable");
  EXPECT_EQ(d.gateway_app_id, "");
  EXPECT_LE(el, svc->config().budget.count() + 300) << "deny must come within the budget (default <= 5 s)";
  EXPECT_GE(node.hits.load(), 3) << "429 must be retried with backoff";
  EXPECT_LE(node.hits.load(), 10) << "retries must back off, not spin";
}

TEST(EthBackendFailure, ServerErrorsDenyWithinConfiguredBudget) {
  FakeNode node;
  node.status_code = 503;
  AuthEthConfig cfg;
  cfg.budget = milliseconds(800);
  auto svc = make_service(node.url(), cfg);
  auto t0 = std::chrono::steady_clock::now();
  AuthDecision d = svc->boot_auth(true, some_boot());
  EXPECT_FALSE(d.is_allowed);
  EXPECT_EQ(d.reason, kBackendUnavailable);
  EXPECT_LE(ms_since(t0), 1100);
  EXPECT_GE(node.hits.load(), 2);
}

TEST(EthBackendFailure, SilentNodeDeniesWithinBudgetOverHttp) {
  SilentNode silent;
  auto svc = make_service(silent.url());
  rpc::HttpServer server(opts4());
  svc->register_routes(server);
  ASSERT_TRUE(server.listen("127.0.0.1:0").ok());
  server.start();
  svc->start_refresher();  // stuck on the silent node in the background
  const std::string base = "http://127.0.0.1:" + std::to_string(server.bound_port());
  rpc::ClientOptions co;
  co.timeout = milliseconds(10000);

  json body = {{"mrAggregated", "01"}, {"osImageHash", "02"}, {"appId", "03"}, {"composeHash", "04"},
               {"instanceId", ""},     {"deviceId", "05"},    {"tcbStatus", "UpToDate"}};
  auto t0 = std::chrono::steady_clock::now();
  std::thread boot([&] {
    auto r = rpc::http_request("POST", base + "/bootAuth/app", body.dump(), co);
    ASSERT_TRUE(r.ok()) << r.error().message;
    EXPECT_EQ(r->status, 200);
    EXPECT_EQ(json::parse(r->body),
              (json{{"isAllowed", false}, {"reason", "authorization backend unavailable"}, {"gatewayAppId", ""}}));
  });
  // GET / is answered from the (empty) cache immediately, even while the backend hangs.
  std::this_thread::sleep_for(milliseconds(200));
  // Median of 5 (robust to scheduling hiccups on a loaded machine).
  std::vector<long> info_ms;
  for (int i = 0; i < 5; ++i) {
    auto t1 = std::chrono::steady_clock::now();
    auto info = rpc::http_request("GET", base + "/", "", co);
    info_ms.push_back(ms_since(t1));
    ASSERT_TRUE(info.ok()) << info.error().message;
    EXPECT_EQ(info->status, 503);
    EXPECT_EQ(json::parse(info->body)["status"], "unavailable");
  }
  std::sort(info_ms.begin(), info_ms.end());
  EXPECT_LT(info_ms[2], 50) << "GET / must not wait on the backend";
  boot.join();
  long el = ms_since(t0);
  const long budget = svc->config().budget.count();
  EXPECT_LE(el, budget + 500);
  EXPECT_GE(el, budget - 1000) << "the silent node should consume most of the budget before the deny";
  svc->stop_refresher();
  server.stop();
}

TEST(EthBackendFailure, InfoCacheSurvivesBackendOutage) {
  FakeNode node;
  AuthEthConfig cfg;
  cfg.info_ttl = std::chrono::seconds(1);
  cfg.info_retry = milliseconds(100);
  cfg.budget = milliseconds(500);
  auto svc = make_service(node.url(), cfg);
  svc->start_refresher();
  rpc::HttpResponse r;
  for (int i = 0; i < 50; ++i) {
    r = svc->handle_info();
    if (r.status == 200) break;
    std::this_thread::sleep_for(milliseconds(50));
  }
  ASSERT_EQ(r.status, 200) << r.body;
  json j = json::parse(r.body);
  EXPECT_EQ(j["chainId"], 11155111);
  EXPECT_EQ(j["gatewayAppId"], "gw-fake");
  EXPECT_EQ(j["appImplementation"], to_checksum_address(Bytes(20, 0xc3)));
  EXPECT_EQ(j["kmsContractAddr"], kKms);
  EXPECT_EQ(j["ethRpcUrl"], node.url().substr(0, node.url().size() - 1));

  node.status_code = 429;
  int hits_before = node.hits;
  std::this_thread::sleep_for(milliseconds(1600));
  EXPECT_GT(node.hits.load(), hits_before) << "the refresher should have tried again";
  auto t0 = std::chrono::steady_clock::now();
  r = svc->handle_info();
  EXPECT_LT(ms_since(t0), 50);
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(json::parse(r.body)["gatewayAppId"], "gw-fake");
  svc->stop_refresher();
}

TEST(EthBackendFailure, TransientRateLimitIsRetried) {
  FakeNode node;
  node.fail_first = 2;
  EthRpc rpc(node.url());
  auto t0 = std::chrono::steady_clock::now();
  auto id = rpc.chain_id();
  ASSERT_TRUE(id.ok()) << id.error().message;
  EXPECT_EQ(*id, 11155111u);
  EXPECT_EQ(node.hits.load(), 3);
  EXPECT_GE(ms_since(t0), 100 + 200 - 20) << "exponential backoff between retries";

  // JSON-RPC errors are not retried.
  int before = node.hits;
  auto bad = rpc.call("eth_nope", json::array());
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message.find("method not found"), std::string::npos);
  EXPECT_EQ(node.hits.load(), before + 1);
}
