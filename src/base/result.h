// Errors as values: Result<T> holds either a T or an Error whose message tells the user what failed
// and what to check. Modelled on std::expected (C++23), which our C++20 toolchain lacks.
#pragma once

#include <cassert>
#include <string>
#include <utility>
#include <variant>

namespace dstack {

struct Error {
  std::string message;

  // Prefixes context, e.g. Error{"no such file"}.wrap("reading kms.toml") -> "reading kms.toml: no such file".
  Error wrap(const std::string& context) const { return Error{context + ": " + message}; }
};

inline Error make_error(std::string message) { return Error{std::move(message)}; }

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}          // NOLINT: implicit by design
  Result(Error error) : v_(std::move(error)) {}      // NOLINT: implicit by design

  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }

  T& value() & { assert(ok()); return std::get<0>(v_); }
  const T& value() const& { assert(ok()); return std::get<0>(v_); }
  T&& value() && { assert(ok()); return std::get<0>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

  const Error& error() const { assert(!ok()); return std::get<1>(v_); }
  T value_or(T fallback) const { return ok() ? std::get<0>(v_) : std::move(fallback); }

 private:
  std::variant<T, Error> v_;
};

// Result<void> equivalent.
class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(Error error) : error_(std::move(error)), ok_(false) {}  // NOLINT: implicit by design
  static Status Ok() { return Status(); }

  bool ok() const { return ok_; }
  explicit operator bool() const { return ok_; }
  const Error& error() const { assert(!ok_); return error_; }

 private:
  Error error_;
  bool ok_ = true;
};

}  // namespace dstack

// Early-return helpers. TRY_ASSIGN(var, expr) declares `var` from a Result or returns its error.
#define DSTACK_CONCAT_INNER(a, b) a##b
#define DSTACK_CONCAT(a, b) DSTACK_CONCAT_INNER(a, b)
#define TRY_ASSIGN_IMPL(tmp, decl, expr) \
  auto tmp = (expr);                     \
  if (!tmp.ok()) return tmp.error();     \
  decl = std::move(tmp).value()
#define TRY_ASSIGN(decl, expr) TRY_ASSIGN_IMPL(DSTACK_CONCAT(_try_, __LINE__), decl, expr)
#define TRY(expr)                                             \
  do {                                                        \
    auto _try_status = (expr);                                \
    if (!_try_status.ok()) return _try_status.error();        \
  } while (0)
