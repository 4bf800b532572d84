// Guest-side key material of the simulated CVM (spec §5.4, §9, §12).
#pragma once

#include <nlohmann/json.hpp>

#include <string>

#include "base/bytes.h"
#include "base/result.h"

namespace dstack::cvmsim {

// `.appkeys.json` from a 32-byte seed (spec §5.4 gen_app_keys_from_seed): app CA key = derive_p256(seed,
// ["app-key"]), disk key = derive_p256(seed, ["app-disk-key"]), disk_crypt_key = SHA256(PKCS#8 DER of disk
// key), k256_key = derive_key(seed, ["app-k256-key"], 32), self-signed "App Root Cert" (pathLen 1).
// provider: "None" (mr ignored) or "Local" (mr = SGX MRENCLAVE of the key provider).
Result<nlohmann::json> app_keys_from_seed(ByteView seed32, const std::string& provider, ByteView mr = {});

// The local provider's answer is checked with keyprovider::open_sealing_key (DCAP against the simulated
// platform's SGX collateral + root, binding, MRENCLAVE pin); MR_CONFIG_ID with attest::TdMeasurements.

// `key-provider` event payload: compact JSON {"name":..,"id":..} in that key order.
std::string key_provider_info(const std::string& name, const std::string& id_hex);

}  // namespace dstack::cvmsim
