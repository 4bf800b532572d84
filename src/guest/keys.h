// App keys handed to the guest agent (spec §9 `.appkeys.json`).
#pragma once

#include <nlohmann/json.hpp>

#include <optional>
#include <string>

#include "base/bytes.h"
#include "base/result.h"

namespace dstack::guest {

struct AppKeys {
  Bytes disk_crypt_key;
  Bytes env_crypt_key;
  Bytes k256_key;            // 32-byte secp256k1 secret (the app key)
  Bytes k256_signature;      // 65 B by the KMS root k256 key over the app pubkey (empty for non-KMS providers)
  std::string gateway_app_id;
  std::string ca_cert;       // PEM: app root cert (None/Local/Tpm) or KMS root CA (Kms)
  // key_provider, externally tagged: {"None":{"key":PEM}} | {"Local":{"key","mr"}} | {"Tpm":{"key","pubkey"}}
  // | {"Kms":{"url","pubkey","tmp_ca_key","tmp_ca_cert"}}
  std::string key_provider_kind;   // "None" | "Local" | "Tpm" | "Kms"
  nlohmann::json key_provider;     // the inner object
  // App CA private key PEM for local certificate signing (None/Local/Tpm); empty for Kms.
  std::string ca_key_pem() const;
  // {"name":..,"id":..} as in the `key-provider` event (spec §8.3).
  std::string key_provider_info() const;

  nlohmann::json to_json() const;
  static Result<AppKeys> from_json(const nlohmann::json& j);
  static Result<AppKeys> load(const std::string& path);
};

// Keys for a simulated CVM (key provider None): random k256 key, random P-256 app CA key and a self-signed
// "App Root Cert" (pathLen 1); empty k256_signature. `attestation`, if given, goes into the CA cert (.8).
Result<AppKeys> generate_sim_app_keys(std::optional<Bytes> attestation_for_ca = std::nullopt);

}  // namespace dstack::guest
