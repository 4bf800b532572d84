#include "cvmsim/measure.h"

#include "attest/measurement.h"
#include "crypto/hash.h"

namespace dstack::cvmsim {

namespace {
Bytes tagged(std::string_view tag, std::initializer_list<ByteView> parts) {
  Bytes data(tag.begin(), tag.end());
  for (auto p : parts) data.insert(data.end(), p.begin(), p.end());
  return crypto::sha384(data);
}
Bytes le64(uint64_t v) {
  Bytes b(8);
  for (int i = 0; i < 8; ++i) b[i] = static_cast<uint8_t>(v >> (8 * i));
  return b;
}
}  // namespace

Result<BootMeasurement> derive_boot_measurement(ByteView os_image_hash, uint32_t vcpu, uint64_t memory_bytes,
                                                ByteView compose_hash) {
  BootMeasurement m;
  Bytes cpu = le64(vcpu), mem = le64(memory_bytes);
  // Firmware measurement depends on the image only; RTMR0 (ACPI/config) also on vcpu and memory, as on TDX.
  m.mrtd = tagged("dstack-cvmsim/mrtd:", {os_image_hash});
  m.rtmr0 = tagged("dstack-cvmsim/rtmr0:", {os_image_hash, cpu, mem});
  m.rtmr1 = tagged("dstack-cvmsim/rtmr1:", {os_image_hash});
  m.rtmr2 = tagged("dstack-cvmsim/rtmr2:", {os_image_hash});
  TRY_ASSIGN(m.mr_config_id, attest::mr_config_id_v1(compose_hash));
  return m;
}

}  // namespace dstack::cvmsim
