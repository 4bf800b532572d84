// Ethereum contract ABI encoding/decoding (Solidity ABI spec v2): static and dynamic types, tuples with
// head/tail offsets, T[] and T[k] arrays. Types are given as canonical Solidity type strings, e.g.
// "(address,bytes32,string,string[])". Keccak-256 for selectors comes from crypto/hash.h.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "base/bytes.h"
#include "base/result.h"

namespace dstack::ethauth::abi {

enum class Kind { Uint, Int, Bool, Address, FixedBytes, Bytes, String, Array, Tuple };

struct Type {
  Kind kind = Kind::Uint;
  size_t size = 256;           // bits for Uint/Int; bytes for FixedBytes (1..32)
  long fixed_len = -1;         // Array: -1 = dynamic T[], otherwise T[k]
  std::vector<Type> children;  // Tuple members, or the single Array element type

  bool is_dynamic() const;
  std::string canonical() const;  // e.g. "(address,string[])"
};

// Parses one canonical type ("uint256", "bytes32", "string[]", "(address,bool)[2]", "uint" = uint256).
Result<Type> parse_type(std::string_view s);
// Parses a comma-separated list inside optional parentheses, e.g. "(bool,string)" or "bool,string" or "()".
Result<std::vector<Type>> parse_type_list(std::string_view s);

// A decoded / to-be-encoded value. Uint/Int are 32-byte big-endian two's complement words.
struct Value {
  Kind kind = Kind::Uint;
  Bytes bytes;                // Uint/Int (32 B word), Address (20 B), FixedBytes (N B), Bytes (any)
  std::string str;            // String
  bool boolean = false;       // Bool
  std::vector<Value> items;   // Array elements / Tuple members

  static Value uint(uint64_t v);
  static Value uint_word(Bytes word32);
  static Value boolean_(bool b);
  static Value address(Bytes addr20);
  static Value fixed_bytes(Bytes b);
  static Value bytes_(Bytes b);
  static Value string_(std::string s);
  static Value array(std::vector<Value> items);
  static Value tuple(std::vector<Value> items);

  // Low 64 bits of a Uint word; error if it does not fit.
  Result<uint64_t> as_u64() const;
};

// Encodes `values` as the tuple of `types` (a function's argument list). Values must match the types.
Result<Bytes> encode(const std::vector<Type>& types, const std::vector<Value>& values);
// Decodes `data` as the tuple of `types`. Strict: offsets/lengths bounds-checked, bool must be 0/1,
// address/uintN/bytesN padding must be clean.
Result<std::vector<Value>> decode(const std::vector<Type>& types, ByteView data);

// First 4 bytes of keccak256(signature); signature like "transfer(address,uint256)" (no spaces, no names).
Bytes selector(std::string_view signature);
// selector(signature) || encode(argument types of signature, args).
Result<Bytes> encode_call(std::string_view signature, const std::vector<Value>& args);
// Decodes a revert payload Error(string) (selector 08c379a0); returns the message or an error.
Result<std::string> decode_revert_reason(ByteView data);

}  // namespace dstack::ethauth::abi
