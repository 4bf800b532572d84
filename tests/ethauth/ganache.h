// Test harness: a ganache node on a loopback ephemeral port, started by fork/exec and killed by PID.
#pragma once

#include <sys/types.h>

#include <string>

namespace dstack::ethauth::ethtest {

class Ganache {
 public:
  Ganache() = default;
  ~Ganache() { stop(); }
  Ganache(const Ganache&) = delete;
  Ganache& operator=(const Ganache&) = delete;

  // Starts node <repo>/node_modules/ganache/dist/node/cli.js; waits until eth_chainId answers. Empty on success.
  std::string start();
  void stop();
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  pid_t pid() const { return pid_; }

 private:
  pid_t pid_ = -1;
  int port_ = 0;
  std::string log_path_;
};

// A free TCP port on 127.0.0.1 (bind 0, read, close).
int free_port();

}  // namespace dstack::ethauth::ethtest
