#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "kms/bootstrap.h"
#include "kms/service.h"

using namespace dstack;
using namespace dstack::kms;
using rpc::Json;
using namespace std::chrono;

namespace {

class FakeVerifier : public Verifier {
 public:
  auth::BootInfo boot;
  bool fail = false;
  int calls = 0;
  Result<auth::BootInfo> verify_cert(ByteView, bool) override {
    calls++;
    if (fail) return make_error("quote verification failed");
    return boot;
  }
  Result<auth::BootInfo> verify_attestation(ByteView, ByteView) override {
    calls++;
    if (fail) return make_error("quote verification failed");
    return boot;
  }
};

class DenyAuth : public auth::DevAuth {
 public:
  DenyAuth() : DevAuth("") {}
  bool is_dev() const override { return false; }
  std::string type() const override { return "deny"; }
  Result<auth::AuthDecision> auth_app(const auth::BootInfo&) override { return auth::AuthDecision{false, "not on list", ""}; }
};

struct Fixture {
  RootKeys keys = generate_root_keys().value();
  std::shared_ptr<FakeVerifier> verifier = std::make_shared<FakeVerifier>();
  Fixture() {
    verifier->boot.app_id = Bytes(20, 0xa1);
    verifier->boot.instance_id = Bytes(20, 0xb2);
    verifier->boot.os_image_hash = Bytes(32, 0xc3);
  }
  KmsService make(std::shared_ptr<auth::AuthBackend> a, std::optional<BootstrapInfo> bi = std::nullopt) {
    KmsConfig cfg;
    cfg.enforce_self_authorization = false;
    return KmsService(KmsContext{cfg, keys, bi, std::move(a), nullptr, verifier});
  }
  rpc::HttpRequest with_cert(const crypto::P256Key& issuer_key, const crypto::Certificate& issuer) {
    auto k = crypto::P256Key::generate().value();
    crypto::CertSpec s;
    s.common_name = "RA-TLS TEMP Cert";
    auto c = crypto::issue_certificate(s, k, issuer_key, &issuer).value();
    rpc::HttpRequest r;
    r.peer_cert_der = c.to_der();
    return r;
  }
};

}  // namespace

TEST(KmsService, GetMetaHasEverySeedField) {
  Fixture f;
  BootstrapInfo bi{f.keys.ca_key.spki_der(), f.keys.k256.public_compressed(), Bytes{1, 2, 3}};
  auto svc = f.make(std::make_shared<auth::DevAuth>("any"), bi);
  Json j = Json::parse(svc.get_meta_body());
  for (const char* k : {"ca_cert", "allow_any_upgrade", "k256_pubkey", "bootstrap_info", "is_dev", "gateway_app_id",
                        "kms_contract_address", "chain_id", "app_auth_implementation"})
    EXPECT_TRUE(j.contains(k)) << k;
  EXPECT_EQ(j["ca_cert"], f.keys.ca_cert.to_pem());
  EXPECT_EQ(j["k256_pubkey"], to_hex(f.keys.k256.public_compressed()));
  EXPECT_EQ(j["is_dev"], true);
  EXPECT_EQ(j["allow_any_upgrade"], true);
  EXPECT_EQ(j["gateway_app_id"], "any");
  EXPECT_EQ(j["bootstrap_info"]["attestation"], "010203");
  EXPECT_EQ(j["bootstrap_info"]["ca_pubkey"], to_hex(f.keys.ca_key.spki_der()));
  auto svc2 = f.make(std::make_shared<auth::DevAuth>("any"));
  EXPECT_TRUE(Json::parse(svc2.get_meta_body())["bootstrap_info"].is_null());
}

TEST(KmsService, GetMetaDoesNotWaitForAHangingWebhook) {
  rpc::HttpServer hang{[] { rpc::ServerOptions o; o.threads = 2; return o; }()};
  std::atomic<bool> release{false};
  hang.route("*", "/", [&](const rpc::HttpRequest&) {
    for (int i = 0; i < 3000 && !release; ++i) std::this_thread::sleep_for(milliseconds(10));
    return rpc::HttpResponse::json(200, "{}");
  });
  ASSERT_TRUE(hang.listen("127.0.0.1:0").ok());
  hang.start();
  auth::WebhookOptions o;
  o.url = "http://127.0.0.1:" + std::to_string(hang.bound_port());
  o.info_timeout = milliseconds(30000);
  Fixture f;
  auto svc = f.make(std::make_shared<auth::WebhookAuth>(o));
  auto t0 = steady_clock::now();
  Json j = Json::parse(svc.get_meta_body());
  EXPECT_LT(duration_cast<milliseconds>(steady_clock::now() - t0).count(), 50);
  EXPECT_TRUE(j["kms_contract_address"].is_null());
  EXPECT_EQ(j["auth_api_status"]["fresh"], false);
  EXPECT_EQ(j["is_dev"], false);
  release = true;
  hang.stop();
}

TEST(KmsService, GetAppKeyNeedsAttestedClientCert) {
  Fixture f;
  auto svc = f.make(std::make_shared<auth::DevAuth>("gw"));
  rpc::HttpRequest none;
  auto r = svc.get_app_key(Json::object(), none);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("No attestation provided"), std::string::npos);

  // Certificate from a foreign CA: refused before verification.
  auto other = crypto::P256Key::generate().value();
  auto other_ca = make_tmp_ca_cert(other).value();
  auto foreign = svc.get_app_key(Json::object(), f.with_cert(other, other_ca));
  ASSERT_FALSE(foreign.ok());
  EXPECT_EQ(f.verifier->calls, 0);

  auto good = f.with_cert(f.keys.tmp_ca_key, f.keys.tmp_ca_cert);
  auto k = svc.get_app_key(Json{{"api_version", 1}}, good);
  ASSERT_TRUE(k.ok()) << k.error().message;
  auto want = derive_app_keys(f.keys.ca_key, f.keys.k256, Bytes(20, 0xa1), Bytes(20, 0xb2)).value();
  EXPECT_EQ((*k)["disk_crypt_key"], to_hex(want.disk_crypt_key));
  EXPECT_EQ((*k)["env_crypt_key"], to_hex(want.env_crypt_key));
  EXPECT_EQ((*k)["k256_key"], to_hex(want.k256_key));
  EXPECT_EQ((*k)["k256_signature"], to_hex(want.k256_signature));
  EXPECT_EQ((*k)["gateway_app_id"], "gw");
  EXPECT_EQ((*k)["tproxy_app_id"], "gw");
  EXPECT_EQ((*k)["os_image_hash"], std::string(64, 'c').replace(0, 64, to_hex(Bytes(32, 0xc3))));
  EXPECT_EQ((*k)["ca_cert"], f.keys.ca_cert.to_pem());

  EXPECT_FALSE(svc.get_app_key(Json{{"api_version", 2}}, good).ok());
  f.verifier->fail = true;
  auto bad = svc.get_app_key(Json::object(), good);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message.find("verification failed"), std::string::npos);
  std::string m = svc.metrics_text();
  EXPECT_NE(m.find("dstack_kms_attestation_requests_total 5"), std::string::npos) << m;
  EXPECT_NE(m.find("dstack_kms_attestation_failures_total 4"), std::string::npos) << m;
}

TEST(KmsService, AuthDenialIsReported) {
  Fixture f;
  auto svc = f.make(std::make_shared<DenyAuth>());
  auto r = svc.get_app_key(Json::object(), f.with_cert(f.keys.tmp_ca_key, f.keys.tmp_ca_cert));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().message, "Boot denied: not on list");
}

TEST(KmsService, KmsKeyAndPublicMethods) {
  Fixture f;
  auto svc = f.make(std::make_shared<auth::DevAuth>("gw"));
  auto kk = svc.get_kms_key(Json::object(), f.with_cert(f.keys.tmp_ca_key, f.keys.tmp_ca_cert));
  ASSERT_TRUE(kk.ok()) << kk.error().message;
  ASSERT_EQ((*kk)["keys"].size(), 1u);
  EXPECT_EQ((*kk)["keys"][0]["k256_key"], to_hex(f.keys.k256.secret()));
  EXPECT_EQ(crypto::P256Key::from_pem((*kk)["keys"][0]["ca_key"].get<std::string>())->spki_der(),
            f.keys.ca_key.spki_der());
  EXPECT_FALSE(svc.get_kms_key(Json::object(), rpc::HttpRequest{}).ok());

  auto t = svc.get_temp_ca_cert().value();
  EXPECT_EQ(t["temp_ca_cert"], f.keys.tmp_ca_cert.to_pem());
  EXPECT_EQ(t["ca_cert"], f.keys.ca_cert.to_pem());
  EXPECT_EQ(crypto::P256Key::from_pem(t["temp_ca_key"].get<std::string>())->spki_der(), f.keys.tmp_ca_key.spki_der());

  auto e = svc.get_app_env_encrypt_pubkey(Json{{"app_id", "0x" + std::string(40, 'a')}});
  ASSERT_TRUE(e.ok()) << e.error().message;
  EXPECT_EQ((*e)["public_key"].get<std::string>().size(), 64u);
  EXPECT_EQ((*e)["signature"].get<std::string>().size(), 130u);
  EXPECT_FALSE(svc.get_app_env_encrypt_pubkey(Json{{"app_id", "abcd"}}).ok());
}
