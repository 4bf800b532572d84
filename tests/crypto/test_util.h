// Helpers shared by the crypto tests.
#pragma once

#include <gtest/gtest.h>

#include "base/bytes.h"

namespace dstack::crypto::testing {

inline Bytes hex(std::string_view h) {
  auto r = from_hex(h);
  EXPECT_TRUE(r.ok()) << "bad hex in test: " << h;
  return r.ok() ? *r : Bytes{};
}

}  // namespace dstack::crypto::testing
