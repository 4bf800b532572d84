#include "keyprovider/protocol.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>

namespace dstack::keyprovider {

using nlohmann::json;

Result<Bytes> encode_frame(std::string_view payload) {
  if (payload.empty()) return make_error("key provider frame: empty payload");
  if (payload.size() > kMaxFrameLen)
    return make_error("key provider frame: payload of " + std::to_string(payload.size()) + " bytes exceeds " +
                      std::to_string(kMaxFrameLen));
  Bytes out(4 + payload.size());
  uint32_t n = static_cast<uint32_t>(payload.size());
  out[0] = static_cast<uint8_t>(n >> 24);
  out[1] = static_cast<uint8_t>(n >> 16);
  out[2] = static_cast<uint8_t>(n >> 8);
  out[3] = static_cast<uint8_t>(n);
  std::memcpy(out.data() + 4, payload.data(), payload.size());
  return out;
}

Result<uint32_t> decode_frame_length(ByteView h, size_t max_len) {
  if (h.size() != 4) return make_error("key provider frame: length prefix must be 4 bytes");
  uint32_t n = (uint32_t{h[0]} << 24) | (uint32_t{h[1]} << 16) | (uint32_t{h[2]} << 8) | uint32_t{h[3]};
  if (n == 0) return make_error("key provider frame: zero length");
  if (n > max_len)
    return make_error("key provider frame: length " + std::to_string(n) + " exceeds the limit of " +
                      std::to_string(max_len) + " bytes");
  return n;
}

namespace {

// Maximum bracket nesting outside strings; rejects pathological inputs before the JSON parser sees them.
size_t nesting_depth(std::string_view s) {
  size_t depth = 0, max_depth = 0;
  bool in_str = false, esc = false;
  for (char c : s) {
    if (in_str) {
      if (esc) esc = false;
      else if (c == '\\') esc = true;
      else if (c == '"') in_str = false;
      continue;
    }
    if (c == '"') in_str = true;
    else if (c == '[' || c == '{') max_depth = std::max(max_depth, ++depth);
    else if ((c == ']' || c == '}') && depth > 0) --depth;
  }
  return max_depth;
}

Result<json> parse_object(std::string_view text, const char* what) {
  if (nesting_depth(text) > 2) return make_error(std::string(what) + ": JSON nested too deeply");
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return make_error(std::string(what) + ": invalid JSON");
  if (!j.is_object()) return make_error(std::string(what) + ": expected a JSON object");
  return j;
}

Result<Bytes> byte_array(const json& obj, const char* field, size_t max_len, const char* what) {
  auto it = obj.find(field);
  if (it == obj.end()) return make_error(std::string(what) + ": missing field \"" + field + "\"");
  if (!it->is_array())
    return make_error(std::string(what) + ": \"" + field + "\" must be an array of byte values (0..255)");
  if (it->size() > max_len)
    return make_error(std::string(what) + ": \"" + field + "\" has " + std::to_string(it->size()) +
                      " bytes, limit " + std::to_string(max_len));
  Bytes out;
  out.reserve(it->size());
  for (size_t i = 0; i < it->size(); ++i) {
    const json& e = (*it)[i];
    bool ok = false;
    if (e.is_number_unsigned()) ok = e.get<uint64_t>() <= 255;
    else if (e.is_number_integer()) ok = e.get<int64_t>() >= 0 && e.get<int64_t>() <= 255;
    if (!ok)
      return make_error(std::string(what) + ": \"" + field + "\"[" + std::to_string(i) + "] is " + e.dump() +
                        ", expected an integer 0..255");
    out.push_back(static_cast<uint8_t>(e.get<uint64_t>()));
  }
  return out;
}

}  // namespace

std::string encode_request(ByteView quote) {
  json j;
  j["quote"] = Bytes(quote.begin(), quote.end());
  return j.dump();
}

Result<Bytes> decode_request(std::string_view text) {
  TRY_ASSIGN(json j, parse_object(text, "key provider request"));
  TRY_ASSIGN(Bytes q, byte_array(j, "quote", kMaxQuoteLen, "key provider request"));
  if (q.empty()) return make_error("key provider request: \"quote\" is empty");
  return q;
}

std::string encode_response(const SealingKeyResponse& r) {
  json j;
  j["encrypted_key"] = r.encrypted_key;
  j["provider_quote"] = r.provider_quote;
  return j.dump();
}

Result<SealingKeyResponse> decode_response(std::string_view text) {
  TRY_ASSIGN(json j, parse_object(text, "key provider response"));
  if (auto e = j.find("error"); e != j.end() && !j.contains("encrypted_key"))
    return make_error("key provider refused the request: " + (e->is_string() ? e->get<std::string>() : e->dump()));
  SealingKeyResponse r;
  TRY_ASSIGN(r.encrypted_key, byte_array(j, "encrypted_key", kMaxFrameLen, "key provider response"));
  TRY_ASSIGN(r.provider_quote, byte_array(j, "provider_quote", kMaxQuoteLen, "key provider response"));
  return r;
}

std::string encode_error(std::string_view message) {
  json j;
  j["error"] = std::string(message);
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

namespace detail {

namespace {
int remaining_ms(Clock::time_point deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  if (left <= 0) return 0;
  return left > 1'000'000 ? 1'000'000 : static_cast<int>(left);
}

// Waits for `events` on fd until the deadline. Error on timeout.
Status wait_fd(int fd, short events, Clock::time_point deadline, const char* what) {
  for (;;) {
    int ms = remaining_ms(deadline);
    if (ms == 0) return make_error(std::string("timed out ") + what);
    pollfd p{fd, events, 0};
    int r = ::poll(&p, 1, ms);
    if (r < 0) {
      if (errno == EINTR) continue;
      return make_error(std::string("poll failed ") + what + ": " + std::strerror(errno));
    }
    if (r == 0) return make_error(std::string("timed out ") + what);
    return Status::Ok();
  }
}
}  // namespace

Status write_all(int fd, ByteView data, Clock::time_point deadline) {
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = ::send(fd, data.data() + off, data.size() - off, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      off += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      TRY(wait_fd(fd, POLLOUT, deadline, "sending to the key provider connection"));
      continue;
    }
    return make_error(std::string("send failed: ") + std::strerror(errno));
  }
  return Status::Ok();
}

Status read_exact(int fd, uint8_t* out, size_t n, Clock::time_point deadline) {
  size_t off = 0;
  while (off < n) {
    ssize_t r = ::recv(fd, out + off, n - off, MSG_DONTWAIT);
    if (r > 0) {
      off += static_cast<size_t>(r);
      continue;
    }
    if (r == 0)
      return make_error("connection closed by peer after " + std::to_string(off) + " of " + std::to_string(n) +
                        " bytes");
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      TRY(wait_fd(fd, POLLIN, deadline, "reading from the key provider connection"));
      continue;
    }
    return make_error(std::string("recv failed: ") + std::strerror(errno));
  }
  return Status::Ok();
}

Result<std::string> read_frame(int fd, Clock::time_point deadline, size_t max_len) {
  uint8_t h[4];
  TRY(read_exact(fd, h, 4, deadline));
  TRY_ASSIGN(uint32_t n, decode_frame_length(ByteView(h, 4), max_len));
  std::string body(n, '\0');
  TRY(read_exact(fd, reinterpret_cast<uint8_t*>(body.data()), n, deadline));
  return body;
}

Status write_frame(int fd, std::string_view payload, Clock::time_point deadline) {
  TRY_ASSIGN(Bytes f, encode_frame(payload));
  return write_all(fd, f, deadline);
}

Result<int> connect_tcp(const std::string& host, uint16_t port, Clock::time_point deadline) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* res = nullptr;
  std::string service = std::to_string(port);
  // Loopback / literal addresses resolve locally; getaddrinfo has no timeout of its own.
  int rc = ::getaddrinfo(host.c_str(), service.c_str(), &hints, &res);
  if (rc != 0) return make_error("cannot resolve key provider host '" + host + "': " + ::gai_strerror(rc));
  std::string last_error = "no addresses";
  for (addrinfo* a = res; a; a = a->ai_next) {
    int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) {
      last_error = std::strerror(errno);
      continue;
    }
    if (::connect(fd, a->ai_addr, a->ai_addrlen) == 0) {
      ::freeaddrinfo(res);
      return fd;
    }
    if (errno == EINPROGRESS) {
      Status w = wait_fd(fd, POLLOUT, deadline, "connecting");
      if (w.ok()) {
        int err = 0;
        socklen_t len = sizeof(err);
        ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err == 0) {
          ::freeaddrinfo(res);
          return fd;
        }
        last_error = std::strerror(err);
      } else {
        last_error = w.error().message;
      }
    } else {
      last_error = std::strerror(errno);
    }
    ::close(fd);
  }
  ::freeaddrinfo(res);
  return make_error("cannot connect to the key provider at " + host + ":" + service + ": " + last_error +
                    " (is dstack-key-provider running? check [key_provider] address/port)");
}

}  // namespace detail
}  // namespace dstack::keyprovider
