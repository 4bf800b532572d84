// libFuzzer target: collateral JSON parser, plus TCB info / QE identity parsing and certificate/CRL decoding
// inside verify_quote (run against a real quote so the verifier reaches those parsers).
#include <cstddef>
#include <cstdint>
#include <string>

#include "attest/collateral.h"
#include "attest/verify.h"
#include "base/fs.h"

namespace {
const dstack::Bytes& real_quote() {
  static const dstack::Bytes q = [] {
    auto r = dstack::read_file_bytes(std::string(DSTACK_SHARED_DIR) + "/testdata/dcap/tdx_quote");
    return r.ok() ? *r : dstack::Bytes{};
  }();
  return q;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  auto c = dstack::attest::parse_collateral_json(text);
  if (!c.ok()) return 0;
  (void)dstack::attest::collateral_to_json(*c);
  (void)dstack::attest::verify_quote(real_quote(), *c, 1750331763);
  return 0;
}
