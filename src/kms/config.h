// kms.toml (spec §4) with defaults that make a local run work. Precedence (spec §1.2): built-in defaults ->
// /etc/kms/kms.toml -> ./kms.toml -> the file given with -c; then env KMS_DOMAIN -> core.onboard.auto_bootstrap_domain.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "base/result.h"

namespace dstack::kms {

struct KmsConfig {
  // [rpc]
  std::string rpc_address = "0.0.0.0";
  uint16_t rpc_port = 9100;
  int workers = 2;                       // HTTP server threads ([default] workers / [rpc] workers)
  // [rpc.tls] / [rpc.tls.mutual]: empty => <cert_dir>/rpc.key, rpc.crt, tmp-ca.crt
  std::string rpc_tls_key;
  std::string rpc_tls_certs;
  std::string rpc_mutual_ca;
  bool rpc_mutual_mandatory = false;

  // [core]
  std::string cert_dir = "/etc/kms/certs";
  std::string site_name;
  bool enforce_self_authorization = true;
  bool attest_rpc_cert = true;           // [core.onboard] quote_enabled is the older name
  std::string guest_agent;               // default: env DSTACK_AGENT_ADDRESS or unix:/var/run/dstack.sock

  // [core.attestation]
  bool insecure_allow_external_trust_anchors = false;
  std::string pccs_url;                  // [core.attestation.urls] pccs
  std::map<std::string, std::string> root_ca;  // [core.attestation.root_ca] tdx = "<path PEM/DER>"
  std::string collateral_file;           // [core.attestation] collateral_file (offline JSON collateral)

  // [core.image]
  bool image_verify = false;             // OS image verification is not implemented: accepted but warned

  // [core.metrics]
  bool metrics_enabled = true;

  // [core.auth_api]
  std::string auth_type = "webhook";     // webhook | dev | file
  std::string webhook_url = "http://127.0.0.1:8000";
  std::chrono::milliseconds webhook_timeout{5000};
  std::chrono::milliseconds webhook_info_timeout{3000};
  std::chrono::milliseconds webhook_refresh{30000};
  std::string dev_gateway_app_id = "any";
  std::string file_policy_path = "auth-config.json";

  // [core.onboard]
  bool onboard_enabled = true;
  std::string auto_bootstrap_domain;
  std::string onboard_address = "0.0.0.0";
  uint16_t onboard_port = 9100;

  std::vector<std::string> loaded_files;  // for the log
};

// env: lookup function (defaults to getenv). Missing -c file is an error; missing default files are not.
Result<KmsConfig> load_config(const std::optional<std::string>& path,
                              const std::function<const char*(const char*)>& env = nullptr,
                              bool include_system_files = true);
// Same from TOML text (tests).
Result<KmsConfig> parse_config_text(const std::string& toml_text, KmsConfig base = {});

// DNS name check of spec §3.4.
Status validate_domain(const std::string& domain);

}  // namespace dstack::kms
