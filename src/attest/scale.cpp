#include "attest/scale.h"

#include <string>

namespace dstack::attest::scale {

Encoder& Encoder::u8(uint8_t v) {
  out_.push_back(v);
  return *this;
}
Encoder& Encoder::boolean(bool v) { return u8(v ? 1 : 0); }
Encoder& Encoder::u16(uint16_t v) {
  for (int i = 0; i < 2; ++i) out_.push_back(static_cast<uint8_t>(v >> (8 * i)));
  return *this;
}
Encoder& Encoder::u32(uint32_t v) {
  for (int i = 0; i < 4; ++i) out_.push_back(static_cast<uint8_t>(v >> (8 * i)));
  return *this;
}
Encoder& Encoder::u64(uint64_t v) {
  for (int i = 0; i < 8; ++i) out_.push_back(static_cast<uint8_t>(v >> (8 * i)));
  return *this;
}
Encoder& Encoder::compact(uint64_t v) {
  if (v < (1u << 6)) return u8(static_cast<uint8_t>(v << 2));
  if (v < (1u << 14)) return u16(static_cast<uint16_t>((v << 2) | 1));
  if (v < (1u << 30)) return u32(static_cast<uint32_t>((v << 2) | 2));
  // Big-integer mode: minimal number of little-endian bytes (>= 4).
  uint8_t n = 0;
  for (uint64_t t = v; t != 0; t >>= 8) ++n;
  if (n < 4) n = 4;
  u8(static_cast<uint8_t>(((n - 4) << 2) | 3));
  for (uint8_t i = 0; i < n; ++i) out_.push_back(static_cast<uint8_t>(v >> (8 * i)));
  return *this;
}
Encoder& Encoder::bytes(ByteView v) {
  compact(v.size());
  return raw(v);
}
Encoder& Encoder::str(std::string_view v) { return bytes(as_view(v)); }
Encoder& Encoder::raw(ByteView v) {
  out_.insert(out_.end(), v.begin(), v.end());
  return *this;
}
Encoder& Encoder::option_u64(const std::optional<uint64_t>& v) {
  if (!v) return u8(0);
  u8(1);
  return u64(*v);
}
Encoder& Encoder::option_str(const std::optional<std::string>& v) {
  if (!v) return u8(0);
  u8(1);
  return str(*v);
}
Encoder& Encoder::str_vec(const std::vector<std::string>& v) {
  compact(v.size());
  for (const auto& s : v) str(s);
  return *this;
}

Result<ByteView> Decoder::take(size_t n, const char* what) {
  if (n > remaining()) {
    return make_error("SCALE: truncated input reading " + std::string(what) + " at offset " +
                      std::to_string(pos_) + " (need " + std::to_string(n) + " bytes, have " +
                      std::to_string(remaining()) + ")");
  }
  ByteView v = in_.subspan(pos_, n);
  pos_ += n;
  return v;
}

Result<uint8_t> Decoder::u8() {
  TRY_ASSIGN(auto v, take(1, "u8"));
  return v[0];
}
Result<bool> Decoder::boolean() {
  size_t at = pos_;
  TRY_ASSIGN(auto v, take(1, "bool"));
  if (v[0] > 1) return make_error("SCALE: invalid bool byte " + std::to_string(v[0]) + " at offset " + std::to_string(at));
  return v[0] == 1;
}
Result<uint16_t> Decoder::u16() {
  TRY_ASSIGN(auto v, take(2, "u16"));
  return static_cast<uint16_t>(v[0] | (v[1] << 8));
}
Result<uint32_t> Decoder::u32() {
  TRY_ASSIGN(auto v, take(4, "u32"));
  uint32_t r = 0;
  for (int i = 3; i >= 0; --i) r = (r << 8) | v[i];
  return r;
}
Result<uint64_t> Decoder::u64() {
  TRY_ASSIGN(auto v, take(8, "u64"));
  uint64_t r = 0;
  for (int i = 7; i >= 0; --i) r = (r << 8) | v[i];
  return r;
}
Result<uint64_t> Decoder::compact() {
  size_t at = pos_;
  TRY_ASSIGN(auto first, take(1, "compact integer"));
  uint8_t mode = first[0] & 3;
  auto non_canonical = [&]() {
    return make_error("SCALE: non-canonical compact integer at offset " + std::to_string(at));
  };
  if (mode == 0) return static_cast<uint64_t>(first[0] >> 2);
  if (mode == 1) {
    pos_ = at;
    TRY_ASSIGN(uint16_t v, u16());
    uint64_t r = v >> 2;
    if (r < (1u << 6)) return non_canonical();
    return r;
  }
  if (mode == 2) {
    pos_ = at;
    TRY_ASSIGN(uint32_t v, u32());
    uint64_t r = v >> 2;
    if (r < (1u << 14)) return non_canonical();
    return r;
  }
  size_t n = (first[0] >> 2) + 4;
  if (n > 8) return make_error("SCALE: compact integer wider than 64 bits at offset " + std::to_string(at));
  TRY_ASSIGN(auto v, take(n, "compact integer"));
  uint64_t r = 0;
  for (size_t i = n; i-- > 0;) r = (r << 8) | v[i];
  if (r < (1u << 30) || v[n - 1] == 0) return non_canonical();
  return r;
}
Result<uint64_t> Decoder::vec_len(size_t min_item_size) {
  size_t at = pos_;
  TRY_ASSIGN(uint64_t n, compact());
  if (min_item_size > 0 && n > remaining() / min_item_size) {
    return make_error("SCALE: length " + std::to_string(n) + " at offset " + std::to_string(at) +
                      " exceeds the remaining input (" + std::to_string(remaining()) + " bytes)");
  }
  return n;
}
Result<Bytes> Decoder::bytes() {
  TRY_ASSIGN(uint64_t n, vec_len(1));
  TRY_ASSIGN(auto v, take(static_cast<size_t>(n), "Vec<u8>"));
  return Bytes(v.begin(), v.end());
}
Result<std::string> Decoder::str() {
  size_t at = pos_;
  TRY_ASSIGN(uint64_t n, vec_len(1));
  TRY_ASSIGN(auto v, take(static_cast<size_t>(n), "String"));
  std::string s(v.begin(), v.end());
  if (!is_valid_utf8(s)) return make_error("SCALE: String at offset " + std::to_string(at) + " is not valid UTF-8");
  return s;
}
Result<Bytes> Decoder::raw(size_t n) {
  TRY_ASSIGN(auto v, take(n, "fixed-size array"));
  return Bytes(v.begin(), v.end());
}
Bytes Decoder::rest() {
  Bytes r(in_.begin() + static_cast<ptrdiff_t>(pos_), in_.end());
  pos_ = in_.size();
  return r;
}
Result<std::optional<uint64_t>> Decoder::option_u64() {
  size_t at = pos_;
  TRY_ASSIGN(uint8_t tag, u8());
  if (tag == 0) return std::optional<uint64_t>{};
  if (tag != 1) return make_error("SCALE: invalid Option tag " + std::to_string(tag) + " at offset " + std::to_string(at));
  TRY_ASSIGN(uint64_t v, u64());
  return std::optional<uint64_t>{v};
}
Result<std::optional<std::string>> Decoder::option_str() {
  size_t at = pos_;
  TRY_ASSIGN(uint8_t tag, u8());
  if (tag == 0) return std::optional<std::string>{};
  if (tag != 1) return make_error("SCALE: invalid Option tag " + std::to_string(tag) + " at offset " + std::to_string(at));
  TRY_ASSIGN(std::string v, str());
  return std::optional<std::string>{std::move(v)};
}
Result<std::vector<std::string>> Decoder::str_vec() {
  TRY_ASSIGN(uint64_t n, vec_len(1));
  std::vector<std::string> out;
  out.reserve(static_cast<size_t>(n));
  for (uint64_t i = 0; i < n; ++i) {
    TRY_ASSIGN(std::string s, str());
    out.push_back(std::move(s));
  }
  return out;
}
Status Decoder::finish() const {
  if (!at_end()) {
    return make_error("SCALE: " + std::to_string(remaining()) + " trailing bytes after offset " + std::to_string(pos_));
  }
  return Status::Ok();
}

bool is_valid_utf8(std::string_view s) {
  size_t i = 0;
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  while (i < s.size()) {
    unsigned char c = p[i];
    size_t n;
    uint32_t cp;
    if (c < 0x80) { ++i; continue; }
    if ((c & 0xE0) == 0xC0) { n = 1; cp = c & 0x1F; }
    else if ((c & 0xF0) == 0xE0) { n = 2; cp = c & 0x0F; }
    else if ((c & 0xF8) == 0xF0) { n = 3; cp = c & 0x07; }
    else return false;
    if (i + n >= s.size()) return false;  // truncated sequence
    for (size_t k = 1; k <= n; ++k) {
      if ((p[i + k] & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (p[i + k] & 0x3F);
    }
    if ((n == 1 && cp < 0x80) || (n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000)) return false;  // overlong
    if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += n + 1;
  }
  return true;
}

}  // namespace dstack::attest::scale
