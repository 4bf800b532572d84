#include "cvmsim/keys.h"

#include "crypto/hash.h"
#include "crypto/p256.h"
#include "crypto/x509.h"

namespace dstack::cvmsim {

Result<nlohmann::json> app_keys_from_seed(ByteView seed, const std::string& provider, ByteView mr) {
  if (seed.size() != 32) return make_error("app key seed must be 32 bytes, got " + std::to_string(seed.size()));
  TRY_ASSIGN(crypto::P256Key ca_key, crypto::P256Key::derive(seed, {as_view("app-key")}));
  TRY_ASSIGN(crypto::P256Key disk_key, crypto::P256Key::derive(seed, {as_view("app-disk-key")}));
  TRY_ASSIGN(Bytes k256, crypto::derive_key(seed, {as_view("app-k256-key")}, 32));
  Bytes disk_crypt_key = crypto::sha256(disk_key.to_dstack_pkcs8_der());
  crypto::CertSpec spec;
  spec.org_name = "Dstack";
  spec.common_name = "App Root Cert";
  spec.is_ca = true;
  spec.ca_path_len = 1;
  TRY_ASSIGN(crypto::Certificate cert, crypto::issue_certificate(spec, ca_key, ca_key, nullptr));
  nlohmann::ordered_json kp;
  if (provider == "Local") {
    kp["Local"] = {{"key", ca_key.to_pkcs8_pem()}, {"mr", to_hex(mr)}};
  } else {
    kp["None"] = {{"key", ca_key.to_pkcs8_pem()}};
  }
  nlohmann::ordered_json j;
  j["disk_crypt_key"] = to_hex(disk_crypt_key);
  j["env_crypt_key"] = "";
  j["k256_key"] = to_hex(k256);
  j["k256_signature"] = "";
  j["gateway_app_id"] = "";
  j["ca_cert"] = cert.to_pem();
  j["key_provider"] = kp;
  secure_wipe(k256);
  secure_wipe(disk_crypt_key);
  return nlohmann::json::parse(j.dump());
}

std::string key_provider_info(const std::string& name, const std::string& id_hex) {
  nlohmann::ordered_json j;
  j["name"] = name;
  j["id"] = id_hex;
  return j.dump();
}

}  // namespace dstack::cvmsim
