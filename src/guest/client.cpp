#include "guest/client.h"

#include <cstdlib>

#include "base/fs.h"
#include "rpc/http.h"

namespace dstack::guest {

GuestClient::GuestClient(std::string endpoint, std::chrono::milliseconds timeout) : timeout_(timeout) {
  if (endpoint.empty()) {
    if (const char* env = std::getenv("DSTACK_AGENT_ADDRESS"); env && *env) {
      endpoint = env;
    } else if (file_exists("/var/run/dstack/dstack.sock")) {
      endpoint = "unix:/var/run/dstack/dstack.sock";
    } else {
      endpoint = "unix:/var/run/dstack.sock";
    }
  }
  if (!endpoint.empty() && endpoint[0] == '/') endpoint = "unix:" + endpoint;
  while (endpoint.size() > 1 && endpoint.back() == '/' && endpoint.rfind("unix:", 0) != 0) endpoint.pop_back();
  endpoint_ = std::move(endpoint);
}

Result<nlohmann::json> GuestClient::call(const std::string& method, const nlohmann::json& request) const {
  std::string url = endpoint_.rfind("unix:", 0) == 0 ? endpoint_ + ":/" + method : endpoint_ + "/" + method;
  rpc::ClientOptions opts;
  opts.timeout = timeout_;
  auto res = rpc::http_request("POST", url, request.dump(), opts);
  if (!res.ok()) return res.error().wrap("guest agent " + endpoint_ + " " + method);
  auto j = nlohmann::json::parse(res->body, nullptr, false);
  if (res->status != 200) {
    std::string msg = (!j.is_discarded() && j.is_object() && j.contains("error") && j["error"].is_string())
                          ? j["error"].get<std::string>()
                          : res->body.substr(0, 300);
    return make_error("guest agent " + method + " failed (HTTP " + std::to_string(res->status) + "): " + msg);
  }
  if (res->body.empty()) return nlohmann::json(nullptr);
  if (j.is_discarded()) return make_error("guest agent " + method + ": response is not JSON");
  return j;
}

namespace {
Result<Bytes> hex_field(const nlohmann::json& j, const char* f) {
  if (!j.is_object() || !j.contains(f) || j[f].is_null()) return Bytes{};
  if (!j[f].is_string()) return make_error(std::string("guest agent response field ") + f + " is not a string");
  return from_hex(j[f].get<std::string>());
}
std::string str_field(const nlohmann::json& j, const char* f) {
  return j.is_object() && j.contains(f) && j[f].is_string() ? j[f].get<std::string>() : std::string();
}
}  // namespace

Result<QuoteResult> GuestClient::get_quote(ByteView report_data) const {
  if (report_data.size() > 64) return make_error("Report data is too long");
  TRY_ASSIGN(auto j, call("GetQuote", {{"report_data", to_hex(report_data)}}));
  QuoteResult q;
  TRY_ASSIGN(q.quote, hex_field(j, "quote"));
  TRY_ASSIGN(q.report_data, hex_field(j, "report_data"));
  TRY_ASSIGN(q.attestation, hex_field(j, "attestation"));
  q.event_log = str_field(j, "event_log");
  q.vm_config = str_field(j, "vm_config");
  return q;
}

Result<Bytes> GuestClient::attest(ByteView report_data) const {
  if (report_data.size() > 64) return make_error("Report data is too long");
  TRY_ASSIGN(auto j, call("Attest", {{"report_data", to_hex(report_data)}}));
  return hex_field(j, "attestation");
}

Result<nlohmann::json> GuestClient::info() const { return call("Info"); }

Result<KeyResult> GuestClient::get_key(const std::string& path, const std::string& purpose,
                                       const std::string& algorithm) const {
  TRY_ASSIGN(auto j, call("GetKey", {{"path", path}, {"purpose", purpose}, {"algorithm", algorithm}}));
  KeyResult k;
  TRY_ASSIGN(k.key, hex_field(j, "key"));
  if (j.contains("signature_chain") && j["signature_chain"].is_array()) {
    for (const auto& s : j["signature_chain"]) {
      if (!s.is_string()) return make_error("guest agent GetKey: signature_chain holds a non-string");
      TRY_ASSIGN(Bytes b, from_hex(s.get<std::string>()));
      k.signature_chain.push_back(std::move(b));
    }
  }
  return k;
}

Result<TlsKeyResult> GuestClient::get_tls_key(const TlsKeyArgs& a) const {
  nlohmann::json req{{"subject", a.subject},
                     {"alt_names", a.alt_names},
                     {"usage_ra_tls", a.usage_ra_tls},
                     {"usage_server_auth", a.usage_server_auth},
                     {"usage_client_auth", a.usage_client_auth}};
  TRY_ASSIGN(auto j, call("GetTlsKey", req));
  TlsKeyResult r;
  r.key_pem = str_field(j, "key");
  if (j.contains("certificate_chain") && j["certificate_chain"].is_array()) {
    for (const auto& c : j["certificate_chain"]) {
      if (c.is_string()) r.certificate_chain.push_back(c.get<std::string>());
    }
  }
  return r;
}

Status GuestClient::emit_event(const std::string& event, ByteView payload) const {
  TRY_ASSIGN(auto j, call("EmitEvent", {{"event", event}, {"payload", to_hex(payload)}}));
  (void)j;
  return Status::Ok();
}

}  // namespace dstack::guest
