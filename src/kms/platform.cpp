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

auth::BootInfo convert(const ratls::BootInfo& b) {
  auth::BootInfo o;
  o.tee_variant = b.tee_variant;
  o.mr_aggregated = b.mr_aggregated;
  o.os_image_hash = b.os_image_hash;
  o.mr_system = b.mr_system;
  o.app_id = b.app_id;
  o.compose_hash = b.compose_hash;
  o.instance_id = b.instance_id;
  o.device_id = b.device_id;
  o.key_provider_info = b.key_provider_info;
  o.tcb_status = b.tcb_status;
  o.advisory_ids = b.advisory_ids;
  return o;
}

class RatlsVerifier : public Verifier {
 public:
  explicit RatlsVerifier(ratls::VerifyOptions o) : opts_(std::move(o)) {}
  Result<auth::BootInfo> verify_cert(ByteView der, bool boot_time_mr) override {
    ratls::VerifyOptions o = opts_;
    o.use_boottime_mr = boot_time_mr;
    TRY_ASSIGN(auto v, ratls::verify_peer_attestation(der, o));
    return convert(v.boot_info);
  }
  Result<auth::BootInfo> verify_attestation(ByteView att, ByteView expected) override {
    TRY_ASSIGN(auto v, ratls::verify_attestation(att, expected, opts_));
    return convert(v.boot_info);
  }

 private:
  ratls::VerifyOptions opts_;
};

}  // namespace

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
