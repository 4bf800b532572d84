// Byte-stream forwarder between a listening endpoint and a target endpoint (TCP or unix socket). The host side
// of a port mapping is TCP host:port -> unix socket in the VM dir; the VM side is unix socket -> TCP
// 127.0.0.1:<vm_port> inside the VM's network namespace. One thread per connection, bounded connect and idle
// timeouts, a cap on concurrent connections.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>

#include "base/result.h"

namespace dstack::cvmsim {

struct Endpoint {
  std::string unix_path;  // non-empty => unix socket
  std::string host = "127.0.0.1";
  uint16_t port = 0;
  std::string describe() const;
  static Endpoint tcp(std::string host, uint16_t port) { return Endpoint{"", std::move(host), port}; }
  static Endpoint unix_socket(std::string path) { return Endpoint{std::move(path), "", 0}; }
};

struct ForwarderOptions {
  std::chrono::milliseconds connect_timeout{5000};  // target connect (retried until then while refused)
  std::chrono::milliseconds idle_timeout{600000};   // no bytes either way => close
  int max_connections = 1024;
};

class Forwarder {
 public:
  Forwarder(Endpoint listen, Endpoint target, ForwarderOptions opts = {});
  ~Forwarder();
  Forwarder(const Forwarder&) = delete;
  Forwarder& operator=(const Forwarder&) = delete;

  // Binds (errors like "address in use" are returned) and starts accepting on a thread.
  Status start();
  // Stops accepting and closes active connections (bounded wait).
  void stop();
  uint16_t bound_port() const { return bound_port_; }
  int active() const { return active_->load(); }

 private:
  void accept_loop();
  Endpoint listen_, target_;
  ForwarderOptions opts_;
  int lfd_ = -1;
  uint16_t bound_port_ = 0;
  std::shared_ptr<std::atomic<bool>> stop_ = std::make_shared<std::atomic<bool>>(false);
  std::shared_ptr<std::atomic<int>> active_ = std::make_shared<std::atomic<int>>(0);
  std::thread thread_;
};

// Connects to an endpoint with a deadline (non-blocking connect + poll). Returns the fd.
Result<int> connect_endpoint(const Endpoint& ep, std::chrono::milliseconds timeout);

}  // namespace dstack::cvmsim
