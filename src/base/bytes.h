// Byte buffers and hex encoding used across the project.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/result.h"

namespace dstack {

using Bytes = std::vector<uint8_t>;
using ByteView = std::span<const uint8_t>;

inline Bytes to_bytes(std::string_view s) { return Bytes(s.begin(), s.end()); }
inline ByteView as_view(std::string_view s) {
  return ByteView(reinterpret_cast<const uint8_t*>(s.data()), s.size());
}
inline std::string to_string(ByteView b) { return std::string(b.begin(), b.end()); }
inline Bytes concat(std::initializer_list<ByteView> parts) {
  Bytes out;
  for (auto p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

// Lowercase hex, no 0x.
std::string to_hex(ByteView data);
// Accepts upper/lower case and an optional leading "0x"/"0X". Odd length or a non-hex digit is an error.
Result<Bytes> from_hex(std::string_view hex);

// Constant-time equality for secrets.
bool secure_equal(ByteView a, ByteView b);
// Overwrites a buffer holding key material before it is freed.
void secure_wipe(Bytes& b);

std::string base64_encode(ByteView data);
Result<Bytes> base64_decode(std::string_view b64);

}  // namespace dstack
