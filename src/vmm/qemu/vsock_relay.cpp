#include "vmm/qemu/vsock_relay.h"

#include <fcntl.h>
#include <linux/vm_sockets.h>
#include <poll.h>
#include <sys/un.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <cerrno>
#include <chrono>
#include <cstring>

namespace dstack::vmm::qemu {
namespace {

using Clock = std::chrono::steady_clock;

// Copies what is readable on `from` to `to`; false on EOF/error.
bool pump(int from, int to) {
  char buf[16384];
  ssize_t n = ::read(from, buf, sizeof buf);
  if (n <= 0) return false;
  size_t off = 0;
  while (off < static_cast<size_t>(n)) {
    ssize_t w = ::send(to, buf + off, static_cast<size_t>(n) - off, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        pollfd p{to, POLLOUT, 0};
        if (::poll(&p, 1, 5000) <= 0) return false;
        continue;
      }
      return false;
    }
    off += static_cast<size_t>(w);
  }
  return true;
}

}  // namespace

VsockSupport probe_vsock() {
  VsockSupport s;
  int fd = ::socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    s.reason = std::string("AF_VSOCK is not supported by this kernel (") + std::strerror(errno) +
               "): load the vsock modules (modprobe vhost_vsock)";
  } else {
    s.available = true;
    ::close(fd);
  }
  s.host_device = ::access("/dev/vhost-vsock", F_OK) == 0;
  if (!s.host_device)
    s.reason += std::string(s.reason.empty() ? "" : "; ") +
                "/dev/vhost-vsock is missing, so QEMU cannot give guests a vsock device (modprobe vhost_vsock)";
  return s;
}

Result<int> listen_vsock(uint32_t port, uint32_t cid) {
  int fd = ::socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return make_error(std::string("vsock host API unavailable: socket(AF_VSOCK) failed: ") + std::strerror(errno) +
                      " (this kernel has no vsock support; load vhost_vsock on a TDX host)");
  sockaddr_vm a{};
  a.svm_family = AF_VSOCK;
  a.svm_cid = cid;
  a.svm_port = port;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(fd, 64) != 0) {
    int e = errno;
    ::close(fd);
    return make_error("vsock host API: cannot listen on vsock port " + std::to_string(port) + ": " +
                      std::strerror(e) + (e == EADDRINUSE ? " (another dstack-vmm is running?)" : ""));
  }
  return fd;
}

Result<std::unique_ptr<HostApiRelay>> HostApiRelay::start_vsock(uint32_t port, Resolver resolver) {
  TRY_ASSIGN(int fd, listen_vsock(port));
  auto peer = [](const sockaddr_storage& ss, socklen_t) -> uint32_t {
    return reinterpret_cast<const sockaddr_vm*>(&ss)->svm_cid;
  };
  spdlog::info("host API relay listening on vsock port {}", port);
  return start_on_fd(fd, peer, std::move(resolver));
}

std::unique_ptr<HostApiRelay> HostApiRelay::start_on_fd(int listen_fd, PeerId peer_id, Resolver resolver,
                                                        std::chrono::milliseconds idle_timeout) {
  std::unique_ptr<HostApiRelay> r(new HostApiRelay());
  r->listen_fd_ = listen_fd;
  r->peer_id_ = std::move(peer_id);
  r->resolver_ = std::move(resolver);
  r->idle_timeout_ = idle_timeout;
  r->acceptor_ = std::thread([p = r.get()] { p->accept_loop(); });
  return r;
}

HostApiRelay::~HostApiRelay() { stop(); }

void HostApiRelay::stop() {
  if (stop_.exchange(true)) return;
  if (acceptor_.joinable()) acceptor_.join();
  std::list<std::thread> ws;
  {
    std::lock_guard lk(mu_);
    ws.swap(workers_);
  }
  for (auto& t : ws)
    if (t.joinable()) t.join();
  if (listen_fd_ >= 0) ::close(listen_fd_);
  listen_fd_ = -1;
}

void HostApiRelay::accept_loop() {
  while (!stop_) {
    pollfd p{listen_fd_, POLLIN, 0};
    int r = ::poll(&p, 1, 200);
    if (r <= 0) continue;
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    int c = ::accept4(listen_fd_, reinterpret_cast<sockaddr*>(&ss), &len, SOCK_CLOEXEC);
    if (c < 0) continue;
    uint32_t cid = peer_id_(ss, len);
    std::lock_guard lk(mu_);
    workers_.emplace_back([this, c, cid] { pipe_connection(c, cid); });
  }
}

void HostApiRelay::pipe_connection(int client, uint32_t cid) {
  auto target = resolver_(cid);
  if (!target) {
    ++rejected_;
    spdlog::warn("host API relay: connection from unknown CID {} refused", cid);
    ::close(client);
    return;
  }
  int up = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (target->size() >= sizeof a.sun_path || up < 0) {
    ++rejected_;
    if (up >= 0) ::close(up);
    ::close(client);
    return;
  }
  std::memcpy(a.sun_path, target->c_str(), target->size() + 1);
  if (::connect(up, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    ++rejected_;
    spdlog::warn("host API relay: CID {}: cannot connect to {}: {}", cid, *target, std::strerror(errno));
    ::close(up);
    ::close(client);
    return;
  }
  ++accepted_;
  auto last = Clock::now();
  bool open_c = true, open_u = true;
  while (!stop_ && (open_c || open_u)) {
    pollfd p[2] = {{open_c ? client : -1, POLLIN, 0}, {open_u ? up : -1, POLLIN, 0}};
    int r = ::poll(p, 2, 200);
    if (r < 0 && errno != EINTR) break;
    if (r <= 0) {
      if (Clock::now() - last > idle_timeout_) break;
      continue;
    }
    last = Clock::now();
    if (open_c && (p[0].revents & (POLLIN | POLLHUP | POLLERR))) {
      if (!pump(client, up)) {
        open_c = false;
        ::shutdown(up, SHUT_WR);
      }
    }
    if (open_u && (p[1].revents & (POLLIN | POLLHUP | POLLERR))) {
      if (!pump(up, client)) {
        open_u = false;
        ::shutdown(client, SHUT_WR);
      }
    }
  }
  ::close(up);
  ::close(client);
}

}  // namespace dstack::vmm::qemu
