// HTTP front of the guest agent: listeners of spec §7.1 over rpc::HttpServer.
#pragma once

#include <memory>
#include <vector>

#include "base/result.h"
#include "guest/service.h"
#include "rpc/http.h"

namespace dstack::guest {

// Handles one request for a service ("dstack": "/<Method>", "tappd": "/prpc/Tappd.<Method>" or "/prpc/<Method>",
// "worker": "/prpc/Worker.<Method>" + GET /health). Bad input => 400 {"error": ...}. Exposed for tests.
rpc::HttpResponse handle_request(GuestService& svc, const std::string& service, const rpc::HttpRequest& req);

class AgentServer {
 public:
  explicit AgentServer(GuestService& svc) : svc_(svc) {}
  ~AgentServer() { stop(); }
  // Binds every enabled listener of the config (creating socket parent dirs 0755) and starts serving.
  Status start();
  void wait();
  void stop();
  // TCP port of the external listener (after start), 0 if disabled.
  uint16_t external_port() const { return external_port_; }

 private:
  GuestService& svc_;
  std::vector<std::unique_ptr<rpc::HttpServer>> servers_;
  uint16_t external_port_ = 0;
};

}  // namespace dstack::guest
