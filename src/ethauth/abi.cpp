#include "ethauth/abi.h"

#include <algorithm>
#include <charconv>

#include "crypto/hash.h"

namespace dstack::ethauth::abi {
namespace {

constexpr size_t kWord = 32;

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// Splits at top-level commas (outside parentheses). Error on unbalanced parentheses.
Result<std::vector<std::string_view>> split_top(std::string_view s) {
  std::vector<std::string_view> parts;
  int depth = 0;
  size_t start = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '(') ++depth;
    else if (s[i] == ')') {
      if (--depth < 0) return make_error("unbalanced ')' in ABI type list '" + std::string(s) + "'");
    } else if (s[i] == ',' && depth == 0) {
      parts.push_back(trim(s.substr(start, i - start)));
      start = i + 1;
    }
  }
  if (depth != 0) return make_error("unbalanced '(' in ABI type list '" + std::string(s) + "'");
  parts.push_back(trim(s.substr(start)));
  return parts;
}

// Index of the ')' matching the '(' at s[0], or npos.
size_t matching_paren(std::string_view s) {
  int depth = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '(') ++depth;
    else if (s[i] == ')' && --depth == 0) return i;
  }
  return std::string_view::npos;
}

Result<size_t> parse_num(std::string_view s, const std::string& what) {
  size_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size() || s.empty())
    return make_error("invalid " + what + " '" + std::string(s) + "' in ABI type");
  return v;
}

Result<Type> parse_base(std::string_view s) {
  Type t;
  auto starts = [&](std::string_view p) { return s.substr(0, p.size()) == p; };
  if (s == "bool") { t.kind = Kind::Bool; return t; }
  if (s == "address") { t.kind = Kind::Address; return t; }
  if (s == "string") { t.kind = Kind::String; return t; }
  if (s == "bytes") { t.kind = Kind::Bytes; return t; }
  if (starts("bytes")) {
    TRY_ASSIGN(size_t n, parse_num(s.substr(5), "bytesN size"));
    if (n < 1 || n > 32) return make_error("bytesN size must be 1..32, got '" + std::string(s) + "'");
    t.kind = Kind::FixedBytes;
    t.size = n;
    return t;
  }
  bool is_uint = starts("uint");
  if (is_uint || starts("int")) {
    t.kind = is_uint ? Kind::Uint : Kind::Int;
    std::string_view bits = s.substr(is_uint ? 4 : 3);
    if (bits.empty()) { t.size = 256; return t; }
    TRY_ASSIGN(size_t n, parse_num(bits, "integer width"));
    if (n < 8 || n > 256 || n % 8 != 0) return make_error("integer width must be 8..256 step 8, got '" + std::string(s) + "'");
    t.size = n;
    return t;
  }
  return make_error("unsupported ABI type '" + std::string(s) + "'");
}

size_t head_size(const Type& t);

size_t static_size(const Type& t) {
  switch (t.kind) {
    case Kind::Tuple: {
      size_t n = 0;
      for (const auto& c : t.children) n += head_size(c);
      return n;
    }
    case Kind::Array: return static_cast<size_t>(t.fixed_len) * static_size(t.children[0]);
    default: return kWord;
  }
}

size_t head_size(const Type& t) { return t.is_dynamic() ? kWord : static_size(t); }

void put_u64_word(Bytes& out, uint64_t v) {
  uint8_t w[kWord] = {};
  for (int i = 0; i < 8; ++i) w[31 - i] = static_cast<uint8_t>(v >> (8 * i));
  out.insert(out.end(), w, w + kWord);
}

void put_padded(Bytes& out, ByteView data) {
  out.insert(out.end(), data.begin(), data.end());
  size_t pad = (kWord - data.size() % kWord) % kWord;
  out.insert(out.end(), pad, 0);
}

Status encode_tuple(const std::vector<const Type*>& types, const std::vector<Value>& values, Bytes& out);

Status encode_one(const Type& t, const Value& v, Bytes& out) {
  const std::string tn = t.canonical();
  bool kind_ok = v.kind == t.kind || (t.kind == Kind::Int && v.kind == Kind::Uint);
  if (!kind_ok) return make_error("ABI value does not match type " + tn);
  switch (t.kind) {
    case Kind::Uint:
    case Kind::Int: {
      if (v.bytes.size() != kWord) return make_error("ABI " + tn + " value must be a 32-byte word");
      if (t.kind == Kind::Uint) {
        size_t high = (256 - t.size) / 8;
        for (size_t i = 0; i < high; ++i)
          if (v.bytes[i] != 0) return make_error("ABI value does not fit in " + tn);
      }
      out.insert(out.end(), v.bytes.begin(), v.bytes.end());
      return {};
    }
    case Kind::Bool: put_u64_word(out, v.boolean ? 1 : 0); return {};
    case Kind::Address: {
      if (v.bytes.size() != 20) return make_error("ABI address must be 20 bytes, got " + std::to_string(v.bytes.size()));
      out.insert(out.end(), 12, 0);
      out.insert(out.end(), v.bytes.begin(), v.bytes.end());
      return {};
    }
    case Kind::FixedBytes: {
      if (v.bytes.size() != t.size)
        return make_error("ABI " + tn + " value must be " + std::to_string(t.size) + " bytes, got " + std::to_string(v.bytes.size()));
      put_padded(out, v.bytes);
      return {};
    }
    case Kind::Bytes:
      put_u64_word(out, v.bytes.size());
      put_padded(out, v.bytes);
      return {};
    case Kind::String:
      put_u64_word(out, v.str.size());
      put_padded(out, as_view(v.str));
      return {};
    case Kind::Array: {
      if (t.fixed_len >= 0) {
        if (v.items.size() != static_cast<size_t>(t.fixed_len))
          return make_error("ABI " + tn + " needs exactly " + std::to_string(t.fixed_len) + " elements");
      } else {
        put_u64_word(out, v.items.size());
      }
      std::vector<const Type*> types(v.items.size(), &t.children[0]);
      return encode_tuple(types, v.items, out);
    }
    case Kind::Tuple: {
      if (v.items.size() != t.children.size())
        return make_error("ABI tuple " + tn + " needs " + std::to_string(t.children.size()) + " members, got " +
                          std::to_string(v.items.size()));
      std::vector<const Type*> types;
      for (const auto& c : t.children) types.push_back(&c);
      return encode_tuple(types, v.items, out);
    }
  }
  return make_error("unknown ABI kind");
}

Status encode_tuple(const std::vector<const Type*>& types, const std::vector<Value>& values, Bytes& out) {
  if (types.size() != values.size())
    return make_error("ABI encode: " + std::to_string(types.size()) + " types but " + std::to_string(values.size()) + " values");
  size_t heads = 0;
  for (const Type* t : types) heads += head_size(*t);
  Bytes head, tail;
  head.reserve(heads);
  for (size_t i = 0; i < types.size(); ++i) {
    if (types[i]->is_dynamic()) {
      put_u64_word(head, heads + tail.size());
      TRY(encode_one(*types[i], values[i], tail));
    } else {
      TRY(encode_one(*types[i], values[i], head));
    }
  }
  out.insert(out.end(), head.begin(), head.end());
  out.insert(out.end(), tail.begin(), tail.end());
  return {};
}

// ---- decoding ----

struct Decoder {
  size_t budget_bytes;  // total payload bytes (bytes/string) still allowed; defeats aliasing amplification
  size_t budget_items;  // total array elements still allowed
};

Result<uint64_t> read_u64(ByteView data, size_t pos, const char* what) {
  if (pos + kWord > data.size()) return make_error(std::string("ABI data too short reading ") + what);
  for (size_t i = pos; i < pos + 24; ++i)
    if (data[i] != 0) return make_error(std::string("ABI ") + what + " is too large");
  uint64_t v = 0;
  for (size_t i = pos + 24; i < pos + kWord; ++i) v = (v << 8) | data[i];
  return v;
}

Result<std::vector<Value>> decode_tuple(const std::vector<const Type*>& types, ByteView data, Decoder& d);

Result<Value> decode_one(const Type& t, ByteView data, size_t pos, Decoder& d) {
  const std::string tn = t.canonical();
  Value v;
  v.kind = t.kind;
  auto need = [&](size_t n) -> Status {
    if (pos + n > data.size() || pos + n < pos) return make_error("ABI data too short decoding " + tn);
    return {};
  };
  switch (t.kind) {
    case Kind::Uint:
    case Kind::Int: {
      TRY(need(kWord));
      v.bytes.assign(data.begin() + pos, data.begin() + pos + kWord);
      size_t high = (256 - t.size) / 8;
      if (t.kind == Kind::Uint) {
        for (size_t i = 0; i < high; ++i)
          if (v.bytes[i] != 0) return make_error("ABI " + tn + " value has dirty high bits");
      } else if (high > 0) {
        uint8_t fill = (v.bytes[high] & 0x80) ? 0xff : 0x00;
        for (size_t i = 0; i < high; ++i)
          if (v.bytes[i] != fill) return make_error("ABI " + tn + " value is not sign-extended");
      }
      return v;
    }
    case Kind::Bool: {
      TRY_ASSIGN(uint64_t b, read_u64(data, pos, "bool"));
      if (b > 1) return make_error("ABI bool value must be 0 or 1");
      v.boolean = b == 1;
      return v;
    }
    case Kind::Address: {
      TRY(need(kWord));
      for (size_t i = 0; i < 12; ++i)
        if (data[pos + i] != 0) return make_error("ABI address has dirty high bytes");
      v.bytes.assign(data.begin() + pos + 12, data.begin() + pos + kWord);
      return v;
    }
    case Kind::FixedBytes: {
      TRY(need(kWord));
      for (size_t i = t.size; i < kWord; ++i)
        if (data[pos + i] != 0) return make_error("ABI " + tn + " value has dirty padding");
      v.bytes.assign(data.begin() + pos, data.begin() + pos + t.size);
      return v;
    }
    case Kind::Bytes:
    case Kind::String: {
      TRY_ASSIGN(uint64_t len, read_u64(data, pos, "length"));
      if (len > data.size() - pos - kWord) return make_error("ABI " + tn + " length " + std::to_string(len) + " exceeds data");
      if (len > d.budget_bytes) return make_error("ABI data decodes to more bytes than it contains (aliased offsets)");
      d.budget_bytes -= len;
      auto b = data.begin() + pos + kWord;
      if (t.kind == Kind::Bytes) v.bytes.assign(b, b + len);
      else v.str.assign(b, b + len);
      return v;
    }
    case Kind::Array: {
      uint64_t n;
      size_t start = pos;
      if (t.fixed_len >= 0) {
        n = static_cast<uint64_t>(t.fixed_len);
      } else {
        TRY_ASSIGN(n, read_u64(data, pos, "array length"));
        start = pos + kWord;
      }
      size_t elem_head = head_size(t.children[0]);
      if (start > data.size() || n > (data.size() - start) / elem_head)
        return make_error("ABI " + tn + " length " + std::to_string(n) + " exceeds data");
      if (n > d.budget_items) return make_error("ABI data decodes to more elements than it contains (aliased offsets)");
      d.budget_items -= n;
      std::vector<const Type*> types(n, &t.children[0]);
      TRY_ASSIGN(v.items, decode_tuple(types, data.subspan(start), d));
      return v;
    }
    case Kind::Tuple: {
      if (pos > data.size()) return make_error("ABI data too short decoding " + tn);
      std::vector<const Type*> types;
      for (const auto& c : t.children) types.push_back(&c);
      TRY_ASSIGN(v.items, decode_tuple(types, data.subspan(pos), d));
      return v;
    }
  }
  return make_error("unknown ABI kind");
}

Result<std::vector<Value>> decode_tuple(const std::vector<const Type*>& types, ByteView data, Decoder& d) {
  std::vector<Value> out;
  out.reserve(types.size());
  size_t pos = 0;
  for (const Type* t : types) {
    if (t->is_dynamic()) {
      TRY_ASSIGN(uint64_t off, read_u64(data, pos, "offset"));
      if (off >= data.size()) return make_error("ABI offset " + std::to_string(off) + " points past the data");
      TRY_ASSIGN(Value v, decode_one(*t, data.subspan(off), 0, d));
      out.push_back(std::move(v));
      pos += kWord;
    } else {
      if (t->kind == Kind::Tuple || t->kind == Kind::Array) {
        if (pos + static_size(*t) > data.size()) return make_error("ABI data too short decoding " + t->canonical());
        TRY_ASSIGN(Value v, decode_one(*t, data.subspan(pos, static_size(*t)), 0, d));
        out.push_back(std::move(v));
      } else {
        TRY_ASSIGN(Value v, decode_one(*t, data, pos, d));
        out.push_back(std::move(v));
      }
      pos += static_size(*t);
    }
  }
  return out;
}

}  // namespace

bool Type::is_dynamic() const {
  switch (kind) {
    case Kind::Bytes:
    case Kind::String: return true;
    case Kind::Array: return fixed_len < 0 || children[0].is_dynamic();
    case Kind::Tuple:
      return std::any_of(children.begin(), children.end(), [](const Type& c) { return c.is_dynamic(); });
    default: return false;
  }
}

std::string Type::canonical() const {
  switch (kind) {
    case Kind::Uint: return "uint" + std::to_string(size);
    case Kind::Int: return "int" + std::to_string(size);
    case Kind::Bool: return "bool";
    case Kind::Address: return "address";
    case Kind::FixedBytes: return "bytes" + std::to_string(size);
    case Kind::Bytes: return "bytes";
    case Kind::String: return "string";
    case Kind::Array:
      return children[0].canonical() + (fixed_len < 0 ? "[]" : "[" + std::to_string(fixed_len) + "]");
    case Kind::Tuple: {
      std::string s = "(";
      for (size_t i = 0; i < children.size(); ++i) s += (i ? "," : "") + children[i].canonical();
      return s + ")";
    }
  }
  return "?";
}

Result<Type> parse_type(std::string_view s) {
  s = trim(s);
  if (s.empty()) return make_error("empty ABI type");
  Type t;
  size_t rest;
  if (s[0] == '(') {
    size_t close = matching_paren(s);
    if (close == std::string_view::npos) return make_error("unbalanced '(' in ABI type '" + std::string(s) + "'");
    TRY_ASSIGN(t.children, parse_type_list(s.substr(0, close + 1)));
    t.kind = Kind::Tuple;
    rest = close + 1;
  } else {
    rest = std::min(s.find('['), s.size());
    TRY_ASSIGN(t, parse_base(s.substr(0, rest)));
  }
  while (rest < s.size()) {
    if (s[rest] != '[') return make_error("unexpected '" + std::string(s.substr(rest)) + "' in ABI type");
    size_t close = s.find(']', rest);
    if (close == std::string_view::npos) return make_error("missing ']' in ABI type '" + std::string(s) + "'");
    Type arr;
    arr.kind = Kind::Array;
    std::string_view len = s.substr(rest + 1, close - rest - 1);
    if (!len.empty()) {
      TRY_ASSIGN(size_t n, parse_num(len, "array length"));
      if (n == 0 || n > 65536) return make_error("fixed array length must be 1..65536 in '" + std::string(s) + "'");
      arr.fixed_len = static_cast<long>(n);
    }
    arr.children.push_back(std::move(t));
    t = std::move(arr);
    rest = close + 1;
  }
  return t;
}

Result<std::vector<Type>> parse_type_list(std::string_view s) {
  s = trim(s);
  if (!s.empty() && s[0] == '(' && matching_paren(s) == s.size() - 1) s = trim(s.substr(1, s.size() - 2));
  std::vector<Type> out;
  if (s.empty()) return out;
  TRY_ASSIGN(auto parts, split_top(s));
  for (auto p : parts) {
    TRY_ASSIGN(Type t, parse_type(p));
    out.push_back(std::move(t));
  }
  return out;
}

Value Value::uint(uint64_t v) {
  Bytes w;
  put_u64_word(w, v);
  return uint_word(std::move(w));
}
Value Value::uint_word(Bytes word32) {
  Value v;
  v.kind = Kind::Uint;
  v.bytes = std::move(word32);
  return v;
}
Value Value::boolean_(bool b) {
  Value v;
  v.kind = Kind::Bool;
  v.boolean = b;
  return v;
}
Value Value::address(Bytes addr20) {
  Value v;
  v.kind = Kind::Address;
  v.bytes = std::move(addr20);
  return v;
}
Value Value::fixed_bytes(Bytes b) {
  Value v;
  v.kind = Kind::FixedBytes;
  v.bytes = std::move(b);
  return v;
}
Value Value::bytes_(Bytes b) {
  Value v;
  v.kind = Kind::Bytes;
  v.bytes = std::move(b);
  return v;
}
Value Value::string_(std::string s) {
  Value v;
  v.kind = Kind::String;
  v.str = std::move(s);
  return v;
}
Value Value::array(std::vector<Value> items) {
  Value v;
  v.kind = Kind::Array;
  v.items = std::move(items);
  return v;
}
Value Value::tuple(std::vector<Value> items) {
  Value v;
  v.kind = Kind::Tuple;
  v.items = std::move(items);
  return v;
}

Result<uint64_t> Value::as_u64() const {
  if ((kind != Kind::Uint && kind != Kind::Int) || bytes.size() != kWord) return make_error("ABI value is not an integer");
  for (size_t i = 0; i < 24; ++i)
    if (bytes[i] != 0) return make_error("ABI integer does not fit in 64 bits");
  uint64_t v = 0;
  for (size_t i = 24; i < kWord; ++i) v = (v << 8) | bytes[i];
  return v;
}

Result<Bytes> encode(const std::vector<Type>& types, const std::vector<Value>& values) {
  std::vector<const Type*> ptrs;
  for (const auto& t : types) ptrs.push_back(&t);
  Bytes out;
  TRY(encode_tuple(ptrs, values, out));
  return out;
}

Result<std::vector<Value>> decode(const std::vector<Type>& types, ByteView data) {
  std::vector<const Type*> ptrs;
  for (const auto& t : types) ptrs.push_back(&t);
  Decoder d{data.size(), data.size() / kWord};
  return decode_tuple(ptrs, data, d);
}

Bytes selector(std::string_view signature) {
  Bytes h = crypto::keccak256(as_view(signature));
  h.resize(4);
  return h;
}

Result<Bytes> encode_call(std::string_view signature, const std::vector<Value>& args) {
  size_t open = signature.find('(');
  if (open == 0 || open == std::string_view::npos || signature.back() != ')')
    return make_error("invalid function signature '" + std::string(signature) + "' (expected name(type,...))");
  TRY_ASSIGN(auto types, parse_type_list(signature.substr(open)));
  TRY_ASSIGN(Bytes body, encode(types, args));
  Bytes out = selector(signature);
  out.insert(out.end(), body.begin(), body.end());
  return out;
}

Result<std::string> decode_revert_reason(ByteView data) {
  static const uint8_t kErrorSel[4] = {0x08, 0xc3, 0x79, 0xa0};
  if (data.size() < 4 || !std::equal(kErrorSel, kErrorSel + 4, data.begin()))
    return make_error("revert data is not Error(string)");
  TRY_ASSIGN(auto types, parse_type_list("(string)"));
  TRY_ASSIGN(auto vals, decode(types, data.subspan(4)));
  return vals[0].str;
}

}  // namespace dstack::ethauth::abi
