// Host API relay: guest connection (vsock in production, a unix socket here) -> the VM's host-api.sock by CID.
#include <gtest/gtest.h>

#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <random>
#include <thread>

#include "vmm/qemu/vsock_relay.h"

using namespace dstack::vmm::qemu;
namespace fs = std::filesystem;

namespace {

int unix_listen(const std::string& path) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::strncpy(a.sun_path, path.c_str(), sizeof a.sun_path - 1);
  EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0) << std::strerror(errno);
  EXPECT_EQ(::listen(fd, 16), 0);
  return fd;
}

int unix_connect(const std::string& path) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  timeval tv{5, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::strncpy(a.sun_path, path.c_str(), sizeof a.sun_path - 1);
  EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0) << std::strerror(errno);
  return fd;
}

std::string read_all(int fd) {
  std::string out;
  char buf[1024];
  ssize_t n;
  while ((n = ::recv(fd, buf, sizeof buf, 0)) > 0) out.append(buf, static_cast<size_t>(n));
  return out;
}

// Stand-in for the VMM's per-VM host API: answers one HTTP request per connection with the VM name + request line.
struct FakeHostApi {
  std::string path;
  std::string name;
  int fd = -1;
  std::atomic<bool> stop{false};
  std::thread t;
  FakeHostApi(std::string p, std::string n) : path(std::move(p)), name(std::move(n)) {
    fd = unix_listen(path);
    t = std::thread([this] {
      while (!stop) {
        timeval tv{0, 200000};
        ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        int c = ::accept(fd, nullptr, nullptr);
        if (c < 0) continue;
        char buf[4096];
        std::string req;
        ssize_t n;
        while (req.find("\r\n\r\n") == std::string::npos && (n = ::recv(c, buf, sizeof buf, 0)) > 0)
          req.append(buf, static_cast<size_t>(n));
        std::string body = name + " got " + req.substr(0, req.find("\r\n"));
        std::string resp = "HTTP/1.1 200 OK\r\nContent-Length: " + std::to_string(body.size()) +
                           "\r\nConnection: close\r\n\r\n" + body;
        ::send(c, resp.data(), resp.size(), MSG_NOSIGNAL);
        ::close(c);
      }
    });
  }
  ~FakeHostApi() {
    stop = true;
    t.join();
    ::close(fd);
  }
};

}  // namespace

TEST(HostApiRelay, RoutesByCidAndRefusesUnknownCids) {
  char tmpl[] = "/tmp/qrelayXXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  std::string dir = tmpl;
  FakeHostApi vm_a(dir + "/a.sock", "vm-a"), vm_b(dir + "/b.sock", "vm-b");

  // The "guest side" listener: a unix socket; the CID of each connection is chosen by the test.
  std::string guest_sock = dir + "/guest.sock";
  int lfd = unix_listen(guest_sock);
  std::atomic<uint32_t> next_cid{1000};
  auto relay = HostApiRelay::start_on_fd(
      lfd, [&](const sockaddr_storage&, socklen_t) { return next_cid.load(); },
      [&](uint32_t cid) -> std::optional<std::string> {
        if (cid == 1000) return vm_a.path;
        if (cid == 1001) return vm_b.path;
        return std::nullopt;
      });

  auto call = [&](uint32_t cid, const std::string& method) {
    next_cid = cid;
    int c = unix_connect(guest_sock);
    std::string req = "POST /api/" + method + " HTTP/1.1\r\nHost: vmm\r\nContent-Length: 2\r\n\r\n{}";
    ::send(c, req.data(), req.size(), MSG_NOSIGNAL);
    std::string resp = read_all(c);
    ::close(c);
    return resp;
  };
  std::string ra = call(1000, "Notify");
  EXPECT_NE(ra.find("vm-a got POST /api/Notify HTTP/1.1"), std::string::npos) << ra;
  std::string rb = call(1001, "GetSealingKey");
  EXPECT_NE(rb.find("vm-b got POST /api/GetSealingKey"), std::string::npos) << rb;
  std::string rx = call(4242, "Info");
  EXPECT_EQ(rx, "") << "unknown CID must get nothing";
  relay->stop();
  EXPECT_EQ(relay->accepted(), 2u);
  EXPECT_EQ(relay->rejected(), 1u);
  fs::remove_all(dir);
}

TEST(HostApiRelay, VsockListenerMatchesKernelSupport) {
  auto support = probe_vsock();
  std::cout << "[ info ] AF_VSOCK available=" << support.available << " /dev/vhost-vsock=" << support.host_device
            << (support.reason.empty() ? "" : " (" + support.reason + ")") << "\n";
  uint32_t port = 20000 + std::random_device{}() % 40000;
  auto relay = HostApiRelay::start_vsock(port, [](uint32_t) { return std::nullopt; });
  if (support.available) {
    ASSERT_TRUE(relay.ok()) << relay.error().message;
    (*relay)->stop();
  } else {
    ASSERT_FALSE(relay.ok());
    EXPECT_NE(relay.error().message.find("vsock"), std::string::npos) << relay.error().message;
  }
  if (!support.host_device) {
    EXPECT_NE(support.reason.find("/dev/vhost-vsock"), std::string::npos);
  }
}
