// HTTP/1.1 server and client (Boost.Beast + Asio) over TCP, TLS (OpenSSL) and unix sockets.
// Beast stays inside http.cpp / client.cpp; users see only these plain structs.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "base/bytes.h"
#include "base/result.h"

namespace dstack::rpc {

struct HttpRequest {
  std::string method;                          // "GET", "POST", ...
  std::string target;                          // raw request target, e.g. "/prpc/KMS.GetMeta?json"
  std::string path;                            // target without the query, percent-decoded
  std::string query;                           // raw query string (after '?'), may be empty
  std::map<std::string, std::string> headers;  // lower-case names
  std::string body;
  std::string remote;                          // "ip:port" or "unix"
  std::optional<Bytes> peer_cert_der;          // TLS client certificate, if presented
  std::string header(const std::string& lower_name) const {
    auto it = headers.find(lower_name);
    return it == headers.end() ? std::string() : it->second;
  }
};

// A response writer for streaming bodies (chunked). Return false from `write` when the client is gone.
using StreamWriter = std::function<bool(std::string_view chunk)>;

struct HttpResponse {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;
  // When set, the body is produced by this callback (chunked transfer); `body` is ignored.
  std::function<void(const StreamWriter&)> stream;

  static HttpResponse json(int status, std::string body) { return HttpResponse{status, "application/json", std::move(body), {}, {}}; }
  static HttpResponse text(int status, std::string body) { return HttpResponse{status, "text/plain; charset=utf-8", std::move(body), {}, {}}; }
  static HttpResponse error(int status, const std::string& message);  // {"error": message}
};

using Handler = std::function<HttpResponse(const HttpRequest&)>;

struct TlsServerConfig {
  std::string cert_chain_pem;   // leaf first
  std::string key_pem;
  std::string client_ca_pem;    // if set, client certificates are requested and verified against it
  bool require_client_cert = false;
};

struct ServerOptions {
  int threads = 2;
  size_t body_limit = 10 * 1024 * 1024;                   // 10 MiB, as upstream prpc
  std::chrono::seconds read_timeout{30};                  // per request read (slowloris guard)
  std::chrono::seconds idle_timeout{60};                  // keep-alive idle
  std::string server_header = "dstack-cpp";
  std::vector<std::pair<std::string, std::string>> extra_headers;  // added to every response
  // Requests for which this returns true run directly on the I/O thread instead of the worker pool. Only for
  // handlers that never block (e.g. GetMeta from memory, /health): saves two thread hops per request.
  std::function<bool(const HttpRequest&)> run_inline;
};

class HttpServer {
 public:
  explicit HttpServer(ServerOptions opts = {});
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Exact path match (method "*" matches any). Registered before start().
  void route(const std::string& method, const std::string& path, Handler h);
  // Prefix match, longest prefix wins; used for "/prpc/" mounts.
  void route_prefix(const std::string& method, const std::string& prefix, Handler h);
  void set_not_found(Handler h);

  // address: "unix:/path/to.sock", "tcp:HOST:PORT", "HOST:PORT" or "HOST" + port. Port 0 = ephemeral.
  // Binds immediately (errors are returned here, e.g. "address in use"); serves after start().
  Status listen(const std::string& address, std::optional<TlsServerConfig> tls = std::nullopt,
                uint32_t unix_mode = 0666);
  // Port actually bound by the i-th listen() (for port 0).
  uint16_t bound_port(size_t i = 0) const;

  void start();   // serve on background threads
  void wait();    // block until stop()
  void stop();    // stop accepting, close connections, join threads

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// ---- client ----

struct ClientOptions {
  std::chrono::milliseconds timeout{10000};   // whole request (connect + write + read)
  // TLS: verify the server against this CA (PEM). Empty + insecure=false => verify against system roots.
  std::string ca_pem;
  bool insecure_skip_verify = false;
  std::string client_cert_pem;                // mTLS (chain PEM, leaf first)
  std::string client_key_pem;
  size_t body_limit = 64 * 1024 * 1024;
  std::map<std::string, std::string> headers;
};

struct HttpClientResponse {
  int status = 0;
  std::string body;
  std::map<std::string, std::string> headers;  // lower-case names
  std::vector<Bytes> peer_cert_chain_der;      // TLS server chain as presented (leaf first)
};

// url: "http://host:port/path?q", "https://...", or "unix:/path/to.sock:/http/path" (the socket path ends at
// the first ':' after "unix:"); for unix, a plain "unix:/sock" means path "/".
Result<HttpClientResponse> http_request(const std::string& method, const std::string& url, const std::string& body = "",
                                        const ClientOptions& opts = {},
                                        const std::string& content_type = "application/json");

// Streams the body as it arrives (for `logs --follow`); on_chunk returns false to stop.
Status http_stream(const std::string& url, const std::function<bool(std::string_view)>& on_chunk,
                   const ClientOptions& opts = {});

}  // namespace dstack::rpc
