// libFuzzer target: quote parser (and the JSON view of whatever parses). Must never crash or read out of bounds.
#include <cstddef>
#include <cstdint>

#include "attest/dcap_json.h"
#include "attest/quote.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto q = dstack::attest::parse_quote(dstack::ByteView(data, size));
  if (q.ok()) {
    // Exercise the accessors: the signed region and report data must lie inside the input.
    if (q->signed_length > size) __builtin_trap();
    (void)dstack::attest::quote_to_json(*q).dump();
    (void)q->report_data();
  }
  return 0;
}
