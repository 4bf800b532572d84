#include "guest/server.h"

#include <spdlog/spdlog.h>

#include <filesystem>

#include "base/fs.h"
#include "rpc/prpc.h"

namespace dstack::guest {

rpc::HttpResponse handle_request(GuestService& svc, const std::string& service, const rpc::HttpRequest& req) {
  if (req.body.size() > kMaxRequestBody) {
    return rpc::HttpResponse::error(400, "request body too large (" + std::to_string(req.body.size()) +
                                             " bytes; the limit is 10 MiB)");
  }
  std::string path = req.path;
  if (service == "worker" && path == "/health") return rpc::HttpResponse::text(200, "OK");
  std::string method;
  if (service == "dstack") {
    method = path.size() > 1 ? path.substr(1) : "";
  } else {
    const std::string mount = "/prpc/";
    if (path.rfind(mount, 0) != 0) return rpc::HttpResponse::error(400, "Service not found: " + path);
    method = path.substr(mount.size());
    std::string trim = service == "tappd" ? "Tappd." : "Worker.";
    if (method.rfind(trim, 0) == 0) method = method.substr(trim.size());
  }
  rpc::PrpcService prpc;
  prpc.add(method, [&svc, service, method](const rpc::Json& j, const rpc::HttpRequest&) {
    return svc.call(service, method, j);
  });
  // Unknown methods: PrpcService answers 400 "Service not found: <path>" because nothing else is registered.
  static const char* known_dstack[] = {"GetQuote", "Attest", "GetKey", "GetTlsKey", "Info",
                                       "Sign", "Verify", "Version", "EmitEvent"};
  static const char* known_tappd[] = {"TdxQuote", "RawQuote", "DeriveKey", "DeriveK256Key", "Info", "Version"};
  static const char* known_worker[] = {"Info", "Version", "GetAttestationForAppKey"};
  bool known = false;
  auto check = [&](auto& arr) {
    for (const char* k : arr) known = known || method == k;
  };
  if (service == "dstack") check(known_dstack);
  if (service == "tappd") check(known_tappd);
  if (service == "worker") check(known_worker);
  if (!known) return rpc::HttpResponse::error(400, "Service not found: " + path);
  rpc::HttpResponse res = prpc.handle(req, method);
  if (res.status == 405) res = rpc::HttpResponse::error(400, "method " + req.method + " not allowed; use GET or POST");
  return res;
}

Status AgentServer::start() {
  const AgentConfig& cfg = svc_.config();
  struct L {
    const ListenerConfig* l;
    const char* service;
  };
  for (L x : {L{&cfg.internal, "dstack"}, L{&cfg.internal_v0, "tappd"}, L{&cfg.external, "worker"}}) {
    if (!x.l->enabled || x.l->address.empty()) continue;
    rpc::ServerOptions opts;
    opts.body_limit = 64 * 1024 * 1024;  // >10 MiB bodies are answered with 400 by handle_request
    opts.server_header = "dstack-guest-agent";
    if (std::string(x.service) == "worker") opts.extra_headers.push_back({"X-App-Version", kAgentVersion});
    auto srv = std::make_unique<rpc::HttpServer>(opts);
    std::string service = x.service;
    GuestService* svc = &svc_;
    srv->route_prefix("*", "/", [svc, service](const rpc::HttpRequest& req) {
      return handle_request(*svc, service, req);
    });
    std::string addr = x.l->listen_address();
    if (addr.rfind("unix:", 0) == 0) {
      auto parent = std::filesystem::path(addr.substr(5)).parent_path().string();
      if (!parent.empty()) TRY(make_dirs(parent, 0755));
    }
    auto st = srv->listen(addr, std::nullopt, x.l->mode);
    if (!st.ok()) return st.error().wrap(std::string("starting the ") + x.service + " listener");
    if (service == "worker") external_port_ = srv->bound_port(0);
    srv->start();
    spdlog::info("{} API listening on {}{}", x.service, addr,
                 addr.rfind("unix:", 0) == 0 ? fmt::format(" (mode {:04o})", x.l->mode) : std::string());
    servers_.push_back(std::move(srv));
  }
  if (servers_.empty()) return make_error("no listener enabled in the config");
  return Status::Ok();
}

void AgentServer::wait() {
  if (!servers_.empty()) servers_.front()->wait();
}

void AgentServer::stop() {
  for (auto& s : servers_) s->stop();
  servers_.clear();
}

}  // namespace dstack::guest
