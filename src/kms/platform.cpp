#include "kms/platform.h"

#include <nlohmann/json.hpp>

#include "base/fs.h"
#include "ratls/ratls.h"
#include "rpc/http.h"

namespace dstack::kms {

namespace {

class GuestAgentAttester : public Attester {
 public:
  GuestAgentAttester(std::string address, std::chrono::milliseconds timeout) : timeout_(timeout) {
    if (address.rfind("unix:", 0) == 0) base_ = address + ":";
    else if (!address.empty() && address[0] == '/') base_ = "unix:" + address + ":";
    else {
      base_ = address;
      while (!base_.empty() && base_.back() == '/') base_.pop_back();
    }
  }
  Result<nlohmann::json> call(const std::string& method, const nlohmann::json& req) {
    rpc::ClientOptions co;
    co.timeout = timeout_;
    auto r = rpc::http_request("POST", base_ + "/" + method + "?json", req.dump(), co);
    if (!r.ok()) return r.error().wrap("guest agent " + method + " (is the agent running at " + base_ + "?)");
    auto j = nlohmann::json::parse(r->body, nullptr, false);
    if (r->status != 200) {
      std::string msg = j.is_object() && j.contains("error") ? j["error"].dump() : r->body.substr(0, 200);
      return make_error("guest agent " + method + " failed: HTTP " + std::to_string(r->status) + ": " + msg);
    }
    if (j.is_discarded()) return make_error("guest agent " + method + " returned invalid JSON");
    return j;
  }
  Result<Bytes> attest(ByteView report_data) override {
    TRY_ASSIGN(auto j, call("Attest", {{"report_data", to_hex(report_data)}}));
    if (!j.is_object() || !j.contains("attestation") || !j["attestation"].is_string())
      return make_error("guest agent Attest answer lacks 'attestation'");
    auto b = from_hex(j["attestation"].get<std::string>());
    if (!b.ok()) return b.error().wrap("guest agent Attest attestation");
    if (b->empty()) return make_error("guest agent Attest returned an empty attestation");
    return b;
  }
  Result<std::string> vm_config() override {
    TRY_ASSIGN(auto j, call("Info", nlohmann::json::object()));
    if (!j.is_object()) return make_error("guest agent Info answer is not an object");
    return j.value("vm_config", std::string());
  }

 private:
  std::string base_;
  std::chrono::milliseconds timeout_;
};

class RatlsVerifier : public Verifier {
 public:
  explicit RatlsVerifier(ratls::VerifyOptions o) : opts_(std::move(o)) {}
  Result<auth::BootInfo> verify_cert(ByteView der, bool boot_time_mr) override {
    ratls::VerifyOptions o = opts_;
    o.use_boottime_mr = boot_time_mr;
    TRY_ASSIGN(auto v, ratls::verify_peer_attestation(der, o));
    return std::move(v.boot_info);
  }
  Result<auth::BootInfo> verify_attestation(ByteView att, ByteView expected) override {
    TRY_ASSIGN(auto v, ratls::verify_attestation(att, expected, opts_));
    return std::move(v.boot_info);
  }
  Result<auth::BootInfo> verify_boot_attestation(ByteView att, ByteView expected) override {
    ratls::VerifyOptions o = opts_;
    o.use_boottime_mr = true;
    TRY_ASSIGN(auto v, ratls::verify_attestation(att, expected, o));
    return std::move(v.boot_info);
  }
  Result<auth::BootInfo> verify_legacy_boot_attestation(ByteView quote, const std::string& event_log_json,
                                                        ByteView expected) override {
    ratls::VerifyOptions o = opts_;
    o.use_boottime_mr = true;
    std::optional<std::string> log;
    if (!event_log_json.empty()) log = event_log_json;
    TRY_ASSIGN(auto v, ratls::verify_legacy_attestation(quote, log, expected, o));
    return std::move(v.boot_info);
  }

 private:
  ratls::VerifyOptions opts_;
};

}  // namespace

Result<auth::BootInfo> Verifier::verify_boot_attestation(ByteView, ByteView) {
  return make_error("this attestation verifier cannot check SignCert attestations");
}
Result<auth::BootInfo> Verifier::verify_legacy_boot_attestation(ByteView, const std::string&, ByteView) {
  return make_error("this attestation verifier cannot check legacy (quote + event log) attestations");
}

std::shared_ptr<Attester> make_guest_agent_attester(const std::string& address, std::chrono::milliseconds timeout) {
  return std::make_shared<GuestAgentAttester>(address, timeout);
}

Result<std::shared_ptr<Verifier>> make_ratls_verifier(const KmsConfig& cfg) {
  ratls::VerifyOptions o;
  if (!cfg.collateral_file.empty()) {
    auto c = ratls::CollateralSource::from_file(cfg.collateral_file);
    if (!c.ok()) return c.error().wrap("core.attestation.collateral_file");
    o.collateral = std::move(c).value();
  } else {
    o.collateral = ratls::CollateralSource::pccs(cfg.pccs_url.empty() ? "https://pccs.phala.network" : cfg.pccs_url);
  }
  if (auto it = cfg.root_ca.find("tdx"); it != cfg.root_ca.end()) {
    if (!cfg.insecure_allow_external_trust_anchors)
      return make_error("core.attestation.root_ca.tdx requires insecure_allow_external_trust_anchors = true");
    auto pem = read_file(it->second);
    if (!pem.ok()) return pem.error().wrap("core.attestation.root_ca.tdx");
    o.trust.root_ca_pem = *pem;
  }
  return std::shared_ptr<Verifier>(std::make_shared<RatlsVerifier>(std::move(o)));
}

}  // namespace dstack::kms
