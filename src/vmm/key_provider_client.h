// Client of the local key provider (spec §12): one request per TCP connection,
// u32_be(len) || JSON {"quote":[u8...]}  ->  u32_be(len) || JSON {"encrypted_key":[...],"provider_quote":[...]}.
#pragma once

#include <chrono>
#include <string>

#include "base/bytes.h"
#include "base/result.h"

namespace dstack::vmm {

struct SealingKeyResponse {
  Bytes encrypted_key;
  Bytes provider_quote;
};

Result<SealingKeyResponse> get_sealing_key(const std::string& host, uint16_t port, ByteView quote,
                                           std::chrono::milliseconds timeout);

}  // namespace dstack::vmm
