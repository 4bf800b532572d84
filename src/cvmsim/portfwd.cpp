#include "cvmsim/portfwd.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <spdlog/spdlog.h>

namespace dstack::cvmsim {

std::string Endpoint::describe() const {
  return unix_path.empty() ? host + ":" + std::to_string(port) : "unix:" + unix_path;
}

namespace {

Result<sockaddr_storage> make_addr(const Endpoint& ep, socklen_t& len) {
  sockaddr_storage ss{};
  if (!ep.unix_path.empty()) {
    auto* un = reinterpret_cast<sockaddr_un*>(&ss);
    if (ep.unix_path.size() >= sizeof(un->sun_path)) return make_error("unix socket path too long: " + ep.unix_path);
    un->sun_family = AF_UNIX;
    std::memcpy(un->sun_path, ep.unix_path.c_str(), ep.unix_path.size() + 1);
    len = sizeof(sockaddr_un);
    return ss;
  }
  auto* in4 = reinterpret_cast<sockaddr_in*>(&ss);
  if (inet_pton(AF_INET, ep.host.c_str(), &in4->sin_addr) == 1) {
    in4->sin_family = AF_INET;
    in4->sin_port = htons(ep.port);
    len = sizeof(sockaddr_in);
    return ss;
  }
  auto* in6 = reinterpret_cast<sockaddr_in6*>(&ss);
  std::string h = ep.host;
  if (h.size() > 2 && h.front() == '[' && h.back() == ']') h = h.substr(1, h.size() - 2);
  if (inet_pton(AF_INET6, h.c_str(), &in6->sin6_addr) == 1) {
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons(ep.port);
    len = sizeof(sockaddr_in6);
    return ss;
  }
  if (ep.host == "localhost") return make_addr(Endpoint::tcp("127.0.0.1", ep.port), len);
  return make_error("not an IP address: " + ep.host + " (use a literal such as 127.0.0.1)");
}

bool write_all(int fd, const char* p, size_t n) {
  while (n > 0) {
    ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      pollfd pf{fd, POLLOUT, 0};
      if (poll(&pf, 1, 5000) <= 0) return false;
      continue;
    }
    if (w <= 0) return false;
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

void relay(int a, int b, const std::atomic<bool>& stop, std::chrono::milliseconds idle) {
  bool a_open = true, b_open = true;  // whether we still read from a / b
  auto last = std::chrono::steady_clock::now();
  char buf[16384];
  while ((a_open || b_open) && !stop.load()) {
    pollfd p[2] = {{a, static_cast<short>(a_open ? POLLIN : 0), 0}, {b, static_cast<short>(b_open ? POLLIN : 0), 0}};
    int r = poll(p, 2, 250);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) break;
    if (r == 0) {
      if (std::chrono::steady_clock::now() - last > idle) break;
      continue;
    }
    last = std::chrono::steady_clock::now();
    bool fail = false;
    for (int i = 0; i < 2; ++i) {
      int from = i == 0 ? a : b, to = i == 0 ? b : a;
      bool& open = i == 0 ? a_open : b_open;
      if (!open || !(p[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      ssize_t n = recv(from, buf, sizeof buf, 0);
      if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
      if (n <= 0) {
        open = false;
        shutdown(to, SHUT_WR);
        if (n < 0) fail = true;
        continue;
      }
      if (!write_all(to, buf, static_cast<size_t>(n))) fail = true;
    }
    if (fail) break;
  }
  close(a);
  close(b);
}

}  // namespace

Result<int> connect_endpoint(const Endpoint& ep, std::chrono::milliseconds timeout) {
  socklen_t len = 0;
  TRY_ASSIGN(sockaddr_storage ss, make_addr(ep, len));
  auto deadline = std::chrono::steady_clock::now() + timeout;
  std::string last_err;
  for (;;) {
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return make_error(std::string("socket: ") + std::strerror(errno));
    int r = connect(fd, reinterpret_cast<sockaddr*>(&ss), len);
    if (r != 0 && errno == EINPROGRESS) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      pollfd pf{fd, POLLOUT, 0};
      int pr = poll(&pf, 1, static_cast<int>(std::max<int64_t>(left.count(), 1)));
      int err = 0;
      socklen_t el = sizeof err;
      if (pr > 0) getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el);
      else err = ETIMEDOUT;
      r = err == 0 ? 0 : -1;
      errno = err;
    }
    if (r == 0) {
      fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);  // callers get a blocking socket
      if (ep.unix_path.empty()) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      }
      return fd;
    }
    last_err = std::strerror(errno);
    int e = errno;
    close(fd);
    bool retry = e == ECONNREFUSED || e == ENOENT || e == EAGAIN;
    if (!retry || std::chrono::steady_clock::now() + std::chrono::milliseconds(50) >= deadline)
      return make_error("connecting to " + ep.describe() + ": " + last_err);
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

Forwarder::Forwarder(Endpoint listen, Endpoint target, ForwarderOptions opts)
    : listen_(std::move(listen)), target_(std::move(target)), opts_(opts) {}

Forwarder::~Forwarder() { stop(); }

Status Forwarder::start() {
  socklen_t len = 0;
  TRY_ASSIGN(sockaddr_storage ss, make_addr(listen_, len));
  if (!listen_.unix_path.empty()) unlink(listen_.unix_path.c_str());
  lfd_ = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (lfd_ < 0) return make_error(std::string("socket: ") + std::strerror(errno));
  int one = 1;
  setsockopt(lfd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(lfd_, reinterpret_cast<sockaddr*>(&ss), len) != 0 || listen(lfd_, 256) != 0) {
    std::string e = std::strerror(errno);
    close(lfd_);
    lfd_ = -1;
    return make_error("cannot listen on " + listen_.describe() + ": " + e);
  }
  if (listen_.unix_path.empty()) {
    sockaddr_storage got{};
    socklen_t gl = sizeof got;
    getsockname(lfd_, reinterpret_cast<sockaddr*>(&got), &gl);
    bound_port_ = ntohs(got.ss_family == AF_INET ? reinterpret_cast<sockaddr_in*>(&got)->sin_port
                                                 : reinterpret_cast<sockaddr_in6*>(&got)->sin6_port);
  }
  thread_ = std::thread([this] { accept_loop(); });
  return Status::Ok();
}

void Forwarder::accept_loop() {
  while (!stop_->load()) {
    pollfd p{lfd_, POLLIN, 0};
    int r = poll(&p, 1, 200);
    if (r <= 0) continue;
    int c = accept4(lfd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (c < 0) continue;
    if (active_->load() >= opts_.max_connections) {
      spdlog::warn("port forward {}: {} connections active, refusing a new one", listen_.describe(), active_->load());
      close(c);
      continue;
    }
    active_->fetch_add(1);
    std::thread([c, target = target_, opts = opts_, stop = stop_, active = active_] {
      auto t = connect_endpoint(target, opts.connect_timeout);
      if (!t.ok()) {
        spdlog::debug("port forward: {}", t.error().message);
        close(c);
      } else {
        // Non-blocking both ways: a peer that stops reading cannot pin this thread past write_all's timeout.
        fcntl(c, F_SETFL, fcntl(c, F_GETFL) | O_NONBLOCK);
        fcntl(*t, F_SETFL, fcntl(*t, F_GETFL) | O_NONBLOCK);
        relay(c, *t, *stop, opts.idle_timeout);
      }
      active->fetch_sub(1);
    }).detach();
  }
}

void Forwarder::stop() {
  if (stop_->exchange(true)) return;
  if (thread_.joinable()) thread_.join();
  if (lfd_ >= 0) close(lfd_);
  lfd_ = -1;
  if (!listen_.unix_path.empty()) unlink(listen_.unix_path.c_str());
  // Connection threads see the stop flag within one poll tick.
  for (int i = 0; i < 100 && active_->load() > 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(20));
}

}  // namespace dstack::cvmsim
