#include <gtest/gtest.h>
#include <stdlib.h>

#include <atomic>
#include <cctype>
#include <ctime>

#include <spdlog/fmt/fmt.h>
#include <filesystem>

#include "attest/attestation.h"
#include "attest/collateral.h"
#include "rpc/http.h"
#include "attest/measurement.h"
#include "attest/sim/platform.h"
#include "crypto/hash.h"
#include "crypto/p256.h"
#include "ratls/ratls.h"

using namespace dstack;

namespace {

std::string make_tmp() {
  char tmpl[] = "/tmp/ratls-test-XXXXXX";
  return mkdtemp(tmpl);
}

struct Fixture {
  std::string dir = make_tmp();
  attest::sim::SimPlatform platform = attest::sim::SimPlatform::create(dir + "/sim").value();
  std::vector<attest::RuntimeEvent> events{
      {"system-preparing", {}, 1},
      {"app-id", Bytes(20, 0xaa), 1},
      {"compose-hash", Bytes(32, 0xbb), 1},
      {"instance-id", Bytes(20, 0xcc), 1},
      {"boot-mr-done", {}, 1},
      {"key-provider", to_bytes(R"({"name":"none","id":""})"), 1},
      {"system-ready", {}, 1},
  };
  ~Fixture() { std::filesystem::remove_all(dir); }

  Bytes attestation(ByteView report_data, std::vector<attest::RuntimeEvent> evs, bool debug = false) {
    attest::sim::TdQuoteInput in;
    in.report_data.assign(report_data.begin(), report_data.end());
    in.mr_td = Bytes(48, 0x11);
    in.rtmr0 = Bytes(48, 0x01);
    in.rtmr3 = attest::replay_runtime_events(events);  // always the fixture's events: tamper tests change evs
    if (debug) in.td_attributes = Bytes{1, 0, 0, 0, 0, 0, 0, 0};
    attest::VersionedAttestation va;
    va.quote = platform.quote_tdx(in).value();
    va.runtime_events = std::move(evs);
    va.report_data.assign(report_data.begin(), report_data.end());
    va.report_data.resize(64, 0);
    va.config = R"({"os_image_hash":")" + std::string(64, 'e') + R"("})";
    return va.to_bytes().value();
  }

  ratls::VerifyOptions opts() {
    ratls::VerifyOptions o;
    o.collateral = ratls::CollateralSource::from_json(
        nlohmann::json::parse(platform.tdx_collateral_json(std::time(nullptr)).value()));
    o.trust.root_ca_pem = platform.root_ca_pem();
    return o;
  }
};

}  // namespace

TEST(RatlsReportData, IsSha512OfTaggedSpki) {
  auto key = crypto::P256Key::generate().value();
  Bytes rd = ratls::ratls_report_data(key.spki_der());
  ASSERT_EQ(rd.size(), 64u);
  EXPECT_EQ(rd, crypto::sha512(concat({as_view("ratls-cert:"), key.spki_der()})));
}

TEST(RatlsReportData, ContentTypesAndHashes) {
  Bytes c = to_bytes("hello");
  auto r = ratls::quote_content_report_data("app-data", c, "sha256").value();
  ASSERT_EQ(r.size(), 64u);
  Bytes h = crypto::sha256(as_view("app-data:hello"));
  EXPECT_TRUE(std::equal(h.begin(), h.end(), r.begin()));
  EXPECT_EQ(Bytes(r.begin() + 32, r.end()), Bytes(32, 0));
  EXPECT_EQ(ratls::quote_content_report_data("x", c, "keccak256").value().size(), 64u);
  EXPECT_FALSE(ratls::quote_content_report_data("x", c, "md5").ok());
  EXPECT_FALSE(ratls::quote_content_report_data("x", c, "raw").ok());
  Bytes raw(64, 7);
  EXPECT_EQ(ratls::quote_content_report_data("ignored", raw, "raw").value(), raw);
}

TEST(RatlsCert, ExtensionsRoundTripAndVerify) {
  Fixture f;
  auto ca = crypto::P256Key::generate().value();
  crypto::CertSpec ca_spec;
  ca_spec.common_name = "test CA";
  ca_spec.is_ca = true;
  auto ca_cert = crypto::issue_certificate(ca_spec, ca, ca, nullptr).value();
  auto key = crypto::P256Key::generate().value();
  ratls::RaTlsCertParams p;
  p.common_name = "RA-TLS TEMP Cert";
  p.attestation = f.attestation(ratls::ratls_report_data(key.spki_der()), f.events);
  p.app_id = Bytes(20, 0xaa);
  p.special_usage = "kms:rpc";
  auto cert = ratls::issue_cert(p, key, ca, &ca_cert).value();
  EXPECT_TRUE(cert.signed_by(ca_cert));

  auto ext = ratls::read_extensions(cert.to_der()).value();
  ASSERT_TRUE(ext.attestation.has_value());
  EXPECT_EQ(*ext.app_id, Bytes(20, 0xaa));
  EXPECT_EQ(*ext.special_usage, "kms:rpc");
  // The extension holds the stripped form.
  auto va = attest::VersionedAttestation::from_bytes(*ext.attestation).value();
  EXPECT_EQ(va, attest::VersionedAttestation::from_bytes(*p.attestation).value().stripped());

  auto v = ratls::verify_peer_attestation(cert.to_der(), f.opts());
  ASSERT_TRUE(v.ok()) << v.error().message;
  EXPECT_EQ(v->tcb_status, "UpToDate");
  EXPECT_EQ(v->report_data, ratls::ratls_report_data(key.spki_der()));
  EXPECT_EQ(v->boot_info.app_id, Bytes(20, 0xaa));
  EXPECT_EQ(v->boot_info.compose_hash, Bytes(32, 0xbb));
  EXPECT_EQ(v->boot_info.instance_id, Bytes(20, 0xcc));
  EXPECT_EQ(v->boot_info.device_id, crypto::sha256(f.platform.ppid()));
  EXPECT_EQ(v->boot_info.os_image_hash, Bytes(32, 0xee));
  EXPECT_EQ(to_string(v->boot_info.key_provider_info), R"({"name":"none","id":"")" "}");
  EXPECT_EQ(v->boot_info.tee_variant, "dstack-tdx");
  auto m = attest::TdMeasurements::from_quote(v->quote).value();
  EXPECT_EQ(v->boot_info.mr_aggregated, attest::mr_aggregated(m, m.rtmr3));
  EXPECT_EQ(v->boot_info.mr_system, attest::mr_system(m, R"({"name":"none","id":""})"));

  // Boot-time MR: RTMR3 only up to boot-mr-done, no key provider info.
  auto o = f.opts();
  o.use_boottime_mr = true;
  auto vb = ratls::verify_peer_attestation(cert.to_der(), o).value();
  EXPECT_NE(vb.boot_info.mr_aggregated, v->boot_info.mr_aggregated);
  EXPECT_TRUE(vb.boot_info.key_provider_info.empty());
}

TEST(RatlsCert, IssueRejectsAttestationForAnotherKey) {
  Fixture f;
  auto key = crypto::P256Key::generate().value();
  auto other = crypto::P256Key::generate().value();
  ratls::RaTlsCertParams p;
  p.common_name = "x";
  p.attestation = f.attestation(ratls::ratls_report_data(other.spki_der()), f.events);
  auto r = ratls::issue_cert(p, key, key, nullptr);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("report_data"), std::string::npos);
}

TEST(RatlsVerify, RejectsWrongBindingTamperedEventsUntrustedRootAndNoAttestation) {
  Fixture f;
  auto key = crypto::P256Key::generate().value();
  Bytes rd = ratls::ratls_report_data(key.spki_der());
  Bytes good = f.attestation(rd, f.events);
  EXPECT_TRUE(ratls::verify_attestation(good, ByteView(rd), f.opts()).ok());

  // Report data not the expected one.
  Bytes wrong(64, 1);
  auto r1 = ratls::verify_attestation(good, ByteView(wrong), f.opts());
  ASSERT_FALSE(r1.ok());

  // Runtime events that do not replay to the quoted RTMR3.
  auto evs = f.events;
  evs[2].payload = Bytes(32, 0xde);
  auto r2 = ratls::verify_attestation(f.attestation(rd, evs), std::nullopt, f.opts());
  ASSERT_FALSE(r2.ok());
  EXPECT_NE(r2.error().message.find("RTMR3"), std::string::npos) << r2.error().message;

  // Default trust (Intel root) refuses the simulated platform.
  auto o = f.opts();
  o.trust.root_ca_pem.clear();
  EXPECT_FALSE(ratls::verify_attestation(good, std::nullopt, o).ok());

  // Debug TD refused unless allowed.
  auto r3 = ratls::verify_attestation(f.attestation(rd, f.events, true), std::nullopt, f.opts());
  ASSERT_FALSE(r3.ok());
  EXPECT_NE(r3.error().message.find("debug"), std::string::npos);

  // Certificate without attestation.
  crypto::CertSpec spec;
  spec.common_name = "plain";
  auto plain = crypto::issue_certificate(spec, key, key, nullptr).value();
  auto r4 = ratls::verify_peer_attestation(plain.to_der(), f.opts());
  ASSERT_FALSE(r4.ok());
  EXPECT_EQ(r4.error().message, "No attestation provided");
}

TEST(RatlsBootInfo, WebhookJsonRoundTrip) {
  ratls::BootInfo b;
  b.mr_aggregated = Bytes(32, 1);
  b.os_image_hash = Bytes(32, 2);
  b.mr_system = Bytes(32, 3);
  b.app_id = Bytes(20, 4);
  b.compose_hash = Bytes(32, 5);
  b.instance_id = {};
  b.device_id = Bytes(32, 6);
  b.key_provider_info = to_bytes(R"({"name":"kms","id":"ab"})");
  b.tcb_status = "UpToDate";
  b.advisory_ids = {"INTEL-SA-00837"};
  auto j = b.to_webhook_json();
  EXPECT_EQ(j["teeVariant"], "dstack-tdx");
  EXPECT_EQ(j["appId"], std::string(40, '0').replace(0, 40, "0404040404040404040404040404040404040404"));
  EXPECT_EQ(j["instanceId"], "");
  EXPECT_EQ(j["keyProviderInfo"], to_hex(b.key_provider_info));
  EXPECT_EQ(j["advisoryIds"][0], "INTEL-SA-00837");
  for (const char* k : {"teeVariant", "mrAggregated", "osImageHash", "mrSystem", "appId", "composeHash",
                        "instanceId", "deviceId", "keyProviderInfo", "tcbStatus", "advisoryIds"}) {
    EXPECT_TRUE(j.contains(k)) << k;
  }
  j["mrSystem"] = "0x" + j["mrSystem"].get<std::string>();
  auto back = ratls::BootInfo::from_webhook_json(j).value();
  EXPECT_EQ(back.mr_system, b.mr_system);
  EXPECT_EQ(back.key_provider_info, b.key_provider_info);
  EXPECT_EQ(back.advisory_ids, b.advisory_ids);
  EXPECT_EQ(back.to_webhook_json(), b.to_webhook_json());
  j["appId"] = "zz";
  EXPECT_FALSE(ratls::BootInfo::from_webhook_json(j).ok());
}

// CollateralSource::pccs against a fake PCCS on loopback that serves the simulated platform's collateral in the
// PCCS v4 wire form (bodies + URL-encoded issuer-chain headers).
TEST(RatlsCollateral, PccsFetchOnLoopback) {
  Fixture f;
  auto coll = attest::parse_collateral_json(f.platform.tdx_collateral_json(std::time(nullptr)).value()).value();
  auto enc = [](const std::string& s) {
    std::string o;
    for (unsigned char c : s) {
      if (std::isalnum(c) || c == '-' || c == '_' || c == '.') o.push_back(static_cast<char>(c));
      else o += fmt::format("%{:02X}", c);
    }
    return o;
  };
  std::atomic<int> hits{0};
  rpc::HttpServer srv;
  auto route = [&](const std::string& path, std::string body, std::string hname, std::string hval) {
    srv.route("GET", path, [&hits, body, hname, hval](const rpc::HttpRequest&) {
      ++hits;
      rpc::HttpResponse r = rpc::HttpResponse::json(200, body);
      if (!hname.empty()) r.headers.push_back({hname, hval});
      return r;
    });
  };
  route("/sgx/certification/v4/pckcrl", to_string(coll.pck_crl), "SGX-PCK-CRL-Issuer-Chain", enc(coll.pck_crl_issuer_chain));
  route("/tdx/certification/v4/tcb", R"({"tcbInfo":)" + coll.tcb_info + R"(,"signature":")" + to_hex(coll.tcb_info_signature) + "\"}",
        "TCB-Info-Issuer-Chain", enc(coll.tcb_info_issuer_chain));
  route("/tdx/certification/v4/qe/identity", R"({"enclaveIdentity":)" + coll.qe_identity + R"(,"signature":")" +
        to_hex(coll.qe_identity_signature) + "\"}", "SGX-Enclave-Identity-Issuer-Chain", enc(coll.qe_identity_issuer_chain));
  route("/sgx/certification/v4/rootcacrl", to_hex(coll.root_ca_crl), "", "");
  ASSERT_TRUE(srv.listen("127.0.0.1:0").ok());
  srv.start();
  std::string base = "http://127.0.0.1:" + std::to_string(srv.bound_port());

  Bytes rd(64, 9);
  Bytes att = f.attestation(rd, f.events);
  auto o = f.opts();
  o.collateral = ratls::CollateralSource::pccs(base, std::chrono::seconds(5));
  auto v = ratls::verify_attestation(att, ByteView(rd), o);
  ASSERT_TRUE(v.ok()) << v.error().message;
  EXPECT_EQ(v->tcb_status, "UpToDate");
  EXPECT_EQ(hits.load(), 4);
  // Unreachable PCCS: a clear error, no hang.
  srv.stop();
  o.collateral = ratls::CollateralSource::pccs(base, std::chrono::seconds(2));
  auto r = ratls::verify_attestation(att, std::nullopt, o);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("PCCS"), std::string::npos) << r.error().message;
}
