#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <map>

#include "kms/config.h"

using namespace dstack::kms;

static std::function<const char*(const char*)> env_of(std::map<std::string, std::string> m) {
  auto store = std::make_shared<std::map<std::string, std::string>>(std::move(m));
  return [store](const char* k) -> const char* {
    auto it = store->find(k);
    return it == store->end() ? nullptr : it->second.c_str();
  };
}

static std::string write_tmp(const std::string& text) {
  char tmpl[] = "/tmp/kmscfgXXXXXX";
  std::string dir = mkdtemp(tmpl);
  std::string p = dir + "/kms.toml";
  std::ofstream(p) << text;
  return p;
}

TEST(KmsConfig, DefaultsMakeALocalRunWork) {
  auto c = load_config(std::nullopt, env_of({}), false);
  ASSERT_TRUE(c.ok()) << c.error().message;
  EXPECT_EQ(c->rpc_port, 9100);
  EXPECT_EQ(c->rpc_address, "0.0.0.0");
  EXPECT_EQ(c->cert_dir, "/etc/kms/certs");
  EXPECT_EQ(c->rpc_tls_key, "/etc/kms/certs/rpc.key");
  EXPECT_EQ(c->rpc_mutual_ca, "/etc/kms/certs/tmp-ca.crt");
  EXPECT_EQ(c->guest_agent, "unix:/var/run/dstack.sock");
  EXPECT_TRUE(c->attest_rpc_cert);
  EXPECT_TRUE(c->onboard_enabled);
  EXPECT_EQ(c->auth_type, "webhook");
  EXPECT_TRUE(c->auto_bootstrap_domain.empty());
}

TEST(KmsConfig, EnvironmentOverrides) {
  auto c = load_config(std::nullopt, env_of({{"KMS_DOMAIN", "kms.example.com"}, {"DSTACK_AGENT_ADDRESS", "unix:/x.sock"}}),
                       false);
  ASSERT_TRUE(c.ok()) << c.error().message;
  EXPECT_EQ(c->auto_bootstrap_domain, "kms.example.com");
  EXPECT_EQ(c->guest_agent, "unix:/x.sock");
}

TEST(KmsConfig, FileKeysAndQuoteEnabledAlias) {
  auto p = write_tmp(R"(
[rpc]
address = "127.0.0.1"
port = 9201
[core]
cert_dir = "/tmp/certs-x"
guest_agent = "unix:/tmp/agent.sock"
[core.onboard]
quote_enabled = false
auto_bootstrap_domain = "kms.local"
port = 9203
[core.auth_api]
type = "dev"
[core.auth_api.webhook]
url = "http://127.0.0.1:1"
timeout = "250ms"
refresh_interval = "2m"
[core.attestation]
insecure_allow_external_trust_anchors = true
collateral_file = "/tmp/coll.json"
[core.attestation.root_ca]
tdx = "/tmp/root.pem"
)");
  auto c = load_config(p, env_of({}), false);
  ASSERT_TRUE(c.ok()) << c.error().message;
  EXPECT_EQ(c->rpc_address, "127.0.0.1");
  EXPECT_EQ(c->rpc_port, 9201);
  EXPECT_EQ(c->onboard_port, 9203);
  EXPECT_FALSE(c->attest_rpc_cert);
  EXPECT_EQ(c->auth_type, "dev");
  EXPECT_EQ(c->webhook_timeout.count(), 250);
  EXPECT_EQ(c->webhook_refresh.count(), 120000);
  EXPECT_EQ(c->rpc_tls_certs, "/tmp/certs-x/rpc.crt");
  EXPECT_EQ(c->root_ca.at("tdx"), "/tmp/root.pem");
  EXPECT_EQ(c->collateral_file, "/tmp/coll.json");
  EXPECT_EQ(c->guest_agent, "unix:/tmp/agent.sock");
  // env wins over the file
  auto c2 = load_config(p, env_of({{"KMS_DOMAIN", "other.example"}}), false);
  ASSERT_TRUE(c2.ok());
  EXPECT_EQ(c2->auto_bootstrap_domain, "other.example");
}

TEST(KmsConfig, RejectsBadValues) {
  EXPECT_FALSE(load_config(write_tmp("[core.auth_api]\ntype = \"nope\"\n"), env_of({}), false).ok());
  EXPECT_FALSE(load_config(write_tmp("[rpc]\nport = 70000\n"), env_of({}), false).ok());
  EXPECT_FALSE(load_config(write_tmp("[rpc\n"), env_of({}), false).ok());
  // external trust anchor without the explicit opt-in
  auto r = load_config(write_tmp("[core.attestation.root_ca]\ntdx = \"/x\"\n"), env_of({}), false);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("insecure_allow_external_trust_anchors"), std::string::npos);
  EXPECT_FALSE(load_config(std::string("/nonexistent/kms.toml"), env_of({}), false).ok());
  EXPECT_FALSE(load_config(std::nullopt, env_of({{"KMS_DOMAIN", "-bad-.com"}}), false).ok());
}

TEST(KmsConfig, DomainValidation) {
  EXPECT_TRUE(validate_domain("kms.yourdomain.com").ok());
  EXPECT_TRUE(validate_domain("localhost").ok());
  EXPECT_TRUE(validate_domain("a-b.c1").ok());
  EXPECT_FALSE(validate_domain("").ok());
  EXPECT_FALSE(validate_domain("a..b").ok());
  EXPECT_FALSE(validate_domain("-a.b").ok());
  EXPECT_FALSE(validate_domain("a_b.c").ok());
  EXPECT_FALSE(validate_domain(std::string(64, 'a') + ".com").ok());
  EXPECT_FALSE(validate_domain(std::string(254, 'a')).ok());
}
