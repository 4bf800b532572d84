#include <gtest/gtest.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <thread>
#include <atomic>

#include "base/fs.h"
#include "rpc/http.h"
#include "rpc/prpc.h"

using namespace dstack;
using namespace dstack::rpc;

namespace {

std::string temp_dir() {
  char tmpl[] = "/tmp/rpc-test-XXXXXX";
  return mkdtemp(tmpl);
}

PrpcService echo_service() {
  PrpcService svc("Test.");
  svc.add("Echo", [](const Json& req, const HttpRequest&) -> Result<Json> { return Json{{"got", req}}; });
  svc.add("Fail", [](const Json&, const HttpRequest&) -> Result<Json> { return make_error("deliberate failure"); });
  svc.add("Bytes", [](const Json& req, const HttpRequest&) -> Result<Json> {
    TRY_ASSIGN(Bytes b, get_hex(req, "data"));
    return Json{{"len", b.size()}};
  });
  return svc;
}

}  // namespace

TEST(Http, PrpcOverUnixSocket) {
  auto dir = temp_dir();
  HttpServer server;
  auto svc = echo_service();
  svc.mount(server, "/prpc");
  ASSERT_TRUE(server.listen("unix:" + dir + "/s.sock").ok());
  server.start();
  std::string base = "unix:" + dir + "/s.sock:/prpc";

  auto r = prpc_call(base, "Test.Echo", Json{{"a", 1}});
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ((*r)["got"]["a"], 1);

  auto r2 = prpc_call(base, "Echo", Json::object());  // prefix is optional
  ASSERT_TRUE(r2.ok());

  auto bad = prpc_call(base, "Nope", Json::object());
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message.find("Service not found"), std::string::npos);

  auto fail = prpc_call(base, "Fail", Json::object());
  ASSERT_FALSE(fail.ok());
  EXPECT_NE(fail.error().message.find("deliberate failure"), std::string::npos);

  auto hex = http_request("GET", "unix:" + dir + "/s.sock:/prpc/Bytes?data=0x0102ff");
  ASSERT_TRUE(hex.ok());
  EXPECT_EQ(hex->status, 200);
  EXPECT_EQ(Json::parse(hex->body)["len"], 3);

  auto badjson = http_request("POST", "unix:" + dir + "/s.sock:/prpc/Echo?json", "{not json");
  ASSERT_TRUE(badjson.ok());
  EXPECT_EQ(badjson->status, 400);
  EXPECT_TRUE(Json::parse(badjson->body).contains("error"));
  server.stop();
  std::filesystem::remove_all(dir);
}

TEST(Http, BodyLimitAnswers413AndServerKeepsServing) {
  ServerOptions o;
  o.body_limit = 1024;
  HttpServer server(o);
  auto svc = echo_service();
  svc.mount(server, "/prpc");
  ASSERT_TRUE(server.listen("127.0.0.1:0").ok());
  server.start();
  std::string base = "http://127.0.0.1:" + std::to_string(server.bound_port());
  auto big = http_request("POST", base + "/prpc/Echo", std::string(4096, 'x'));
  ASSERT_TRUE(big.ok()) << big.error().message;
  EXPECT_EQ(big->status, 413);
  auto ok = prpc_call(base + "/prpc", "Echo", Json{{"k", "v"}});
  ASSERT_TRUE(ok.ok());
  server.stop();
}

TEST(Http, ClientTimesOutOnSilentServer) {
  // A listening socket that never answers.
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  ASSERT_EQ(listen(fd, 8), 0);
  socklen_t len = sizeof(a);
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ClientOptions co;
  co.timeout = std::chrono::milliseconds(300);
  auto t0 = std::chrono::steady_clock::now();
  auto r = http_request("GET", "http://127.0.0.1:" + std::to_string(ntohs(a.sin_port)) + "/", "", co);
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("timed out"), std::string::npos) << r.error().message;
  EXPECT_LT(ms, 3000);
  close(fd);
}

TEST(Http, StreamingResponse) {
  HttpServer server;
  server.route("GET", "/stream", [](const HttpRequest&) {
    HttpResponse r;
    r.content_type = "text/plain";
    r.stream = [](const StreamWriter& w) {
      for (int i = 0; i < 5; ++i) {
        if (!w("line " + std::to_string(i) + "\n")) return;
      }
    };
    return r;
  });
  ASSERT_TRUE(server.listen("127.0.0.1:0").ok());
  server.start();
  std::string got;
  auto st = http_stream("http://127.0.0.1:" + std::to_string(server.bound_port()) + "/stream",
                        [&](std::string_view c) { got += c; return true; });
  ASSERT_TRUE(st.ok()) << st.error().message;
  EXPECT_EQ(got, "line 0\nline 1\nline 2\nline 3\nline 4\n");
  server.stop();
}

TEST(Http, TlsWithOptionalClientCertificate) {
  auto dir = temp_dir();
  // Real certificates from the openssl CLI: a CA, a server cert and a client cert signed by the CA.
  std::string cmd = "cd " + dir +
                    " && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.crt"
                    " -subj /CN=testca -days 2 2>/dev/null"
                    " && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout srv.key -out srv.crt"
                    " -subj /CN=localhost -days 2 2>/dev/null"
                    " && openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout cli.key -out cli.csr"
                    " -subj /CN=client 2>/dev/null"
                    " && openssl x509 -req -in cli.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out cli.crt -days 2 2>/dev/null";
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  HttpServer server;
  server.route("GET", "/who", [](const HttpRequest& req) {
    return HttpResponse::text(200, req.peer_cert_der ? "cert" : "anonymous");
  });
  TlsServerConfig tls{*read_file(dir + "/srv.crt"), *read_file(dir + "/srv.key"), *read_file(dir + "/ca.crt"), false};
  ASSERT_TRUE(server.listen("127.0.0.1:0", tls).ok());
  server.start();
  std::string url = "https://127.0.0.1:" + std::to_string(server.bound_port()) + "/who";

  ClientOptions anon;
  anon.insecure_skip_verify = true;
  auto r1 = http_request("GET", url, "", anon);
  ASSERT_TRUE(r1.ok()) << r1.error().message;
  EXPECT_EQ(r1->body, "anonymous");
  ASSERT_EQ(r1->peer_cert_chain_der.size(), 1u);

  ClientOptions withcert = anon;
  withcert.client_cert_pem = *read_file(dir + "/cli.crt");
  withcert.client_key_pem = *read_file(dir + "/cli.key");
  auto r2 = http_request("GET", url, "", withcert);
  ASSERT_TRUE(r2.ok()) << r2.error().message;
  EXPECT_EQ(r2->body, "cert");

  ClientOptions verify;  // server cert is self-signed and not trusted -> must fail
  verify.ca_pem = *read_file(dir + "/ca.crt");
  auto r3 = http_request("GET", url, "", verify);
  EXPECT_FALSE(r3.ok());
  server.stop();
  std::filesystem::remove_all(dir);
}

TEST(Http, InlineHandlersRunOnIoThreadAndOthersOnPool) {
  ServerOptions o;
  o.threads = 1;
  o.run_inline = [](const HttpRequest& r) { return r.path == "/fast"; };
  HttpServer server(o);
  std::thread::id fast_tid, slow_tid;
  server.route("GET", "/fast", [&](const HttpRequest&) { fast_tid = std::this_thread::get_id(); return HttpResponse::text(200, "f"); });
  server.route("GET", "/slow", [&](const HttpRequest&) {
    slow_tid = std::this_thread::get_id();
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    return HttpResponse::text(200, "s");
  });
  ASSERT_TRUE(server.listen("127.0.0.1:0").ok());
  server.start();
  std::string base = "http://127.0.0.1:" + std::to_string(server.bound_port());
  // A slow pooled handler must not delay the inline one on the single I/O thread.
  std::thread t([&] { (void)http_request("GET", base + "/slow"); });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  auto t0 = std::chrono::steady_clock::now();
  auto r = http_request("GET", base + "/fast");
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count();
  t.join();
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->body, "f");
  EXPECT_LT(ms, 300);
  EXPECT_NE(fast_tid, slow_tid);
  server.stop();
}

TEST(Http, StreamDeliversChunksAsTheyArrive) {
  HttpServer server;
  std::atomic<bool> release{false};
  server.route("GET", "/follow", [&](const HttpRequest&) {
    HttpResponse r;
    r.content_type = "text/plain";
    r.stream = [&](const StreamWriter& w) {
      w("first\n");
      for (int i = 0; i < 100 && !release; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(20));
      w("second\n");
    };
    return r;
  });
  ASSERT_TRUE(server.listen("127.0.0.1:0").ok());
  server.start();
  std::string got;
  bool saw_first_before_release = false;
  auto st = http_stream("http://127.0.0.1:" + std::to_string(server.bound_port()) + "/follow", [&](std::string_view c) {
    got += c;
    if (got.find("first") != std::string::npos && !release) {
      saw_first_before_release = true;
      release = true;
    }
    return true;
  });
  ASSERT_TRUE(st.ok()) << st.error().message;
  EXPECT_TRUE(saw_first_before_release);
  EXPECT_EQ(got, "first\nsecond\n");
  server.stop();
}
