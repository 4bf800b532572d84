// Host API for real (QEMU) guests: guests call the VMM host API at vsock://2:<port>/api (spec §10.1, default port
// 10000), the VMM identifies the caller by its vsock CID. The VMM itself serves the host API per VM on a unix socket
// (<vm-dir>/host-api.sock, see vmm/backend.h); this relay listens on AF_VSOCK and pipes each guest connection to the
// host-api.sock of the VM that owns the peer CID. Connections from unknown CIDs are closed at once.
//
// Where the kernel has no AF_VSOCK (or no vhost-vsock device), start_vsock() fails with an error that says so; the
// relay core can still run on any listening socket (start_on_fd), which is how it is tested without vsock.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include <sys/socket.h>

#include "base/result.h"

namespace dstack::vmm::qemu {

struct VsockSupport {
  bool available = false;   // socket(AF_VSOCK) works
  bool host_device = false; // /dev/vhost-vsock exists (QEMU's vhost-vsock-pci needs it)
  std::string reason;       // why not, when !available || !host_device
};
VsockSupport probe_vsock();

// Listening AF_VSOCK stream socket on (cid, port); cid default VMADDR_CID_ANY. Error names the errno and the fix.
Result<int> listen_vsock(uint32_t port, uint32_t cid = 0xFFFFFFFFu);

class HostApiRelay {
 public:
  // CID -> absolute path of that VM's host-api.sock, or nullopt if the CID belongs to no running VM.
  using Resolver = std::function<std::optional<std::string>(uint32_t cid)>;
  // Peer address of an accepted connection -> CID (for AF_VSOCK: sockaddr_vm.svm_cid).
  using PeerId = std::function<uint32_t(const sockaddr_storage&, socklen_t)>;

  ~HostApiRelay();
  HostApiRelay(const HostApiRelay&) = delete;
  HostApiRelay& operator=(const HostApiRelay&) = delete;

  // Listens on vsock port `port` (spec: [host_api] port = 10000).
  static Result<std::unique_ptr<HostApiRelay>> start_vsock(uint32_t port, Resolver resolver);
  // Takes ownership of an already listening socket (any family).
  static std::unique_ptr<HostApiRelay> start_on_fd(int listen_fd, PeerId peer_id, Resolver resolver,
                                                   std::chrono::milliseconds idle_timeout = std::chrono::seconds(60));

  void stop();  // closes the listener and every relayed connection, joins all threads
  uint64_t accepted() const { return accepted_; }
  uint64_t rejected() const { return rejected_; }

 private:
  HostApiRelay() = default;
  void accept_loop();
  void pipe_connection(int client, uint32_t cid);

  int listen_fd_ = -1;
  PeerId peer_id_;
  Resolver resolver_;
  std::chrono::milliseconds idle_timeout_{60000};
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> accepted_{0}, rejected_{0};
  std::thread acceptor_;
  std::mutex mu_;
  std::list<std::thread> workers_;
};

}  // namespace dstack::vmm::qemu
