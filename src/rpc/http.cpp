// HTTP server on Boost.Beast: coroutine per connection on a small io_context, handlers on a worker pool so a
// slow handler (webhook call, log follow) never stalls other connections.
#include <utility>  // must precede asio: Boost 1.74's awaitable.hpp uses std::exchange

#include "rpc/http.h"

#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <boost/asio.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast.hpp>
#include <boost/beast/ssl.hpp>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include "rpc/internal.h"

namespace dstack::rpc {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace ssl = net::ssl;
using tcp = net::ip::tcp;
using unix_proto = net::local::stream_protocol;
using unix_stream = beast::basic_stream<unix_proto, net::any_io_executor, beast::unlimited_rate_policy>;

HttpResponse HttpResponse::error(int status, const std::string& message) {
  nlohmann::json j = {{"error", message}};
  return HttpResponse{status, "application/json", j.dump(2), {}, {}};
}

namespace {

struct Route {
  std::string method;
  std::string path;
  Handler handler;
};

std::string percent_decode(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size()) {
      auto hv = [](char c) -> int {
        if (c >= '0' && c <= '9') return c - '0';
        if (c >= 'a' && c <= 'f') return c - 'a' + 10;
        if (c >= 'A' && c <= 'F') return c - 'A' + 10;
        return -1;
      };
      int hi = hv(s[i + 1]), lo = hv(s[i + 2]);
      if (hi >= 0 && lo >= 0) {
        out.push_back(static_cast<char>(hi << 4 | lo));
        i += 2;
        continue;
      }
    }
    out.push_back(s[i]);
  }
  return out;
}

}  // namespace

struct HttpServer::Impl {
  ServerOptions opts;
  net::io_context ioc;
  std::unique_ptr<net::thread_pool> pool;
  std::vector<std::thread> threads;
  std::vector<Route> exact;
  std::vector<Route> prefix;
  Handler not_found;
  std::vector<uint16_t> ports;
  std::vector<std::string> unix_paths;
  std::vector<std::function<void()>> starters;  // accept loops spawned on start()
  std::vector<std::shared_ptr<void>> keep;      // acceptors, ssl contexts
  std::atomic<bool> stopped{false};
  std::mutex wait_mu;
  std::condition_variable wait_cv;
  bool started = false;

  explicit Impl(ServerOptions o) : opts(std::move(o)) {}

  HttpResponse dispatch(const HttpRequest& req) {
    for (auto& r : exact)
      if (r.path == req.path && (r.method == "*" || r.method == req.method)) return r.handler(req);
    const Route* best = nullptr;
    for (auto& r : prefix)
      if (req.path.compare(0, r.path.size(), r.path) == 0 && (r.method == "*" || r.method == req.method))
        if (!best || r.path.size() > best->path.size()) best = &r;
    if (best) return best->handler(req);
    if (not_found) return not_found(req);
    return HttpResponse::error(404, "not found: " + req.path);
  }

  HttpResponse dispatch_safe(const HttpRequest& req) {
    try {
      return dispatch(req);
    } catch (const std::exception& e) {
      spdlog::error("handler for {} threw: {}", req.path, e.what());
      return HttpResponse::error(500, std::string("internal error: ") + e.what());
    }
  }

  template <class Stream>
  static http::response<http::string_body> to_beast(const HttpResponse& r, unsigned version, bool keep_alive,
                                                    const ServerOptions& opts) {
    http::response<http::string_body> res{static_cast<http::status>(r.status), version};
    res.set(http::field::server, opts.server_header);
    res.set(http::field::content_type, r.content_type);
    for (auto& [k, v] : opts.extra_headers) res.set(k, v);
    for (auto& [k, v] : r.headers) res.set(k, v);
    res.body() = r.body;
    res.keep_alive(keep_alive);
    res.prepare_payload();
    return res;
  }

  template <class Stream>
  net::awaitable<void> session(Stream stream, std::string remote, std::optional<Bytes> peer_cert) {
    beast::flat_buffer buffer;
    beast::error_code ec;
    bool first = true;
    for (;;) {
      http::request_parser<http::string_body> parser;
      parser.body_limit(opts.body_limit);
      parser.header_limit(64 * 1024);
      beast::get_lowest_layer(stream).expires_after(first ? opts.read_timeout : opts.idle_timeout);
      first = false;
      co_await http::async_read_header(stream, buffer, parser, net::redirect_error(net::use_awaitable, ec));
      if (ec && ec != http::error::body_limit) break;
      beast::get_lowest_layer(stream).expires_after(opts.read_timeout);
      if (!ec && !parser.is_done()) co_await http::async_read(stream, buffer, parser, net::redirect_error(net::use_awaitable, ec));
      if (ec == http::error::body_limit) {
        auto res = to_beast<Stream>(HttpResponse::error(413, "request body too large (limit " +
                                                                 std::to_string(opts.body_limit) + " bytes)"),
                                    11, false, opts);
        co_await http::async_write(stream, res, net::redirect_error(net::use_awaitable, ec));
        break;
      }
      if (ec) break;
      auto breq = parser.release();
      HttpRequest req;
      req.method = std::string(breq.method_string());
      req.target = std::string(breq.target());
      auto q = req.target.find('?');
      req.path = percent_decode(std::string_view(req.target).substr(0, q));
      if (q != std::string::npos) req.query = req.target.substr(q + 1);
      for (auto& f : breq) {
        std::string name(f.name_string());
        for (auto& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        req.headers[name] = std::string(f.value());
      }
      req.body = std::move(breq.body());
      req.remote = remote;
      req.peer_cert_der = peer_cert;
      bool keep_alive = breq.keep_alive();
      unsigned version = breq.version();

      bool write_failed = false;
      HttpResponse resp;
      if (opts.run_inline && opts.run_inline(req)) {
        resp = dispatch_safe(req);
        if (resp.stream) resp = HttpResponse::error(500, "streaming handlers cannot run inline");
      } else {
      // Run the handler on the worker pool; streaming bodies are written from there synchronously.
      beast::get_lowest_layer(stream).expires_never();
      resp = co_await net::co_spawn(
          pool->get_executor(),
          [&]() -> net::awaitable<HttpResponse> {
            HttpResponse r = dispatch_safe(req);
            if (r.stream) {
              http::response<http::empty_body> head{static_cast<http::status>(r.status), version};
              head.set(http::field::server, opts.server_header);
              head.set(http::field::content_type, r.content_type);
              for (auto& [k, v] : r.headers) head.set(k, v);
              head.chunked(true);
              head.keep_alive(false);
              http::response_serializer<http::empty_body> sr{head};
              beast::error_code wec;
              http::write_header(stream, sr, wec);
              if (wec) {
                write_failed = true;
                co_return r;
              }
              StreamWriter writer = [&](std::string_view chunk) -> bool {
                if (chunk.empty()) return true;
                beast::error_code e;
                net::write(stream, http::make_chunk(net::buffer(chunk.data(), chunk.size())), e);
                return !e;
              };
              r.stream(writer);
              beast::error_code e;
              net::write(stream, http::make_chunk_last(), e);
              write_failed = true;  // connection closes after a streamed body
            }
            co_return r;
          },
          net::use_awaitable);
      }
      if (write_failed) break;
      auto res = to_beast<Stream>(resp, version, keep_alive, opts);
      beast::get_lowest_layer(stream).expires_after(opts.read_timeout);
      co_await http::async_write(stream, res, net::redirect_error(net::use_awaitable, ec));
      if (ec || !keep_alive) break;
    }
    shutdown(stream);
  }

  static void shutdown(beast::tcp_stream& s) {
    beast::error_code ec;
    s.socket().shutdown(tcp::socket::shutdown_send, ec);
  }
  static void shutdown(unix_stream& s) {
    beast::error_code ec;
    s.socket().shutdown(unix_proto::socket::shutdown_send, ec);
  }
  static void shutdown(beast::ssl_stream<beast::tcp_stream>& s) {
    beast::error_code ec;
    beast::get_lowest_layer(s).socket().shutdown(tcp::socket::shutdown_both, ec);
  }

  net::awaitable<void> tls_session(beast::ssl_stream<beast::tcp_stream> stream, std::string remote) {
    beast::error_code ec;
    beast::get_lowest_layer(stream).expires_after(opts.read_timeout);
    co_await stream.async_handshake(ssl::stream_base::server, net::redirect_error(net::use_awaitable, ec));
    if (ec) {
      spdlog::debug("TLS handshake from {} failed: {}", remote, ec.message());
      co_return;
    }
    std::optional<Bytes> peer;
    if (X509* x = SSL_get1_peer_certificate(stream.native_handle())) {
      int len = i2d_X509(x, nullptr);
      if (len > 0) {
        Bytes der(static_cast<size_t>(len));
        unsigned char* p = der.data();
        i2d_X509(x, &p);
        peer = std::move(der);
      }
      X509_free(x);
    }
    co_await session(std::move(stream), std::move(remote), std::move(peer));
  }

  net::awaitable<void> accept_tcp(std::shared_ptr<tcp::acceptor> acc, std::shared_ptr<ssl::context> tls) {
    for (;;) {
      beast::error_code ec;
      tcp::socket sock = co_await acc->async_accept(net::redirect_error(net::use_awaitable, ec));
      if (ec) {
        if (stopped || ec == net::error::operation_aborted) co_return;
        spdlog::warn("accept failed: {}", ec.message());
        continue;
      }
      sock.set_option(tcp::no_delay(true), ec);
      std::string remote;
      auto ep = sock.remote_endpoint(ec);
      if (!ec) remote = ep.address().to_string() + ":" + std::to_string(ep.port());
      auto ex = sock.get_executor();
      if (tls) {
        net::co_spawn(ex, tls_session(beast::ssl_stream<beast::tcp_stream>(beast::tcp_stream(std::move(sock)), *tls), remote),
                      net::detached);
      } else {
        net::co_spawn(ex, session(beast::tcp_stream(std::move(sock)), remote, std::nullopt), net::detached);
      }
    }
  }

  net::awaitable<void> accept_unix(std::shared_ptr<unix_proto::acceptor> acc) {
    for (;;) {
      beast::error_code ec;
      unix_proto::socket sock = co_await acc->async_accept(net::redirect_error(net::use_awaitable, ec));
      if (ec) {
        if (stopped || ec == net::error::operation_aborted) co_return;
        spdlog::warn("accept failed: {}", ec.message());
        continue;
      }
      auto ex = sock.get_executor();
      net::co_spawn(ex, session(unix_stream(std::move(sock)), "unix", std::nullopt), net::detached);
    }
  }
};

HttpServer::HttpServer(ServerOptions opts) : impl_(std::make_unique<Impl>(std::move(opts))) {
  impl_->pool = std::make_unique<net::thread_pool>(32);
}

HttpServer::~HttpServer() { stop(); }

void HttpServer::route(const std::string& method, const std::string& path, Handler h) {
  impl_->exact.push_back({method, path, std::move(h)});
}
void HttpServer::route_prefix(const std::string& method, const std::string& prefix, Handler h) {
  impl_->prefix.push_back({method, prefix, std::move(h)});
}
void HttpServer::set_not_found(Handler h) { impl_->not_found = std::move(h); }

static Result<std::shared_ptr<ssl::context>> make_server_tls(const TlsServerConfig& cfg) {
  auto ctx = std::make_shared<ssl::context>(ssl::context::tls_server);
  beast::error_code ec;
  ctx->set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 | ssl::context::no_sslv3 |
                   ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1);
  ctx->use_certificate_chain(net::buffer(cfg.cert_chain_pem), ec);
  if (ec) return make_error("TLS certificate chain is not valid PEM: " + ec.message());
  ctx->use_private_key(net::buffer(cfg.key_pem), ssl::context::pem, ec);
  if (ec) return make_error("TLS private key is not valid PEM or does not match: " + ec.message());
  if (!cfg.client_ca_pem.empty()) {
    ctx->add_certificate_authority(net::buffer(cfg.client_ca_pem), ec);
    if (ec) return make_error("TLS client CA is not valid PEM: " + ec.message());
    // Tell clients which CA to use (OpenSSL clients pick a matching cert from this list).
    if (auto chain = internal::pem_subjects(cfg.client_ca_pem)) SSL_CTX_set_client_CA_list(ctx->native_handle(), chain);
    ctx->set_verify_mode(ssl::verify_peer | (cfg.require_client_cert ? ssl::verify_fail_if_no_peer_cert : 0));
  }
  SSL_CTX_set_session_cache_mode(ctx->native_handle(), SSL_SESS_CACHE_SERVER);
  static const unsigned char sid[] = "dstack-cpp";
  SSL_CTX_set_session_id_context(ctx->native_handle(), sid, sizeof(sid) - 1);
  return ctx;
}

Status HttpServer::listen(const std::string& address, std::optional<TlsServerConfig> tls, uint32_t unix_mode) {
  auto& I = *impl_;
  if (address.rfind("unix:", 0) == 0) {
    if (tls) return make_error("TLS over unix sockets is not supported (" + address + ")");
    std::string path = address.substr(5);
    ::unlink(path.c_str());  // stale socket from a previous run
    auto acc = std::make_shared<unix_proto::acceptor>(I.ioc);
    beast::error_code ec;
    acc->open(unix_proto(), ec);
    if (!ec) acc->bind(unix_proto::endpoint(path), ec);
    if (!ec) acc->listen(net::socket_base::max_listen_connections, ec);
    if (ec) return make_error("cannot listen on " + address + ": " + ec.message() + " (check the directory exists and is writable)");
    ::chmod(path.c_str(), unix_mode);
    I.ports.push_back(0);
    I.unix_paths.push_back(path);
    I.keep.push_back(acc);
    I.starters.push_back([&I, acc] { net::co_spawn(I.ioc, I.accept_unix(acc), net::detached); });
    return Status::Ok();
  }
  std::string hp = address.rfind("tcp:", 0) == 0 ? address.substr(4) : address;
  auto colon = hp.rfind(':');
  if (colon == std::string::npos) return make_error("listen address '" + address + "' needs a port (HOST:PORT)");
  std::string host = hp.substr(0, colon);
  if (host.size() > 1 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  int port = 0;
  try {
    port = std::stoi(hp.substr(colon + 1));
  } catch (...) {
    return make_error("listen address '" + address + "' has an invalid port");
  }
  beast::error_code ec;
  auto addr = net::ip::make_address(host.empty() ? "0.0.0.0" : host, ec);
  if (ec) return make_error("listen address '" + address + "': '" + host + "' is not an IP address");
  std::shared_ptr<ssl::context> ctx;
  if (tls) {
    auto r = make_server_tls(*tls);
    if (!r.ok()) return r.error();
    ctx = *r;
  }
  auto acc = std::make_shared<tcp::acceptor>(I.ioc);
  tcp::endpoint ep(addr, static_cast<uint16_t>(port));
  acc->open(ep.protocol(), ec);
  if (!ec) acc->set_option(net::socket_base::reuse_address(true), ec);
  if (!ec) acc->bind(ep, ec);
  if (!ec) acc->listen(net::socket_base::max_listen_connections, ec);
  if (ec) return make_error("cannot listen on " + address + ": " + ec.message());
  I.ports.push_back(acc->local_endpoint().port());
  I.keep.push_back(acc);
  if (ctx) I.keep.push_back(ctx);
  I.starters.push_back([&I, acc, ctx] { net::co_spawn(I.ioc, I.accept_tcp(acc, ctx), net::detached); });
  return Status::Ok();
}

uint16_t HttpServer::bound_port(size_t i) const { return i < impl_->ports.size() ? impl_->ports[i] : 0; }

void HttpServer::start() {
  auto& I = *impl_;
  if (I.started) return;
  I.started = true;
  for (auto& s : I.starters) s();
  int n = std::max(1, I.opts.threads);
  for (int i = 0; i < n; ++i) I.threads.emplace_back([&I] { I.ioc.run(); });
}

void HttpServer::wait() {
  std::unique_lock lk(impl_->wait_mu);
  impl_->wait_cv.wait(lk, [&] { return impl_->stopped.load(); });
}

void HttpServer::stop() {
  auto& I = *impl_;
  if (I.stopped.exchange(true)) return;
  I.ioc.stop();
  for (auto& t : I.threads)
    if (t.joinable()) t.join();
  I.pool->stop();
  I.pool->join();
  for (auto& p : I.unix_paths) ::unlink(p.c_str());
  {
    std::lock_guard lk(I.wait_mu);
  }
  I.wait_cv.notify_all();
}

}  // namespace dstack::rpc
