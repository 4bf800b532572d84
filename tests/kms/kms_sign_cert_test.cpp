// SignCert (spec §2.3, §5.6): CSR codec, signature/confirm/attestation checks and the issued chain.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <ctime>
#include <filesystem>

#include "attest/attestation.h"
#include "attest/eventlog.h"
#include "attest/measurement.h"
#include "attest/sim/platform.h"
#include "auth/auth.h"
#include "base/fs.h"
#include "crypto/p256.h"
#include "crypto/x509.h"
#include "kms/bootstrap.h"
#include "kms/csr.h"
#include "kms/service.h"
#include "ratls/ratls.h"

using namespace dstack;
using namespace dstack::kms;

namespace {

const Bytes kAppId(20, 0xaa);

std::string make_tmp() {
  char tmpl[] = "/tmp/kms-signcert-XXXXXX";
  return mkdtemp(tmpl);
}

struct SignFixture {
  std::string dir = make_tmp();
  attest::sim::SimPlatform platform = attest::sim::SimPlatform::create(dir + "/sim").value();
  std::vector<attest::RuntimeEvent> events{
      {"system-preparing", {}, 1},  {"app-id", kAppId, 1},          {"compose-hash", Bytes(32, 0xbb), 1},
      {"instance-id", Bytes(20, 0xcc), 1}, {"boot-mr-done", {}, 1},
      {"key-provider", to_bytes(R"({"name":"kms","id":"01"})"), 1}, {"system-ready", {}, 1},
  };
  RootKeys keys = generate_root_keys().value();
  std::unique_ptr<KmsService> svc;

  explicit SignFixture(std::shared_ptr<auth::AuthBackend> auth = std::make_shared<auth::DevAuth>("gw")) {
    KmsConfig cfg;
    cfg.enforce_self_authorization = false;
    cfg.insecure_allow_external_trust_anchors = true;
    cfg.collateral_file = dir + "/collateral.json";
    cfg.root_ca["tdx"] = dir + "/root.pem";
    EXPECT_TRUE(write_file_atomic(cfg.collateral_file, platform.tdx_collateral_json(std::time(nullptr)).value()).ok());
    EXPECT_TRUE(write_file_atomic(dir + "/root.pem", platform.root_ca_pem()).ok());
    svc = std::make_unique<KmsService>(
        KmsContext{cfg, keys, std::nullopt, std::move(auth), nullptr, make_ratls_verifier(cfg).value()});
  }
  ~SignFixture() { std::filesystem::remove_all(dir); }

  Bytes quote(ByteView report_data) {
    attest::sim::TdQuoteInput in;
    in.report_data.assign(report_data.begin(), report_data.end());
    in.mr_td = Bytes(48, 0x11);
    in.rtmr3 = attest::replay_runtime_events(events);
    return platform.quote_tdx(in).value();
  }
  std::string event_log_json() {
    std::vector<attest::TdxEvent> log;
    for (const auto& e : events) log.push_back(e.to_tdx_event());
    return attest::event_log_to_json(log);
  }

  ratls::VerifyOptions verify_opts() {
    ratls::VerifyOptions vo;
    vo.collateral = ratls::CollateralSource::from_json(
        nlohmann::json::parse(platform.tdx_collateral_json(std::time(nullptr)).value()));
    vo.trust.root_ca_pem = platform.root_ca_pem();
    return vo;
  }

  Bytes attestation(ByteView report_data) {
    attest::VersionedAttestation va;
    va.quote = quote(report_data);
    va.runtime_events = events;
    va.report_data.assign(report_data.begin(), report_data.end());
    va.config = R"({"os_image_hash":")" + std::string(64, 'e') + R"("})";
    return va.to_bytes().value();
  }

  CertSigningRequest csr_for(const crypto::P256Key& key, ByteView bound_spki) {
    CertSigningRequest csr;
    csr.version = 2;
    csr.pubkey = key.spki_der();
    csr.config.org_name = "Example";
    csr.config.subject = "app.example.com";
    csr.config.subject_alt_names = {"app.example.com", "10.1.2.3"};
    csr.config.usage_server_auth = true;
    csr.config.ext_quote = true;
    csr.config.not_before = 1700000000;
    csr.config.not_after = 2000000000;
    csr.attestation = attestation(ratls::ratls_report_data(bound_spki));
    return csr;
  }

  Result<rpc::Json> sign(const CertSigningRequest& csr, const crypto::P256Key& signer) {
    Bytes enc = encode_csr(csr);
    Bytes sig = signer.sign_der(enc).value();
    return svc->sign_cert(rpc::Json{{"api_version", csr.version},
                                    {"csr", to_hex(enc)},
                                    {"signature", to_hex(sig)},
                                    {"vm_config", ""}});
  }
};

}  // namespace

TEST(KmsCsr, V2RoundTripAndTrailingAttestation) {
  CertSigningRequest csr;
  csr.pubkey = Bytes{1, 2, 3};
  csr.config.subject = "s";
  csr.config.subject_alt_names = {"a", "b"};
  csr.config.usage_client_auth = true;
  csr.config.not_after = 42;
  csr.attestation = Bytes{9, 8, 7, 6};
  Bytes enc = encode_csr(csr);
  // confirm: compact(17) = 0x44, then the ASCII word.
  ASSERT_GT(enc.size(), 18u);
  EXPECT_EQ(enc[0], 17 << 2);
  EXPECT_EQ(to_string(Bytes(enc.begin() + 1, enc.begin() + 18)), "please sign cert:");
  EXPECT_EQ(Bytes(enc.end() - 4, enc.end()), (Bytes{9, 8, 7, 6}));  // raw, no length prefix
  auto back = decode_csr(enc, 2).value();
  EXPECT_EQ(back.pubkey, csr.pubkey);
  EXPECT_EQ(back.config.subject_alt_names, csr.config.subject_alt_names);
  EXPECT_TRUE(back.config.usage_client_auth);
  EXPECT_FALSE(back.config.org_name.has_value());
  EXPECT_EQ(back.config.not_after, std::optional<uint64_t>(42));
  EXPECT_EQ(back.attestation, csr.attestation);
  EXPECT_FALSE(decode_csr(enc, 3).ok());
}

TEST(KmsCsr, V1RoundTripRejectsTrailingBytes) {
  CertSigningRequest csr;
  csr.version = 1;
  csr.pubkey = Bytes{4, 5};
  csr.config.org_name = "O";
  csr.config.subject = "v1";
  csr.quote = Bytes(10, 0x33);
  csr.event_log = to_bytes("[]");
  Bytes enc = encode_csr(csr);
  auto back = decode_csr(enc, 1).value();
  EXPECT_EQ(back.config.org_name, std::optional<std::string>("O"));
  EXPECT_EQ(back.quote, csr.quote);
  EXPECT_EQ(to_string(back.event_log), "[]");
  enc.push_back(0);
  EXPECT_FALSE(decode_csr(enc, 1).ok());
  Bytes truncated(enc.begin(), enc.begin() + 10);
  EXPECT_FALSE(decode_csr(truncated, 1).ok());
}

TEST(KmsSignCert, IssuesChainToRootCa) {
  SignFixture f;
  auto key = crypto::P256Key::generate().value();
  auto r = f.sign(f.csr_for(key, key.spki_der()), key);
  ASSERT_TRUE(r.ok()) << r.error().message;
  const auto& chain = (*r)["certificate_chain"];
  ASSERT_EQ(chain.size(), 3u);
  auto leaf = crypto::Certificate::from_pem(chain[0].get<std::string>()).value();
  auto app_ca = crypto::Certificate::from_pem(chain[1].get<std::string>()).value();
  auto root = crypto::Certificate::from_pem(chain[2].get<std::string>()).value();
  EXPECT_EQ(root.to_der(), f.keys.ca_cert.to_der());
  auto chk = crypto::verify_chain(leaf, {app_ca}, f.keys.ca_cert);
  EXPECT_TRUE(chk.ok()) << chk.error().message;

  // App CA: derived key, profile of spec §3.2.
  EXPECT_EQ(app_ca.spki_der(), derive_app_ca_key(f.keys.ca_key, kAppId).value().spki_der());
  EXPECT_EQ(app_ca.subject_cn(), "Dstack App CA");
  EXPECT_EQ(app_ca.subject_org(), "Dstack");
  EXPECT_TRUE(app_ca.is_ca());
  EXPECT_EQ(app_ca.path_len(), std::optional<int>(0));
  EXPECT_EQ(app_ca.extension(kOidAppId), std::optional<Bytes>(kAppId));
  EXPECT_EQ(app_ca.extension(kOidSpecialUsage), std::optional<Bytes>(to_bytes("app:ca")));

  // Leaf: CSR key and config, app id from the attestation.
  EXPECT_EQ(leaf.spki_der(), key.spki_der());
  EXPECT_EQ(leaf.subject_cn(), "app.example.com");
  EXPECT_EQ(leaf.subject_org(), "Example");
  EXPECT_FALSE(leaf.is_ca());
  EXPECT_EQ(leaf.dns_names(), std::vector<std::string>{"app.example.com"});
  EXPECT_EQ(leaf.not_before(), 1700000000);
  EXPECT_EQ(leaf.not_after(), 2000000000);
  EXPECT_EQ(leaf.extension(kOidAppId), std::optional<Bytes>(kAppId));
  EXPECT_EQ(leaf.extension(kOidSpecialUsage), std::optional<Bytes>(to_bytes("app:custom")));
  ASSERT_TRUE(leaf.extension(kOidAttestation).has_value());
  auto peer = ratls::verify_peer_attestation(leaf.to_der(), f.verify_opts());
  ASSERT_TRUE(peer.ok()) << peer.error().message;
  EXPECT_EQ(peer->boot_info.app_id, kAppId);
}

TEST(KmsSignCert, NoQuoteExtensionUnlessAsked) {
  SignFixture f;
  auto key = crypto::P256Key::generate().value();
  auto csr = f.csr_for(key, key.spki_der());
  csr.config.ext_quote = false;
  csr.config.not_before.reset();
  csr.config.not_after.reset();
  auto r = f.sign(csr, key);
  ASSERT_TRUE(r.ok()) << r.error().message;
  auto leaf = crypto::Certificate::from_pem((*r)["certificate_chain"][0].get<std::string>()).value();
  EXPECT_FALSE(leaf.extension(kOidAttestation).has_value());
  EXPECT_EQ(leaf.extension(kOidAppId), std::optional<Bytes>(kAppId));
}

TEST(KmsSignCert, RefusesBadSignature) {
  SignFixture f;
  auto key = crypto::P256Key::generate().value();
  auto other = crypto::P256Key::generate().value();
  auto r = f.sign(f.csr_for(key, key.spki_der()), other);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("Invalid CSR signature"), std::string::npos) << r.error().message;
  // A signature over a modified CSR does not pass either.
  auto csr = f.csr_for(key, key.spki_der());
  Bytes enc = encode_csr(csr);
  Bytes sig = key.sign_der(enc).value();
  csr.config.subject = "evil.example.com";
  auto r2 = f.svc->sign_cert(
      rpc::Json{{"api_version", 2}, {"csr", to_hex(encode_csr(csr))}, {"signature", to_hex(sig)}});
  ASSERT_FALSE(r2.ok());
  EXPECT_NE(r2.error().message.find("Invalid CSR signature"), std::string::npos) << r2.error().message;
}

TEST(KmsSignCert, RefusesWrongConfirm) {
  SignFixture f;
  auto key = crypto::P256Key::generate().value();
  auto csr = f.csr_for(key, key.spki_der());
  csr.confirm = "please sign this:";
  auto r = f.sign(csr, key);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("confirm word"), std::string::npos) << r.error().message;
}

TEST(KmsSignCert, RefusesAttestationBoundToAnotherKey) {
  SignFixture f;
  auto key = crypto::P256Key::generate().value();
  auto other = crypto::P256Key::generate().value();
  auto r = f.sign(f.csr_for(key, other.spki_der()), key);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("CSR attestation verification failed"), std::string::npos) << r.error().message;
  EXPECT_NE(r.error().message.find("report_data"), std::string::npos) << r.error().message;
}

TEST(KmsSignCert, RefusesUnsupportedVersionAndDeniedBoot) {
  SignFixture f;
  auto key = crypto::P256Key::generate().value();
  auto csr = f.csr_for(key, key.spki_der());
  Bytes enc = encode_csr(csr);
  auto r = f.svc->sign_cert(rpc::Json{
      {"api_version", 3}, {"csr", to_hex(enc)}, {"signature", to_hex(key.sign_der(enc).value())}});
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("Unsupported API version"), std::string::npos) << r.error().message;

  // Auth policy without this app: the webhook decision is enforced.
  std::string policy = f.dir + "/auth.json";
  ASSERT_TRUE(write_file_atomic(policy, R"({"osImages":[],"gatewayAppId":"gw","kms":{"mrAggregated":[]},"apps":{}})")
                  .ok());
  SignFixture g(std::make_shared<auth::FilePolicyAuth>(policy));
  auto key2 = crypto::P256Key::generate().value();
  auto d = g.sign(g.csr_for(key2, key2.spki_der()), key2);
  ASSERT_FALSE(d.ok());
  EXPECT_NE(d.error().message.find("Boot denied"), std::string::npos) << d.error().message;
}

TEST(KmsSignCert, V1CsrWithLegacyQuoteAndEventLog) {
  SignFixture f;
  auto key = crypto::P256Key::generate().value();
  CertSigningRequest csr;
  csr.version = 1;
  csr.pubkey = key.spki_der();
  csr.config.subject = "legacy.example.com";
  csr.config.usage_client_auth = true;
  csr.config.ext_quote = true;
  csr.quote = f.quote(ratls::ratls_report_data(key.spki_der()));
  csr.event_log = to_bytes(f.event_log_json());
  auto r = f.sign(csr, key);
  ASSERT_TRUE(r.ok()) << r.error().message;
  auto leaf = crypto::Certificate::from_pem((*r)["certificate_chain"][0].get<std::string>()).value();
  auto app_ca = crypto::Certificate::from_pem((*r)["certificate_chain"][1].get<std::string>()).value();
  EXPECT_TRUE(crypto::verify_chain(leaf, {app_ca}, f.keys.ca_cert).ok());
  EXPECT_EQ(leaf.extension(kOidAppId), std::optional<Bytes>(kAppId));
  // ext_quote on V1 => legacy extensions .1 + .2, which verify as an RA-TLS certificate.
  EXPECT_EQ(leaf.extension(ratls::kOidTdxQuote), std::optional<Bytes>(csr.quote));
  auto peer = ratls::verify_peer_attestation(leaf.to_der(), f.verify_opts());
  ASSERT_TRUE(peer.ok()) << peer.error().message;
  EXPECT_EQ(peer->boot_info.app_id, kAppId);

  // A V1 quote bound to another key is refused.
  auto other = crypto::P256Key::generate().value();
  csr.quote = f.quote(ratls::ratls_report_data(other.spki_der()));
  auto bad = f.sign(csr, key);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message.find("report_data"), std::string::npos) << bad.error().message;
}
