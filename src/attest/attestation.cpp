#include "attest/attestation.h"

#include "attest/scale.h"

namespace dstack::attest {

namespace {
constexpr uint8_t kVersionV0 = 0x00;
constexpr uint8_t kQuoteDstackTdx = 0;
const char* const kQuoteVariantNames[] = {"DstackTdx", "DstackGcpTdx", "DstackNitroEnclave", "DstackAmdSevSnp",
                                          "DstackAwsNitroTpm"};
}  // namespace

Result<Bytes> VersionedAttestation::to_bytes() const {
  if (report_data.size() != 64) {
    return make_error("attestation report_data must be 64 bytes, got " + std::to_string(report_data.size()));
  }
  scale::Encoder e;
  e.u8(kVersionV0);
  e.u8(kQuoteDstackTdx);
  e.bytes(quote);
  e.compact(event_log.size());
  for (const auto& ev : event_log) {
    e.u32(ev.imr).u32(ev.event_type).bytes(ev.digest).str(ev.event).bytes(ev.event_payload);
  }
  e.compact(runtime_events.size());
  for (const auto& ev : runtime_events) {
    if (ev.version != 1) {
      return make_error("runtime event \"" + ev.event +
                        "\" is version 2; the V0 (SCALE) attestation format can only carry version-1 events");
    }
    e.str(ev.event).bytes(ev.payload);
  }
  e.raw(report_data);
  e.str(config);
  return e.take();
}

Result<VersionedAttestation> VersionedAttestation::from_bytes(ByteView data) {
  if (data.empty()) return make_error("attestation is empty");
  if (data.size() > kMaxAttestationSize) {
    return make_error("attestation is " + std::to_string(data.size()) + " bytes; the limit is 10 MiB");
  }
  uint8_t first = data[0];
  if ((first >= 0x80 && first <= 0x8f) || first == 0xde || first == 0xdf) {
    return make_error("attestation is in the V1 (MessagePack) format, which this build does not decode yet");
  }
  if (first != kVersionV0) {
    return make_error("unknown attestation format (first byte 0x" + to_hex(data.subspan(0, 1)) + ")");
  }
  scale::Decoder d(data.subspan(1));
  auto wrap = [](const Error& e) { return e.wrap("decoding V0 attestation"); };
  VersionedAttestation a;
  auto variant = d.u8();
  if (!variant) return wrap(variant.error());
  if (*variant != kQuoteDstackTdx) {
    std::string name = *variant < 5 ? kQuoteVariantNames[*variant] : ("#" + std::to_string(*variant));
    return make_error("attestation platform " + name + " is not supported (only DstackTdx)");
  }
  auto body = [&]() -> Status {
    TRY_ASSIGN(a.quote, d.bytes());
    TRY_ASSIGN(uint64_t n_events, d.vec_len(4 + 4 + 1 + 1 + 1));
    a.event_log.reserve(static_cast<size_t>(n_events));
    for (uint64_t i = 0; i < n_events; ++i) {
      TdxEvent ev;
      TRY_ASSIGN(ev.imr, d.u32());
      TRY_ASSIGN(ev.event_type, d.u32());
      TRY_ASSIGN(ev.digest, d.bytes());
      TRY_ASSIGN(ev.event, d.str());
      TRY_ASSIGN(ev.event_payload, d.bytes());
      a.event_log.push_back(std::move(ev));
    }
    TRY_ASSIGN(uint64_t n_rt, d.vec_len(2));
    a.runtime_events.reserve(static_cast<size_t>(n_rt));
    for (uint64_t i = 0; i < n_rt; ++i) {
      RuntimeEvent ev;
      TRY_ASSIGN(ev.event, d.str());
      TRY_ASSIGN(ev.payload, d.bytes());
      a.runtime_events.push_back(std::move(ev));
    }
    TRY_ASSIGN(a.report_data, d.raw(64));
    TRY_ASSIGN(a.config, d.str());
    return d.finish();
  }();
  if (!body.ok()) return wrap(body.error());
  return a;
}

VersionedAttestation VersionedAttestation::stripped() const {
  VersionedAttestation s;
  s.quote = quote;
  s.runtime_events = runtime_events;
  s.report_data = report_data;
  s.config = config;
  static const std::string kAcpiData = "ACPI DATA";
  for (const auto& ev : event_log) {
    if (ev.imr == 3) {
      TdxEvent e = ev;
      e.digest.clear();
      s.event_log.push_back(std::move(e));
    } else if (ev.imr == 0 && ev.event_type == kAcpiDataEventType &&
               (to_string(ev.event_payload) == kAcpiData || ev.event == "acpi-loader" || ev.event == "acpi-rsdp" ||
                ev.event == "acpi-tables")) {
      TdxEvent e = ev;
      e.event_payload = dstack::to_bytes(kAcpiData);
      s.event_log.push_back(std::move(e));
    }
  }
  return s;
}

}  // namespace dstack::attest
