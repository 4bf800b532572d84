// HTTP client on Boost.Beast: one coroutine per request on a private io_context, with a deadline timer that
// closes the socket when the whole request exceeds ClientOptions::timeout.
#include <utility>  // must precede asio: Boost 1.74's awaitable.hpp uses std::exchange

#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <boost/asio.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast.hpp>
#include <boost/beast/ssl.hpp>
#include <future>

#include "rpc/http.h"
#include "rpc/internal.h"

namespace dstack::rpc {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace ssl = net::ssl;
using tcp = net::ip::tcp;
using unix_proto = net::local::stream_protocol;

namespace internal {
STACK_OF(X509_NAME) * pem_subjects(const std::string& pem) {
  BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  if (!bio) return nullptr;
  STACK_OF(X509_NAME)* names = sk_X509_NAME_new_null();
  while (X509* x = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr)) {
    sk_X509_NAME_push(names, X509_NAME_dup(X509_get_subject_name(x)));
    X509_free(x);
  }
  ERR_clear_error();
  BIO_free(bio);
  if (sk_X509_NAME_num(names) == 0) {
    sk_X509_NAME_free(names);
    return nullptr;
  }
  return names;
}
}  // namespace internal

namespace {

struct ParsedUrl {
  std::string scheme;  // http | https | unix
  std::string host;
  std::string port;
  std::string target;  // path + query
  std::string socket_path;
};

Result<ParsedUrl> parse_url(const std::string& url) {
  ParsedUrl u;
  if (url.rfind("unix:", 0) == 0) {
    u.scheme = "unix";
    std::string rest = url.substr(5);
    auto c = rest.find(':');
    u.socket_path = rest.substr(0, c);
    u.target = c == std::string::npos ? "/" : rest.substr(c + 1);
    if (u.target.empty() || u.target[0] != '/') u.target = "/" + u.target;
    u.host = "localhost";
    if (u.socket_path.empty()) return make_error("bad URL '" + url + "': empty unix socket path");
    return u;
  }
  auto se = url.find("://");
  if (se == std::string::npos) return make_error("bad URL '" + url + "': expected http://, https:// or unix:");
  u.scheme = url.substr(0, se);
  if (u.scheme != "http" && u.scheme != "https") return make_error("bad URL '" + url + "': unsupported scheme " + u.scheme);
  std::string rest = url.substr(se + 3);
  auto slash = rest.find_first_of("/?");
  std::string hostport = rest.substr(0, slash);
  u.target = slash == std::string::npos ? "/" : rest.substr(slash);
  if (u.target[0] == '?') u.target = "/" + u.target;
  if (!hostport.empty() && hostport[0] == '[') {
    auto rb = hostport.find(']');
    if (rb == std::string::npos) return make_error("bad URL '" + url + "': unterminated IPv6 literal");
    u.host = hostport.substr(1, rb - 1);
    u.port = rb + 1 < hostport.size() && hostport[rb + 1] == ':' ? hostport.substr(rb + 2) : "";
  } else {
    auto c = hostport.rfind(':');
    u.host = hostport.substr(0, c);
    u.port = c == std::string::npos ? "" : hostport.substr(c + 1);
  }
  if (u.port.empty()) u.port = u.scheme == "https" ? "443" : "80";
  if (u.host.empty()) return make_error("bad URL '" + url + "': missing host");
  return u;
}

Result<std::shared_ptr<ssl::context>> make_client_tls(const ClientOptions& o) {
  auto ctx = std::make_shared<ssl::context>(ssl::context::tls_client);
  beast::error_code ec;
  if (o.insecure_skip_verify) {
    ctx->set_verify_mode(ssl::verify_none);
  } else {
    if (!o.ca_pem.empty()) {
      ctx->add_certificate_authority(net::buffer(o.ca_pem), ec);
      if (ec) return make_error("CA certificate for TLS verification is not valid PEM: " + ec.message());
    } else {
      ctx->set_default_verify_paths(ec);
    }
    ctx->set_verify_mode(ssl::verify_peer);
  }
  if (!o.client_cert_pem.empty()) {
    ctx->use_certificate_chain(net::buffer(o.client_cert_pem), ec);
    if (ec) return make_error("client certificate is not valid PEM: " + ec.message());
    ctx->use_private_key(net::buffer(o.client_key_pem), ssl::context::pem, ec);
    if (ec) return make_error("client key is not valid PEM or does not match the certificate: " + ec.message());
  }
  return ctx;
}

std::string describe(const beast::error_code& ec, bool timed_out, const ClientOptions& o) {
  if (timed_out) return "timed out after " + std::to_string(o.timeout.count()) + " ms";
  return ec.message();
}

template <class Stream>
void fill_response(http::response<http::string_body>& res, HttpClientResponse& out) {
  out.status = static_cast<int>(res.result_int());
  out.body = std::move(res.body());
  for (auto& f : res) {
    std::string name(f.name_string());
    for (auto& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    out.headers[name] = std::string(f.value());
  }
}

std::vector<Bytes> peer_chain(SSL* s) {
  std::vector<Bytes> out;
  STACK_OF(X509)* chain = SSL_get_peer_cert_chain(s);
  if (!chain) return out;
  for (int i = 0; i < sk_X509_num(chain); ++i) {
    X509* x = sk_X509_value(chain, i);
    int len = i2d_X509(x, nullptr);
    if (len <= 0) continue;
    Bytes der(static_cast<size_t>(len));
    unsigned char* p = der.data();
    i2d_X509(x, &p);
    out.push_back(std::move(der));
  }
  return out;
}

// One request: connect (tcp/tls/unix), write, then either read the full response or stream it.
struct Exchange {
  const ClientOptions& opts;
  ParsedUrl url;
  http::request<http::string_body> req;
  const std::function<bool(std::string_view)>* on_chunk = nullptr;  // streaming mode
  HttpClientResponse out;
  beast::error_code ec;
  std::string stage = "connect";
  bool timed_out = false;

  template <class Stream>
  net::awaitable<void> exchange(Stream& stream) {
    stage = "send request";
    co_await http::async_write(stream, req, net::redirect_error(net::use_awaitable, ec));
    if (ec) co_return;
    beast::flat_buffer buf;
    stage = "read response";
    if (!on_chunk) {
      http::response_parser<http::string_body> p;
      p.body_limit(opts.body_limit);
      co_await http::async_read(stream, buf, p, net::redirect_error(net::use_awaitable, ec));
      if (ec) co_return;
      auto res = p.release();
      fill_response<Stream>(res, out);
      co_return;
    }
    http::response_parser<http::buffer_body> p;
    p.body_limit(boost::none);
    co_await http::async_read_header(stream, buf, p, net::redirect_error(net::use_awaitable, ec));
    if (ec) co_return;
    out.status = static_cast<int>(p.get().result_int());
    char chunk[16384];
    while (!p.is_done()) {
      p.get().body().data = chunk;
      p.get().body().size = sizeof(chunk);
      // read_some: deliver each chunk as it arrives (a full read would wait for the buffer to fill).
      co_await http::async_read_some(stream, buf, p, net::redirect_error(net::use_awaitable, ec));
      if (ec == http::error::need_buffer) ec = {};
      if (ec) co_return;
      size_t n = sizeof(chunk) - p.get().body().size;
      if (n > 0 && !(*on_chunk)(std::string_view(chunk, n))) co_return;
    }
  }

  net::awaitable<void> run(std::shared_ptr<ssl::context> tls) {
    auto ex = co_await net::this_coro::executor;
    net::steady_timer deadline(ex);
    if (url.scheme == "unix") {
      unix_proto::socket sock(ex);
      deadline.expires_after(opts.timeout);
      deadline.async_wait([&](beast::error_code e) {
        if (!e) { timed_out = true; beast::error_code ig; sock.close(ig); }
      });
      co_await sock.async_connect(unix_proto::endpoint(url.socket_path), net::redirect_error(net::use_awaitable, ec));
      if (!ec) co_await exchange(sock);
      deadline.cancel();
      co_return;
    }
    tcp::resolver resolver(ex);
    tcp::socket sock(ex);
    deadline.expires_after(opts.timeout);
    deadline.async_wait([&](beast::error_code e) {
      if (!e) { timed_out = true; beast::error_code ig; sock.close(ig); resolver.cancel(); }
    });
    stage = "resolve " + url.host;
    auto results = co_await resolver.async_resolve(url.host, url.port, net::redirect_error(net::use_awaitable, ec));
    if (ec) { deadline.cancel(); co_return; }
    stage = "connect";
    co_await net::async_connect(sock, results, net::redirect_error(net::use_awaitable, ec));
    if (ec) { deadline.cancel(); co_return; }
    sock.set_option(tcp::no_delay(true), ec);
    if (!tls) {
      co_await exchange(sock);
      deadline.cancel();
      co_return;
    }
    ssl::stream<tcp::socket&> s(sock, *tls);
    beast::error_code ig;
    net::ip::make_address(url.host, ig);
    if (ig) SSL_set_tlsext_host_name(s.native_handle(), url.host.c_str());  // SNI only for names
    if (!opts.insecure_skip_verify && ig) s.set_verify_callback(ssl::host_name_verification(url.host));
    stage = "TLS handshake";
    co_await s.async_handshake(ssl::stream_base::client, net::redirect_error(net::use_awaitable, ec));
    if (!ec) {
      out.peer_cert_chain_der = peer_chain(s.native_handle());
      co_await exchange(s);
    }
    deadline.cancel();
  }
};

Result<HttpClientResponse> perform(const std::string& method, const std::string& url_s, const std::string& body,
                                   const ClientOptions& opts, const std::string& content_type,
                                   const std::function<bool(std::string_view)>* on_chunk) {
  TRY_ASSIGN(ParsedUrl url, parse_url(url_s));
  std::shared_ptr<ssl::context> tls;
  if (url.scheme == "https") {
    TRY_ASSIGN(tls, make_client_tls(opts));
  }
  Exchange x{opts, url, {}, on_chunk, {}, {}, "connect", false};
  x.req.method_string(method);
  x.req.target(url.target);
  x.req.version(11);
  x.req.set(http::field::host, url.host);
  x.req.set(http::field::user_agent, "dstack-cpp/0.1");
  for (auto& [k, v] : opts.headers) x.req.set(k, v);
  if (!body.empty() || method == "POST" || method == "PUT") {
    x.req.set(http::field::content_type, content_type);
    x.req.body() = body;
    x.req.prepare_payload();
  }
  net::io_context ioc;
  std::exception_ptr failure;
  net::co_spawn(ioc, x.run(tls), [&](std::exception_ptr e) { failure = e; });
  ioc.run();
  if (failure) {
    try {
      std::rethrow_exception(failure);
    } catch (const std::exception& e) {
      return make_error(method + " " + url_s + " failed: " + e.what());
    }
  }
  if (x.ec || x.timed_out)
    return make_error(method + " " + url_s + " failed (" + x.stage + "): " + describe(x.ec, x.timed_out, opts));
  return std::move(x.out);
}

}  // namespace

Result<HttpClientResponse> http_request(const std::string& method, const std::string& url, const std::string& body,
                                        const ClientOptions& opts, const std::string& content_type) {
  return perform(method, url, body, opts, content_type, nullptr);
}

Status http_stream(const std::string& url, const std::function<bool(std::string_view)>& on_chunk,
                   const ClientOptions& opts) {
  auto r = perform("GET", url, "", opts, "application/json", &on_chunk);
  if (!r.ok()) return r.error();
  if (r->status >= 400) return make_error("GET " + url + " answered HTTP " + std::to_string(r->status));
  return Status::Ok();
}

}  // namespace dstack::rpc
