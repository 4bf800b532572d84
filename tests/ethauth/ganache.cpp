#include "ganache.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <thread>

#include "ethauth/eth_rpc.h"

namespace dstack::ethauth::ethtest {

int free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof(a);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    ::close(fd);
    return -1;
  }
  int port = ntohs(a.sin_port);
  ::close(fd);
  return port;
}

std::string Ganache::start() {
  const std::string cli = std::string(DSTACK_SOURCE_DIR) + "/node_modules/ganache/dist/node/cli.js";
  if (::access(cli.c_str(), R_OK) != 0) return "ganache not installed at " + cli + " (run npm ci)";
  char tmpl[] = "/tmp/eth-ganache-XXXXXX";
  int lfd = ::mkstemp(tmpl);
  if (lfd < 0) return "mkstemp failed";
  log_path_ = tmpl;
  for (int attempt = 0; attempt < 3; ++attempt) {
    port_ = free_port();
    std::string port_s = std::to_string(port_);
    pid_ = ::fork();
    if (pid_ == 0) {
      ::dup2(lfd, 1);
      ::dup2(lfd, 2);
      ::setpgid(0, 0);
      ::execlp("node", "node", cli.c_str(), "--server.host", "127.0.0.1", "--server.port", port_s.c_str(),
               "--wallet.deterministic", "--miner.instamine", "eager", "-q", static_cast<char*>(nullptr));
      ::_exit(127);
    }
    EthRpc rpc(url(), EthRpcOptions{std::chrono::milliseconds(500), std::chrono::milliseconds(500),
                                    std::chrono::milliseconds(50), std::chrono::milliseconds(50), 1});
    auto until = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (std::chrono::steady_clock::now() < until) {
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        break;  // died (port taken?): retry with another port
      }
      if (rpc.chain_id().ok()) {
        ::close(lfd);
        return "";
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    stop();
  }
  ::close(lfd);
  std::ifstream in(log_path_);
  std::stringstream ss;
  ss << in.rdbuf();
  return "ganache did not come up; log: " + ss.str();
}

void Ganache::stop() {
  if (pid_ > 0) {
    ::kill(pid_, SIGTERM);
    for (int i = 0; i < 50; ++i) {
      if (::waitpid(pid_, nullptr, WNOHANG) == pid_) {
        pid_ = -1;
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
      pid_ = -1;
    }
  }
  if (!log_path_.empty()) {
    ::unlink(log_path_.c_str());
    log_path_.clear();
  }
}

}  // namespace dstack::ethauth::ethtest
