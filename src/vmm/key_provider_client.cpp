#include "vmm/key_provider_client.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>

namespace dstack::vmm {
namespace {

using Clock = std::chrono::steady_clock;

int remaining_ms(Clock::time_point deadline) {
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return ms < 0 ? 0 : static_cast<int>(ms);
}

Status wait_fd(int fd, short events, Clock::time_point deadline, const std::string& what) {
  pollfd p{fd, events, 0};
  int r;
  do { r = ::poll(&p, 1, remaining_ms(deadline)); } while (r < 0 && errno == EINTR);
  if (r == 0) return make_error("timed out " + what);
  if (r < 0) return make_error(what + ": " + std::strerror(errno));
  return Status::Ok();
}

Status send_all(int fd, const std::string& data, Clock::time_point deadline) {
  size_t off = 0;
  while (off < data.size()) {
    TRY(wait_fd(fd, POLLOUT, deadline, "writing to the key provider"));
    ssize_t n = ::send(fd, data.data() + off, data.size() - off, MSG_NOSIGNAL);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n <= 0) return make_error(std::string("writing to the key provider: ") + std::strerror(errno));
    off += static_cast<size_t>(n);
  }
  return Status::Ok();
}

Status recv_exact(int fd, char* buf, size_t len, Clock::time_point deadline) {
  size_t off = 0;
  while (off < len) {
    TRY(wait_fd(fd, POLLIN, deadline, "reading from the key provider"));
    ssize_t n = ::recv(fd, buf + off, len - off, 0);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n == 0) return make_error("key provider closed the connection before a full response");
    if (n < 0) return make_error(std::string("reading from the key provider: ") + std::strerror(errno));
    off += static_cast<size_t>(n);
  }
  return Status::Ok();
}

Result<Bytes> byte_array(const nlohmann::json& j, const char* field) {
  if (!j.contains(field) || !j[field].is_array()) return make_error(std::string("key provider response lacks ") + field);
  Bytes out;
  for (const auto& v : j[field]) {
    if (!v.is_number_unsigned() || v.get<uint64_t>() > 255)
      return make_error(std::string("key provider response: ") + field + " is not a byte array");
    out.push_back(static_cast<uint8_t>(v.get<uint64_t>()));
  }
  return out;
}

}  // namespace

Result<SealingKeyResponse> get_sealing_key(const std::string& host, uint16_t port, ByteView quote,
                                           std::chrono::milliseconds timeout) {
  const std::string where = host + ":" + std::to_string(port);
  auto deadline = Clock::now() + timeout;
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (int rc = ::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res); rc != 0)
    return make_error("key provider " + where + ": cannot resolve: " + gai_strerror(rc));
  int fd = ::socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    ::freeaddrinfo(res);
    return make_error(std::string("socket: ") + std::strerror(errno));
  }
  struct Closer { int fd; ~Closer() { ::close(fd); } } closer{fd};
  int rc = ::connect(fd, res->ai_addr, res->ai_addrlen);
  ::freeaddrinfo(res);
  if (rc < 0 && errno != EINPROGRESS)
    return make_error("cannot connect to key provider " + where + ": " + std::strerror(errno) +
                      " (is it running? check [key_provider] in vmm.toml)");
  if (rc < 0) {
    auto s = wait_fd(fd, POLLOUT, deadline, "connecting to key provider " + where);
    if (!s) return s.error();
    int err = 0;
    socklen_t len = sizeof err;
    ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0)
      return make_error("cannot connect to key provider " + where + ": " + std::strerror(err) +
                        " (is it running? check [key_provider] in vmm.toml)");
  }
  nlohmann::json req;
  req["quote"] = std::vector<uint8_t>(quote.begin(), quote.end());
  std::string body = req.dump();
  uint32_t n = htonl(static_cast<uint32_t>(body.size()));
  std::string frame(reinterpret_cast<const char*>(&n), 4);
  frame += body;
  auto s = send_all(fd, frame, deadline);
  if (!s) return s.error().wrap("key provider " + where);
  char lenbuf[4];
  s = recv_exact(fd, lenbuf, 4, deadline);
  if (!s) return s.error().wrap("key provider " + where);
  uint32_t rlen;
  std::memcpy(&rlen, lenbuf, 4);
  rlen = ntohl(rlen);
  if (rlen == 0 || rlen > 8 * 1024 * 1024) return make_error("key provider " + where + ": bad response length " + std::to_string(rlen));
  std::string resp(rlen, '\0');
  s = recv_exact(fd, resp.data(), rlen, deadline);
  if (!s) return s.error().wrap("key provider " + where);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(resp);
  } catch (const std::exception& e) {
    return make_error("key provider " + where + ": response is not JSON: " + e.what());
  }
  if (j.contains("error")) return make_error("key provider " + where + " refused: " + j["error"].dump());
  SealingKeyResponse out;
  TRY_ASSIGN(out.encrypted_key, byte_array(j, "encrypted_key"));
  TRY_ASSIGN(out.provider_quote, byte_array(j, "provider_quote"));
  return out;
}

}  // namespace dstack::vmm
