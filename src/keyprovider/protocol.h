// Wire format of the local key provider (spec §12), shared by server and client.
//   request  = u32_be(len) || JSON {"quote":[u8, ...]}                 len 1..8 MiB, quote <= 1 MiB
//   response = u32_be(len) || JSON {"encrypted_key":[...],"provider_quote":[...]}
//   error    = u32_be(len) || JSON {"error":"<message>"}   (our addition: sent before closing on bad input)
// Byte strings are JSON arrays of integers 0..255. One request per connection.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

#include "base/bytes.h"
#include "base/result.h"
#include "keyprovider/client.h"

namespace dstack::keyprovider {

inline constexpr size_t kMaxFrameLen = 8u * 1024 * 1024;
inline constexpr size_t kMaxQuoteLen = 1024u * 1024;

// 4-byte big-endian length prefix + payload. Errors if the payload is empty or longer than kMaxFrameLen.
Result<Bytes> encode_frame(std::string_view payload);
// Validates a 4-byte length prefix: 1..max_len.
Result<uint32_t> decode_frame_length(ByteView header4, size_t max_len = kMaxFrameLen);

std::string encode_request(ByteView quote);
// Returns the quote. Errors: invalid JSON, not an object, missing "quote", non-array, element not an integer
// 0..255, empty quote, quote longer than kMaxQuoteLen, nesting deeper than a request can have.
Result<Bytes> decode_request(std::string_view json);

std::string encode_response(const SealingKeyResponse& r);
// An error frame becomes an Error("key provider refused the request: <message>").
Result<SealingKeyResponse> decode_response(std::string_view json);

std::string encode_error(std::string_view message);

namespace detail {
using Clock = std::chrono::steady_clock;
// Blocking-with-deadline socket I/O (poll + non-blocking fd). Timeouts and EOF are Errors.
Status write_all(int fd, ByteView data, Clock::time_point deadline);
Status read_exact(int fd, uint8_t* out, size_t n, Clock::time_point deadline);
// Reads one frame (length checked before the body is read).
Result<std::string> read_frame(int fd, Clock::time_point deadline, size_t max_len = kMaxFrameLen);
Status write_frame(int fd, std::string_view payload, Clock::time_point deadline);
// TCP connect (host name or address) with a deadline; the returned fd is non-blocking, close-on-exec.
Result<int> connect_tcp(const std::string& host, uint16_t port, Clock::time_point deadline);
}  // namespace detail

}  // namespace dstack::keyprovider
