#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <fstream>
#include <thread>

#include "auth/auth.h"
#include "rpc/http.h"

using namespace dstack;
using namespace dstack::auth;
using nlohmann::json;
using namespace std::chrono;

static BootInfo sample_boot() {
  BootInfo b;
  b.mr_aggregated = Bytes(32, 0x11);
  b.os_image_hash = Bytes(32, 0x22);
  b.mr_system = Bytes(32, 0x33);
  b.app_id = Bytes(20, 0x44);
  b.compose_hash = Bytes(32, 0x55);
  b.instance_id = Bytes(20, 0x66);
  b.device_id = Bytes(32, 0x77);
  b.key_provider_info = to_bytes(R"({"name":"kms","id":"ab"})");
  b.tcb_status = "UpToDate";
  return b;
}

TEST(Auth, BootInfoWireFormat) {
  json j = sample_boot().to_webhook_json();
  EXPECT_EQ(j["teeVariant"], "dstack-tdx");
  EXPECT_EQ(j["appId"], std::string(40, '4'));
  EXPECT_EQ(j["keyProviderInfo"], to_hex(to_bytes(R"({"name":"kms","id":"ab"})")));
  EXPECT_EQ(j["advisoryIds"], json::array());
  for (const char* k : {"mrAggregated", "osImageHash", "mrSystem", "composeHash", "instanceId", "deviceId", "tcbStatus"})
    EXPECT_TRUE(j.contains(k)) << k;
}

static json policy() {
  return json::parse(R"({
    "osImages": ["0x2222222222222222222222222222222222222222222222222222222222222222"],
    "gatewayAppId": "gw1",
    "kms": {"mrAggregated": ["1111111111111111111111111111111111111111111111111111111111111111"], "devices": [], "allowAnyDevice": false},
    "apps": {"0x4444444444444444444444444444444444444444": {"composeHashes": ["5555555555555555555555555555555555555555555555555555555555555555"], "devices": ["7777777777777777777777777777777777777777777777777777777777777777"], "allowAnyDevice": false}}
  })");
}

TEST(Auth, FilePolicyLikeAuthSimple) {
  auto b = sample_boot();
  auto ok = evaluate_policy(policy(), b, false).value();
  EXPECT_TRUE(ok.is_allowed) << ok.reason;
  EXPECT_EQ(ok.gateway_app_id, "gw1");
  EXPECT_TRUE(evaluate_policy(policy(), b, true)->is_allowed);

  auto deny = [&](BootInfo x, bool kms) { return evaluate_policy(policy(), x, kms).value().reason; };
  { auto x = b; x.tcb_status = "OutOfDate"; EXPECT_EQ(deny(x, false), "TCB status is not allowed"); }
  { auto x = b; x.advisory_ids = {"INTEL-SA-00837"}; EXPECT_EQ(deny(x, false), "advisory ID is not allowed"); }
  { auto x = b; x.os_image_hash = Bytes(32, 0); EXPECT_EQ(deny(x, true), "OS image is not allowed"); }
  { auto x = b; x.mr_aggregated = Bytes(32, 0); EXPECT_EQ(deny(x, true), "aggregated MR not allowed"); }
  { auto x = b; x.app_id = Bytes(20, 0); EXPECT_EQ(deny(x, false), "app not registered"); }
  { auto x = b; x.compose_hash = Bytes(32, 0); EXPECT_EQ(deny(x, false), "compose hash not allowed"); }
  { auto x = b; x.device_id = Bytes(32, 0); EXPECT_EQ(deny(x, false), "app is not allowed to boot on this device"); }
  auto p = policy();
  p["kms"]["devices"] = json::array({std::string(64, '9')});
  { auto r = evaluate_policy(p, b, true).value(); EXPECT_EQ(r.reason, "KMS is not allowed to boot on this device"); }
  p["kms"]["allowAnyDevice"] = true;
  EXPECT_TRUE(evaluate_policy(p, b, true)->is_allowed);
  p["allowedTcbStatuses"] = json::array({"OutOfDate"});
  EXPECT_FALSE(evaluate_policy(p, b, true)->is_allowed);
}

TEST(Auth, FilePolicyBackendRereadsFile) {
  char t[] = "/tmp/authpolXXXXXX";
  std::string path = std::string(mkdtemp(t)) + "/auth-config.json";
  std::ofstream(path) << policy().dump();
  FilePolicyAuth a(path);
  EXPECT_TRUE(a.auth_app(sample_boot())->is_allowed);
  auto p = policy();
  p["apps"] = json::object();
  std::ofstream(path, std::ios::trunc) << p.dump();
  EXPECT_EQ(a.auth_app(sample_boot())->reason, "app not registered");
  EXPECT_EQ(a.info().info->gateway_app_id, "gw1");
  std::ofstream(path, std::ios::trunc) << "{broken";
  EXPECT_FALSE(a.auth_app(sample_boot()).ok());
}

TEST(Auth, DevAllowsEverything) {
  DevAuth d("any");
  EXPECT_TRUE(d.is_dev());
  EXPECT_TRUE(d.auth_app(BootInfo{})->is_allowed);
  EXPECT_EQ(d.auth_kms(BootInfo{})->gateway_app_id, "any");
  EXPECT_EQ(d.info().info->gateway_app_id, "any");
}

// A fake webhook whose behaviour the test switches at runtime.
struct FakeWebhook {
  std::atomic<int> mode{0};  // 0 ok, 1 sleep, 2 HTTP 429, 3 malformed
  std::atomic<int> sleep_ms{30000};
  std::atomic<int> app_calls{0};
  json last_body;
  std::mutex mu;
  rpc::HttpServer server{[] { rpc::ServerOptions o; o.threads = 4; return o; }()};
  uint16_t port = 0;
  FakeWebhook() {
    auto slow = [this]() {
      int ms = sleep_ms;
      for (int i = 0; i < ms / 10 && mode == 1; ++i) std::this_thread::sleep_for(milliseconds(10));
    };
    server.route("GET", "/", [this, slow](const rpc::HttpRequest&) {
      if (mode == 1) slow();
      if (mode == 2) return rpc::HttpResponse::json(429, R"({"error":"rate limited"})");
      if (mode == 3) return rpc::HttpResponse::json(200, R"({"status":"ok"})");
      return rpc::HttpResponse::json(200, json{{"status", "ok"}, {"kmsContractAddr", "0xe6c2"}, {"gatewayAppId", "gw"},
                                               {"chainId", 11155111}, {"appAuthImplementation", "0xc308"},
                                               {"appImplementation", "0xc308"}}.dump());
    });
    server.route("POST", "/bootAuth/app", [this, slow](const rpc::HttpRequest& r) {
      app_calls++;
      {
        std::lock_guard lk(mu);
        last_body = json::parse(r.body, nullptr, false);
      }
      if (mode == 1) slow();
      if (mode == 2) return rpc::HttpResponse::json(429, "{}");
      if (mode == 3) return rpc::HttpResponse::json(200, R"({"isAllowed":true})");
      return rpc::HttpResponse::json(200, R"({"isAllowed":false,"reason":"nope","gatewayAppId":"gw"})");
    });
    EXPECT_TRUE(server.listen("127.0.0.1:0").ok());
    port = server.bound_port();
    server.start();
  }
  ~FakeWebhook() {
    mode = 0;
    server.stop();
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port); }
};

TEST(Auth, WebhookInfoIsCachedAndPosts) {
  FakeWebhook fw;
  WebhookOptions o;
  o.url = fw.url() + "/";
  o.refresh_interval = milliseconds(100);
  WebhookAuth w(o);
  ASSERT_TRUE(w.wait_first_refresh(seconds(5)));
  auto s = w.info();
  ASSERT_TRUE(s.fresh) << s.last_error;
  EXPECT_EQ(s.info->chain_id, 11155111u);
  EXPECT_EQ(s.info->kms_contract_addr, "0xe6c2");
  EXPECT_EQ(s.info->app_implementation, "0xc308");
  auto d = w.auth_app(sample_boot());
  ASSERT_TRUE(d.ok()) << d.error().message;
  EXPECT_FALSE(d->is_allowed);
  EXPECT_EQ(d->reason, "nope");
  std::lock_guard lk(fw.mu);
  EXPECT_EQ(fw.last_body["appId"], std::string(40, '4'));
}

TEST(Auth, WebhookFailsClosedAndInfoNeverBlocks) {
  FakeWebhook fw;
  WebhookOptions o;
  o.url = fw.url();
  o.auth_timeout = milliseconds(500);
  o.info_timeout = milliseconds(300);
  o.refresh_interval = milliseconds(50);
  o.retry_interval = milliseconds(50);
  WebhookAuth w(o);
  ASSERT_TRUE(w.wait_first_refresh(seconds(5)));
  ASSERT_TRUE(w.info().fresh);

  fw.mode = 1;  // hang 30 s
  auto t0 = steady_clock::now();
  for (int i = 0; i < 50; ++i) {
    auto s = w.info();
    ASSERT_TRUE(s.info.has_value());  // stale but present
  }
  EXPECT_LT(duration_cast<milliseconds>(steady_clock::now() - t0).count(), 50);
  auto d = w.auth_app(sample_boot());
  auto el = duration_cast<milliseconds>(steady_clock::now() - t0).count();
  ASSERT_FALSE(d.ok());
  EXPECT_LT(el, 3000);
  EXPECT_NE(d.error().message.find("timed out"), std::string::npos) << d.error().message;
  // staleness is reported once a refresh attempt failed
  auto deadline = steady_clock::now() + seconds(5);
  while (w.info().fresh && steady_clock::now() < deadline) std::this_thread::sleep_for(milliseconds(20));
  EXPECT_FALSE(w.info().fresh);
  EXPECT_FALSE(w.info().last_error.empty());
  EXPECT_EQ(w.info().info->chain_id, 11155111u);

  fw.mode = 2;  // 429
  auto d2 = w.auth_app(sample_boot());
  ASSERT_FALSE(d2.ok());
  EXPECT_NE(d2.error().message.find("429"), std::string::npos);
  fw.mode = 3;  // malformed
  auto d3 = w.auth_app(sample_boot());
  ASSERT_FALSE(d3.ok());
  EXPECT_NE(d3.error().message.find("malformed"), std::string::npos);
  fw.mode = 0;
  deadline = steady_clock::now() + seconds(5);
  while (!w.info().fresh && steady_clock::now() < deadline) std::this_thread::sleep_for(milliseconds(20));
  EXPECT_TRUE(w.info().fresh);
}

TEST(Auth, WebhookUnreachableFailsClosed) {
  WebhookOptions o;
  o.url = "http://127.0.0.1:1";
  o.auth_timeout = milliseconds(500);
  WebhookAuth w(o);
  EXPECT_FALSE(w.auth_kms(sample_boot()).ok());
  ASSERT_TRUE(w.wait_first_refresh(seconds(5)));
  EXPECT_FALSE(w.info().fresh);
  EXPECT_FALSE(w.info().info.has_value());
}

TEST(Auth, ParseAuthInfoRequiresFields) {
  EXPECT_FALSE(parse_auth_info(json{{"status", "ok"}}).ok());
  auto r = parse_auth_info(json{{"status", "ok"}, {"kmsContractAddr", "a"}, {"gatewayAppId", ""}, {"chainId", "5"},
                                {"appImplementation", "x"}});
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->chain_id, 5u);
}
