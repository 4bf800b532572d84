// Unit tests of the CVM simulator's parts that need no sandbox: compose/manifest parsing, measurements,
// the byte-stream forwarder, app keys from a seed.
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <thread>

#include "attest/eventlog.h"
#include "attest/measurement.h"
#include "base/fs.h"
#include "crypto/hash.h"
#include "cvmsim/config.h"
#include "cvmsim/keys.h"
#include "cvmsim/measure.h"
#include "cvmsim/portfwd.h"

using namespace dstack;
using namespace dstack::cvmsim;

// The seed's docker-compose.yaml (step 3), kept verbatim in images/kms/docker-compose.yaml.
TEST(CvmSimCompose, ParsesTheSeedsKmsCompose) {
  auto yaml = read_file(std::string(DSTACK_SOURCE_DIR) + "/images/kms/docker-compose.yaml");
  ASSERT_TRUE(yaml.ok()) << yaml.error().message;
  auto p = parse_docker_compose(*yaml);
  ASSERT_TRUE(p.ok()) << p.error().message;
  ASSERT_EQ(p->services.size(), 1u);
  const auto& kms = p->services[0];
  EXPECT_EQ(kms.name, "kms");
  EXPECT_EQ(kms.image, "registry.yourdomain.com/dstack-kms:fixed");
  EXPECT_EQ(kms.restart, "unless-stopped");
  ASSERT_EQ(kms.volumes.size(), 2u);
  EXPECT_FALSE(kms.volumes[0].named);
  EXPECT_EQ(kms.volumes[0].source, "/var/run/dstack.sock");
  EXPECT_TRUE(kms.volumes[1].named);
  EXPECT_EQ(kms.volumes[1].source, "kms-certs");
  EXPECT_EQ(kms.volumes[1].target, "/etc/kms/certs");
  ASSERT_EQ(kms.environment.size(), 2u);
  EXPECT_EQ(kms.environment[1], (std::pair<std::string, std::string>{"KMS_DOMAIN", "kms.yourdomain.com"}));
  EXPECT_EQ(p->volumes, std::vector<std::string>{"kms-certs"});
}

TEST(CvmSimCompose, InterpolatesAndStartsDependenciesFirst) {
  const std::string yaml = R"(services:
  kms:
    image: k:1
    environment:
      - KMS_DOMAIN=${DOMAIN:-kms.example.com}
      - FROM_ENV
    depends_on: [auth]
  auth:
    image: auth:1
    command: node index.js --port "8000"
)";
  auto p = parse_docker_compose(yaml, {{"FROM_ENV", "x"}});
  ASSERT_TRUE(p.ok()) << p.error().message;
  ASSERT_EQ(p->services.size(), 2u);
  EXPECT_EQ(p->services[0].name, "auth");  // dependency first
  EXPECT_EQ(*p->services[0].command, (std::vector<std::string>{"node", "index.js", "--port", "8000"}));
  const auto& kms = p->services[1];
  ASSERT_EQ(kms.environment.size(), 2u);
  EXPECT_EQ(kms.environment[0], (std::pair<std::string, std::string>{"KMS_DOMAIN", "kms.example.com"}));
  EXPECT_EQ(kms.environment[1].second, "x");
}

TEST(CvmSimCompose, RejectsBadInput) {
  EXPECT_FALSE(parse_docker_compose("services: [1, 2]").ok());
  EXPECT_FALSE(parse_docker_compose("services:\n  a:\n    build: .\n").ok());
  EXPECT_FALSE(parse_docker_compose("services:\n  a:\n    image: x\n    depends_on: [b]\n").ok());
  EXPECT_FALSE(parse_docker_compose("services:\n  a:\n    image: x\n    restart: sometimes\n").ok());
  EXPECT_FALSE(parse_app_compose(R"({"runner":"podman","docker_compose_file":""})").ok());
  EXPECT_EQ(interpolate("a${X}b$Y-${Z:-d}$$", {{"X", "1"}, {"Y", "2"}}), "a1b2-d$");
}

TEST(CvmSimCompose, AppComposeDefaultsAndHash) {
  std::string raw = R"({"manifest_version":2,"name":"kms","runner":"docker-compose","docker_compose_file":"services: {}","local_key_provider_enabled":true})";
  auto a = parse_app_compose(raw);
  ASSERT_TRUE(a.ok()) << a.error().message;
  EXPECT_EQ(a->key_provider, "local");
  EXPECT_TRUE(a->secure_time);  // default true when absent
  EXPECT_EQ(a->compose_hash, crypto::sha256(as_view(raw)));
  auto m = parse_manifest(R"({"id":"x","name":"kms","vcpu":2,"memory":4096,"port_map":[{"address":"127.0.0.1","protocol":"tcp","from":9100,"to":9100}]})");
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->port_map.at(0).from, 9100);
  EXPECT_FALSE(parse_manifest(R"({"port_map":[{"from":0,"to":1}]})").ok());
}

TEST(CvmSimMeasure, BootMeasurementDependsOnImageAndConfig) {
  Bytes img(32, 1), ch(32, 2);
  auto a = *derive_boot_measurement(img, 2, 4096ull << 20, ch);
  auto b = *derive_boot_measurement(img, 2, 4096ull << 20, ch);
  auto c = *derive_boot_measurement(img, 4, 4096ull << 20, ch);
  auto d = *derive_boot_measurement(Bytes(32, 3), 2, 4096ull << 20, ch);
  EXPECT_EQ(a.mrtd, b.mrtd);
  EXPECT_EQ(a.rtmr0, b.rtmr0);
  EXPECT_NE(a.rtmr0, c.rtmr0);
  EXPECT_EQ(a.mrtd, c.mrtd);
  EXPECT_NE(a.mrtd, d.mrtd);
  EXPECT_EQ(a.mrtd.size(), 48u);
  EXPECT_EQ(a.mr_config_id[0], 0x01);
  EXPECT_EQ(Bytes(a.mr_config_id.begin() + 1, a.mr_config_id.begin() + 33), ch);
  EXPECT_EQ(Bytes(a.mr_config_id.begin() + 33, a.mr_config_id.end()), Bytes(15, 0));
  EXPECT_EQ(a.mr_config_id, *attest::mr_config_id_v1(ch));
  EXPECT_FALSE(derive_boot_measurement(img, 2, 4096ull << 20, Bytes(31, 2)).ok());  // compose hash must be 32 B
}

TEST(CvmSimKeys, AppKeysFromSeedAreDeterministic) {
  Bytes seed(32, 5);
  auto a = app_keys_from_seed(seed, "Local", Bytes(32, 0xaa));
  auto b = app_keys_from_seed(seed, "Local", Bytes(32, 0xaa));
  ASSERT_TRUE(a.ok()) << a.error().message;
  EXPECT_EQ((*a)["k256_key"], (*b)["k256_key"]);
  EXPECT_EQ((*a)["disk_crypt_key"], (*b)["disk_crypt_key"]);
  EXPECT_EQ((*a)["k256_key"].get<std::string>(), to_hex(*crypto::derive_key(seed, {as_view("app-k256-key")}, 32)));
  EXPECT_EQ((*a)["key_provider"]["Local"]["mr"], std::string(64, 'a'));
  EXPECT_NE((*a)["k256_key"], (*app_keys_from_seed(Bytes(32, 6), "None"))["k256_key"]);
  EXPECT_FALSE(app_keys_from_seed(Bytes(31, 0), "None").ok());
  EXPECT_EQ(key_provider_info("local-sgx", "ab"), R"({"name":"local-sgx","id":"ab"})");
}

namespace {
// A TCP echo server on an ephemeral port; returns the port.
uint16_t start_echo(std::atomic<bool>& stop, std::thread& th) {
  int s = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  listen(s, 128);
  socklen_t l = sizeof a;
  getsockname(s, reinterpret_cast<sockaddr*>(&a), &l);
  th = std::thread([s, &stop] {
    while (!stop) {
      timeval tv{0, 200000};
      setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
      int c = accept(s, nullptr, nullptr);
      if (c < 0) continue;
      std::thread([c] {
        char buf[4096];
        ssize_t n;
        while ((n = read(c, buf, sizeof buf)) > 0) (void)!write(c, buf, static_cast<size_t>(n));
        close(c);
      }).detach();
    }
    close(s);
  });
  return ntohs(a.sin_port);
}
}  // namespace

TEST(CvmSimPortForward, TcpToUnixToTcpWithManyConnections) {
  char tmpl[] = "/tmp/cvmsim-fwd-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  std::string sock = std::string(tmpl) + "/tcp-1.sock";
  std::atomic<bool> stop{false};
  std::thread echo;
  uint16_t echo_port = start_echo(stop, echo);
  Forwarder vm_side(Endpoint::unix_socket(sock), Endpoint::tcp("127.0.0.1", echo_port));
  ASSERT_TRUE(vm_side.start().ok());
  Forwarder host_side(Endpoint::tcp("127.0.0.1", 0), Endpoint::unix_socket(sock));
  ASSERT_TRUE(host_side.start().ok());
  ASSERT_NE(host_side.bound_port(), 0);
  // Same port twice => clear error.
  Forwarder dup(Endpoint::tcp("127.0.0.1", host_side.bound_port()), Endpoint::unix_socket(sock));
  auto st = dup.start();
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.error().message.find("cannot listen"), std::string::npos);

  constexpr int kConns = 64;
  std::atomic<int> good{0};
  std::vector<std::thread> clients;
  for (int i = 0; i < kConns; ++i) {
    clients.emplace_back([&, i] {
      auto fd = connect_endpoint(Endpoint::tcp("127.0.0.1", host_side.bound_port()), std::chrono::seconds(5));
      if (!fd.ok()) return;
      std::string msg = "ping-" + std::to_string(i) + std::string(20000, 'x');
      size_t off = 0;
      std::string got;
      timeval tv{5, 0};
      setsockopt(*fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
      while (off < msg.size()) {
        ssize_t n = send(*fd, msg.data() + off, msg.size() - off, MSG_NOSIGNAL);
        if (n <= 0) break;
        off += static_cast<size_t>(n);
        char buf[8192];
        ssize_t r = recv(*fd, buf, sizeof buf, MSG_DONTWAIT);
        if (r > 0) got.append(buf, static_cast<size_t>(r));
      }
      shutdown(*fd, SHUT_WR);
      char buf[8192];
      ssize_t r;
      while ((r = recv(*fd, buf, sizeof buf, 0)) > 0) got.append(buf, static_cast<size_t>(r));
      close(*fd);
      if (got == msg) good++;
    });
  }
  for (auto& t : clients) t.join();
  EXPECT_EQ(good.load(), kConns);
  host_side.stop();
  vm_side.stop();
  EXPECT_FALSE(std::filesystem::exists(sock));
  stop = true;
  echo.join();
  std::filesystem::remove_all(tmpl);
}
