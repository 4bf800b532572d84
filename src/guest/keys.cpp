#include "guest/keys.h"

#include "base/fs.h"
#include "crypto/hash.h"
#include "crypto/k256.h"
#include "crypto/p256.h"
#include "crypto/x509.h"

namespace dstack::guest {

std::string AppKeys::ca_key_pem() const {
  if (key_provider.is_object() && key_provider.contains("key") && key_provider["key"].is_string()) {
    return key_provider["key"].get<std::string>();
  }
  return {};
}

std::string AppKeys::key_provider_info() const {
  nlohmann::json j;
  std::string id;
  if (key_provider_kind == "Kms") {
    j["name"] = "kms";
    id = key_provider.value("pubkey", "");
  } else if (key_provider_kind == "Local") {
    j["name"] = "local-sgx";
    id = key_provider.value("mr", "");
  } else if (key_provider_kind == "Tpm") {
    j["name"] = "tpm";
    id = key_provider.value("pubkey", "");
  } else {
    j["name"] = "none";
  }
  j["id"] = id;
  return j.dump();
}

nlohmann::json AppKeys::to_json() const {
  nlohmann::json j;
  j["disk_crypt_key"] = to_hex(disk_crypt_key);
  j["env_crypt_key"] = to_hex(env_crypt_key);
  j["k256_key"] = to_hex(k256_key);
  j["k256_signature"] = to_hex(k256_signature);
  j["gateway_app_id"] = gateway_app_id;
  j["ca_cert"] = ca_cert;
  j["key_provider"] = nlohmann::json::object({{key_provider_kind, key_provider}});
  return j;
}

Result<AppKeys> AppKeys::from_json(const nlohmann::json& j) {
  if (!j.is_object()) return make_error("app keys must be a JSON object");
  AppKeys k;
  auto hex = [&](const char* f, Bytes& out) -> Status {
    if (!j.contains(f) || j[f].is_null()) return Status::Ok();
    if (!j[f].is_string()) return make_error(std::string("field ") + f + " must be a hex string");
    auto r = from_hex(j[f].get<std::string>());
    if (!r.ok()) return r.error().wrap(std::string("field ") + f);
    out = std::move(*r);
    return Status::Ok();
  };
  TRY(hex("disk_crypt_key", k.disk_crypt_key));
  TRY(hex("env_crypt_key", k.env_crypt_key));
  TRY(hex("k256_key", k.k256_key));
  TRY(hex("k256_signature", k.k256_signature));
  if (k.k256_key.size() != 32) return make_error("field k256_key must be 32 bytes (64 hex digits)");
  if (j.contains("gateway_app_id") && j["gateway_app_id"].is_string()) k.gateway_app_id = j["gateway_app_id"];
  if (j.contains("ca_cert") && j["ca_cert"].is_string()) k.ca_cert = j["ca_cert"];
  if (!j.contains("key_provider") || !j["key_provider"].is_object() || j["key_provider"].size() != 1) {
    return make_error("field key_provider must be an object with one of None, Local, Tpm, Kms");
  }
  auto it = j["key_provider"].begin();
  k.key_provider_kind = it.key();
  k.key_provider = it.value();
  if (k.key_provider_kind != "None" && k.key_provider_kind != "Local" && k.key_provider_kind != "Tpm" &&
      k.key_provider_kind != "Kms") {
    return make_error("unknown key_provider \"" + k.key_provider_kind + "\" (expected None, Local, Tpm or Kms)");
  }
  return k;
}

Result<AppKeys> AppKeys::load(const std::string& path) {
  auto text = read_file(path);
  if (!text.ok()) return text.error().wrap("reading app keys file " + path);
  auto j = nlohmann::json::parse(*text, nullptr, false);
  if (j.is_discarded()) return make_error("app keys file " + path + " is not valid JSON");
  auto k = from_json(j);
  if (!k.ok()) return k.error().wrap("app keys file " + path);
  return k;
}

Result<AppKeys> generate_sim_app_keys(std::optional<Bytes> attestation_for_ca) {
  AppKeys k;
  k.k256_key = crypto::K256Key::generate().secret();
  TRY_ASSIGN(crypto::P256Key ca_key, crypto::P256Key::generate());
  TRY_ASSIGN(crypto::P256Key disk_key, crypto::P256Key::generate());
  k.disk_crypt_key = crypto::sha256(disk_key.to_dstack_pkcs8_der());
  crypto::CertSpec spec;
  spec.common_name = "App Root Cert";
  spec.is_ca = true;
  spec.ca_path_len = 1;
  if (attestation_for_ca) spec.extensions["1.3.6.1.4.1.62397.1.8"] = *attestation_for_ca;
  TRY_ASSIGN(crypto::Certificate cert, crypto::issue_certificate(spec, ca_key, ca_key, nullptr));
  k.ca_cert = cert.to_pem();
  k.key_provider_kind = "None";
  k.key_provider = nlohmann::json::object({{"key", ca_key.to_pkcs8_pem()}});
  return k;
}

}  // namespace dstack::guest
