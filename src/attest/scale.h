// SCALE codec (Parity): the subset dstack uses on the wire (spec §5.6, §8.6).
// bool = 1 byte; u8/u32/u64 little endian; Option = 0x00 | 0x01 + value; Vec/String = compact length + items;
// compact ints: <2^6 single byte, <2^14 two bytes, <2^30 four bytes, else big-integer mode.
// The decoder is bounds-checked: every read reports a precise error instead of reading past the input.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/bytes.h"
#include "base/result.h"

namespace dstack::attest::scale {

class Encoder {
 public:
  Encoder& u8(uint8_t v);
  Encoder& boolean(bool v);
  Encoder& u16(uint16_t v);
  Encoder& u32(uint32_t v);
  Encoder& u64(uint64_t v);
  Encoder& compact(uint64_t v);
  Encoder& bytes(ByteView v);          // Vec<u8>: compact length + bytes
  Encoder& str(std::string_view v);    // String: compact length + UTF-8 bytes
  Encoder& raw(ByteView v);            // fixed-size array [u8; N] or trailing data: no length prefix
  Encoder& option_u64(const std::optional<uint64_t>& v);
  Encoder& option_str(const std::optional<std::string>& v);
  Encoder& str_vec(const std::vector<std::string>& v);  // Vec<String>

  const Bytes& data() const { return out_; }
  Bytes take() { return std::move(out_); }

 private:
  Bytes out_;
};

class Decoder {
 public:
  explicit Decoder(ByteView in) : in_(in) {}

  Result<uint8_t> u8();
  Result<bool> boolean();              // rejects bytes other than 0/1
  Result<uint16_t> u16();
  Result<uint32_t> u32();
  Result<uint64_t> u64();
  Result<uint64_t> compact();          // rejects non-canonical (over-long) encodings
  Result<Bytes> bytes();               // Vec<u8>
  Result<std::string> str();           // String (must be valid UTF-8)
  Result<Bytes> raw(size_t n);         // exactly n bytes
  Bytes rest();                        // everything not consumed yet
  Result<std::optional<uint64_t>> option_u64();
  Result<std::optional<std::string>> option_str();
  Result<std::vector<std::string>> str_vec();
  // Length prefix of a Vec<T>; checks it against the remaining input assuming each item takes >= min_item_size.
  Result<uint64_t> vec_len(size_t min_item_size = 1);

  size_t position() const { return pos_; }
  size_t remaining() const { return in_.size() - pos_; }
  bool at_end() const { return pos_ == in_.size(); }
  // Error if any input is left ("trailing bytes").
  Status finish() const;

 private:
  Result<ByteView> take(size_t n, const char* what);
  ByteView in_;
  size_t pos_ = 0;
};

bool is_valid_utf8(std::string_view s);

}  // namespace dstack::attest::scale
