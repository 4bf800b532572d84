#include "attest/measurement.h"

#include <algorithm>

#include <nlohmann/json.hpp>

#include "crypto/hash.h"

namespace dstack::attest {

namespace {
bool all_zero(ByteView b) {
  return std::all_of(b.begin(), b.end(), [](uint8_t c) { return c == 0; });
}
Bytes slice(ByteView q, size_t from, size_t to) { return Bytes(q.begin() + from, q.begin() + to); }
}  // namespace

Result<TdMeasurements> TdMeasurements::from_quote(ByteView q) {
  if (q.size() < 632) {
    return make_error("TDX quote too short: " + std::to_string(q.size()) + " bytes (need at least 632)");
  }
  uint16_t version = static_cast<uint16_t>(q[0] | (q[1] << 8));
  uint32_t tee_type = q[4] | (q[5] << 8) | (q[6] << 16) | (static_cast<uint32_t>(q[7]) << 24);
  if (version != 4 && version != 5) {
    return make_error("not a TDX quote: version " + std::to_string(version) + " (expected 4)");
  }
  if (tee_type != 0x81) return make_error("not a TDX quote: tee_type 0x" + to_hex(q.subspan(4, 4)) + " (LE)");
  if (version == 5) {
    // v5: u16 body type @48, u32 body size @50, body @54 (TD10 = 2, TD15 = 3; TD15 extends TD10).
    return make_error("TDX quote v5 is not supported for measurements yet");
  }
  TdMeasurements m;
  m.tee_tcb_svn = slice(q, 48, 64);
  m.mr_seam = slice(q, 64, 112);
  m.mr_signer_seam = slice(q, 112, 160);
  m.td_attributes = slice(q, 168, 176);
  m.xfam = slice(q, 176, 184);
  m.mr_td = slice(q, 184, 232);
  m.mr_config_id = slice(q, 232, 280);
  m.mr_owner = slice(q, 280, 328);
  m.mr_owner_config = slice(q, 328, 376);
  m.rtmr0 = slice(q, 376, 424);
  m.rtmr1 = slice(q, 424, 472);
  m.rtmr2 = slice(q, 472, 520);
  m.rtmr3 = slice(q, 520, 568);
  m.report_data = slice(q, 568, 632);
  return m;
}

Bytes mr_key_provider(std::string_view key_provider_info) {
  if (key_provider_info.empty()) return Bytes(32, 0);
  return crypto::sha256(as_view(key_provider_info));
}

Bytes mr_system(const TdMeasurements& m, std::string_view key_provider_info) {
  Bytes kp = mr_key_provider(key_provider_info);
  return crypto::sha256(concat({m.mr_td, m.rtmr0, m.rtmr1, m.rtmr2, kp}));
}

Bytes mr_aggregated(const TdMeasurements& m, ByteView rtmr3) {
  Bytes pre = concat({m.mr_td, m.rtmr0, m.rtmr1, m.rtmr2, rtmr3});
  if (!all_zero(m.mr_config_id) || !all_zero(m.mr_owner) || !all_zero(m.mr_owner_config)) {
    pre = concat({pre, m.mr_config_id, m.mr_owner, m.mr_owner_config});
  }
  return crypto::sha256(pre);
}

Result<Bytes> mr_config_id_v1(ByteView compose_hash32) {
  if (compose_hash32.size() != 32) return make_error("MR_CONFIG_ID V1 needs a 32-byte compose hash");
  Bytes out{0x01};
  out.insert(out.end(), compose_hash32.begin(), compose_hash32.end());
  out.resize(48, 0);
  return out;
}

Result<Bytes> mr_config_id_v2(ByteView compose_hash32, ByteView app_id20, KeyProviderKind kp,
                              ByteView key_provider_id) {
  if (compose_hash32.size() != 32) return make_error("MR_CONFIG_ID V2 needs a 32-byte compose hash");
  if (app_id20.size() != 20) return make_error("MR_CONFIG_ID V2 needs a 20-byte app id");
  uint8_t kp_byte = static_cast<uint8_t>(kp);
  Bytes h = crypto::keccak256(concat({compose_hash32, app_id20, ByteView(&kp_byte, 1), key_provider_id}));
  Bytes out{0x02};
  out.insert(out.end(), h.begin(), h.end());
  out.resize(48, 0);
  return out;
}

Result<KeyProviderKind> key_provider_kind_from_name(std::string_view name) {
  if (name == "none") return KeyProviderKind::None;
  if (name == "local" || name == "local-sgx") return KeyProviderKind::Local;
  if (name == "kms") return KeyProviderKind::Kms;
  if (name == "tpm") return KeyProviderKind::Tpm;
  return make_error("unknown key provider \"" + std::string(name) + "\" (expected none, local, kms or tpm)");
}

Result<BootInfo> compute_boot_info(const TdMeasurements& m, const std::vector<RuntimeEvent>& runtime_events,
                                   std::string_view vm_config, bool boot_time_mr) {
  Bytes full = replay_runtime_events(runtime_events, false);
  if (full != m.rtmr3) {
    return make_error("runtime event log does not match the quote: replayed RTMR3 " + to_hex(full) +
                      " != quoted RTMR3 " + to_hex(m.rtmr3));
  }
  BootInfo bi;
  bi.mr_td = m.mr_td;
  bi.rtmr0 = m.rtmr0;
  bi.rtmr1 = m.rtmr1;
  bi.rtmr2 = m.rtmr2;
  bi.rtmr3 = m.rtmr3;
  bi.mr_config_id = m.mr_config_id;
  bi.app_id = find_runtime_event(runtime_events, events::kAppId).value_or(Bytes{});
  bi.compose_hash = find_runtime_event(runtime_events, events::kComposeHash).value_or(Bytes{});
  bi.instance_id = find_runtime_event(runtime_events, events::kInstanceId).value_or(Bytes{});
  if (!boot_time_mr) {
    bi.key_provider_info = to_string(find_runtime_event(runtime_events, events::kKeyProvider).value_or(Bytes{}));
  }
  Bytes rtmr3 = boot_time_mr ? replay_runtime_events(runtime_events, true) : full;
  bi.mr_aggregated = mr_aggregated(m, rtmr3);
  bi.mr_system = mr_system(m, bi.key_provider_info);
  if (!vm_config.empty()) {
    auto j = nlohmann::json::parse(vm_config, nullptr, false);
    if (j.is_discarded() || !j.is_object()) return make_error("vm_config is not a JSON object");
    auto it = j.find("os_image_hash");
    if (it != j.end() && !it->is_null()) {
      if (!it->is_string()) return make_error("vm_config.os_image_hash must be a hex string");
      auto h = from_hex(it->get<std::string>());
      if (!h) return h.error().wrap("vm_config.os_image_hash");
      bi.os_image_hash = std::move(h).value();
    }
  }
  return bi;
}

Result<BootInfo> compute_boot_info(ByteView quote, const std::vector<RuntimeEvent>& runtime_events,
                                   std::string_view vm_config, bool boot_time_mr) {
  TRY_ASSIGN(auto m, TdMeasurements::from_quote(quote));
  return compute_boot_info(m, runtime_events, vm_config, boot_time_mr);
}

Result<BootInfo> compute_boot_info(const VersionedAttestation& attestation, bool boot_time_mr) {
  TRY_ASSIGN(auto m, TdMeasurements::from_quote(attestation.quote));
  if (attestation.report_data != m.report_data) {
    return make_error("attestation report_data " + to_hex(attestation.report_data) +
                      " does not match the quote's report_data " + to_hex(m.report_data));
  }
  if (m.td_attributes[0] & 1) return make_error("quote is from a debug TD (TD_ATTRIBUTES.TUD set); refusing it");
  if (!all_zero(m.mr_signer_seam)) return make_error("quote has a non-zero mr_signer_seam (untrusted TDX module signer)");
  return compute_boot_info(m, attestation.runtime_events, attestation.config, boot_time_mr);
}

}  // namespace dstack::attest
