// Env encryption to the KMS (spec §5.3, §9 step 7, §11.1): the VMM's GetAppEnvEncryptPubKey proxy and
// `vmm-cli deploy --env-file` against a fake KMS over HTTPS (src/rpc server, k256-signed key), and the
// CreateVm docker registry pre-check against a fake registry (/v2/<name>/tags/list).
#include <gtest/gtest.h>

#include <atomic>
#include <ctime>
#include <mutex>

#include "crypto/ecdh.h"
#include "crypto/k256.h"
#include "crypto/x509.h"
#include "rpc/http.h"
#include "rpc/prpc.h"
#include "vmm/envcrypt.h"
#include "vmm/server.h"
#include "vmm/vmm.h"
#include "vmm_test_util.h"

using namespace dstack;
using namespace dstack::vmm;
using namespace vmmtest;
using namespace std::chrono_literals;

namespace {

// A KMS that answers GetAppEnvEncryptPubKey like spec §5.3 (over HTTPS with a self-signed cert).
struct FakeKms {
  enum class Mode { Good, BadSignature, UntrustedSigner };
  crypto::K256Key root = crypto::K256Key::generate();
  crypto::K256Key stranger = crypto::K256Key::generate();
  crypto::X25519KeyPair env_key = crypto::x25519_generate();
  std::atomic<Mode> mode{Mode::Good};
  std::atomic<int> calls{0};
  std::mutex mu;
  std::string last_app_id;
  rpc::HttpServer server;
  std::shared_ptr<rpc::PrpcService> svc = std::make_shared<rpc::PrpcService>("KMS.");
  std::string url;

  FakeKms() {
    svc->add("GetAppEnvEncryptPubKey", [this](const nlohmann::json& req, const rpc::HttpRequest&) -> Result<nlohmann::json> {
      TRY_ASSIGN(Bytes app_id, rpc::get_hex(req, "app_id"));
      if (app_id.size() != 20) return make_error("app_id must be 20 bytes");
      ++calls;
      {
        std::lock_guard lk(mu);
        last_app_id = to_hex(app_id);
      }
      const crypto::K256Key& signer = mode == Mode::UntrustedSigner ? stranger : root;
      uint64_t ts = static_cast<uint64_t>(std::time(nullptr));
      const Bytes& pub = env_key.public_key;
      TRY_ASSIGN(Bytes sig, signer.sign_recoverable(crypto::dstack_message_digest("dstack-env-encrypt-pubkey", app_id, pub)));
      TRY_ASSIGN(Bytes sig1, signer.sign_recoverable(
                                 crypto::dstack_message_digest_ts("dstack-env-encrypt-pubkey", app_id, ts, pub)));
      if (mode == Mode::BadSignature) {
        std::fill(sig1.begin(), sig1.begin() + 32, 0);  // r = 0: recovers no key
        std::fill(sig.begin(), sig.begin() + 32, 0);
      }
      return nlohmann::json{{"public_key", to_hex(pub)}, {"signature", to_hex(sig)}, {"timestamp", ts},
                            {"signature_v1", to_hex(sig1)}};
    });
    svc->mount(server, "/prpc");
    auto key = crypto::P256Key::generate();
    EXPECT_TRUE(key.ok());
    crypto::CertSpec spec;
    spec.common_name = "fake-kms";
    spec.alt_names = {"127.0.0.1", "localhost"};
    spec.usage_server_auth = true;
    auto cert = crypto::issue_certificate(spec, *key, *key, nullptr);
    EXPECT_TRUE(cert.ok()) << cert.error().message;
    rpc::TlsServerConfig tls;
    tls.cert_chain_pem = cert->to_pem();
    tls.key_pem = key->to_pkcs8_pem();
    auto s = server.listen("tcp:127.0.0.1:0", tls);
    EXPECT_TRUE(s.ok()) << s.error().message;
    server.start();
    url = "https://127.0.0.1:" + std::to_string(server.bound_port(0));
  }
  ~FakeKms() { server.stop(); }
};

// An in-process VMM (VmManager + its HTTP routes) on an ephemeral loopback port.
struct Vmm {
  std::unique_ptr<VmManager> m;
  std::unique_ptr<rpc::HttpServer> server;
  std::shared_ptr<void> routes;
  std::string url;
  explicit Vmm(const VmmConfig& cfg) {
    m = std::make_unique<VmManager>(cfg, std::make_unique<SleepBackend>());
    EXPECT_TRUE(m->load().ok());
    server = std::make_unique<rpc::HttpServer>();
    routes = register_routes(*server, *m);
    EXPECT_TRUE(server->listen("tcp:127.0.0.1:0").ok());
    server->start();
    url = "http://127.0.0.1:" + std::to_string(server->bound_port(0));
  }
  ~Vmm() { server->stop(); }
  size_t vm_count() const { return (*m->status(nlohmann::json::object()))["vms"].size(); }
};

std::string cli() {
  std::string bin = std::string(DSTACK_BIN_DIR) + "/vmm-cli";
  EXPECT_TRUE(file_exists(bin)) << bin << " not built (target vmm-cli)";
  return bin;
}

}  // namespace

TEST(VmmEnvEncrypt, GetAppEnvEncryptPubKeyProxy) {
  TempDir tmp;
  FakeKms kms;
  VmmConfig cfg = vmm_config(tmp.path);
  cfg.cvm.kms_urls = {kms.url + "/"};
  Vmm vmm(cfg);
  std::string app_id = "00112233445566778899aabbccddeeff00112233";
  auto r = rpc::prpc_call(vmm.url + "/prpc", "GetAppEnvEncryptPubKey", nlohmann::json{{"app_id", app_id}});
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ((*r)["public_key"], to_hex(kms.env_key.public_key));
  EXPECT_EQ(kms.last_app_id, app_id);
  // The answer verifies: the signer recovered from it is the KMS root k256 key.
  auto signer = recover_env_pubkey_signer(*from_hex(app_id), *rpc::get_hex(*r, "public_key"),
                                          *rpc::get_hex(*r, "signature"), *rpc::get_u64(*r, "timestamp"),
                                          *rpc::get_hex(*r, "signature_v1"));
  ASSERT_TRUE(signer.ok()) << signer.error().message;
  EXPECT_EQ(*signer, kms.root.public_compressed());
  // Legacy signature alone also verifies.
  auto legacy = recover_env_pubkey_signer(*from_hex(app_id), *rpc::get_hex(*r, "public_key"),
                                          *rpc::get_hex(*r, "signature"), 0, {});
  ASSERT_TRUE(legacy.ok());
  EXPECT_EQ(*legacy, kms.root.public_compressed());

  auto bad = rpc::prpc_call(vmm.url + "/prpc", "GetAppEnvEncryptPubKey", nlohmann::json{{"app_id", "0011"}});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message.find("20 bytes"), std::string::npos) << bad.error().message;

  // KMS unreachable: a clear error naming it.
  cfg.cvm.kms_urls = {"https://127.0.0.1:" + std::to_string(free_port())};
  cfg.run_path = tmp.path + "/run2";
  Vmm vmm2(cfg);
  auto down = rpc::prpc_call(vmm2.url + "/prpc", "GetAppEnvEncryptPubKey", nlohmann::json{{"app_id", app_id}});
  ASSERT_FALSE(down.ok());
  EXPECT_NE(down.error().message.find("asking KMS " + cfg.cvm.kms_urls[0]), std::string::npos)
      << down.error().message;
}

TEST(VmmEnvEncrypt, CliDeployEncryptsEnvOnlyToTrustedKms) {
  TempDir tmp;
  FakeKms kms;
  VmmConfig cfg = vmm_config(tmp.path);
  cfg.cvm.kms_urls = {kms.url};
  Vmm vmm(cfg);
  auto compose = render_app_compose(compose_options());
  ASSERT_TRUE(compose.ok());
  std::string compose_file = tmp.path + "/app-compose.json";
  ASSERT_TRUE(write_file_atomic(compose_file, *compose).ok());
  std::string env_file = tmp.path + "/app.env";
  ASSERT_TRUE(write_file_atomic(env_file, "# secrets\nDB_PASSWORD=\"s3cr3t value\"\nexport API_KEY=abc=def\n\nEMPTY=\n").ok());
  std::string home = tmp.path + "/home";
  ASSERT_TRUE(make_dirs(home + "/.dstack-vmm").ok());
  ASSERT_TRUE(write_file_atomic(home + "/.dstack-vmm/kms-whitelist.json",
                                nlohmann::json{{"trusted_signers", {to_hex(kms.root.public_compressed())}}}.dump())
                  .ok());
  std::map<std::string, std::string> env{{"HOME", home}, {"DSTACK_VMM_URL", vmm.url}};
  auto deploy = [&](const std::string& name, std::vector<std::string> extra) {
    std::vector<std::string> argv{cli(), "deploy", "--name", name, "--image", "img-1", "--compose", compose_file,
                                  "--env-file", env_file, "--memory", "512", "--disk", "1", "--stopped"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    return run(argv, tmp.path + "/cli-" + name + ".log", env);
  };
  std::string expected_plain = env_to_json(*parse_env_file(*read_file(env_file)));
  EXPECT_EQ(expected_plain,
            R"({"env":[{"key":"DB_PASSWORD","value":"s3cr3t value"},{"key":"API_KEY","value":"abc=def"},)"
            R"({"key":"EMPTY","value":""}]})");
  auto check_env_of = [&](const std::string& out) {
    auto pos = out.find("Created VM with ID: ");
    ASSERT_NE(pos, std::string::npos) << out;
    std::string id = out.substr(pos + 20, 36);
    auto blob = read_file_bytes(vmm.m->vm_dir(id) + "/shared/.encrypted-env");
    ASSERT_TRUE(blob.ok()) << blob.error().message;
    EXPECT_EQ(std::string(blob->begin(), blob->end()).find("s3cr3t"), std::string::npos);  // really encrypted
    auto plain = crypto::dstack_decrypt_env(kms.env_key.secret, *blob);
    ASSERT_TRUE(plain.ok()) << plain.error().message;
    EXPECT_EQ(std::string(plain->begin(), plain->end()), expected_plain);
    // Another key cannot open it.
    EXPECT_FALSE(crypto::dstack_decrypt_env(crypto::x25519_generate().secret, *blob).ok());
  };

  // 1. No KMS URL on the command line: the key comes through the VMM's proxy (its [cvm] kms_urls).
  auto [rc1, out1] = deploy("via-vmm", {});
  ASSERT_EQ(rc1, 0) << out1;
  check_env_of(out1);
  EXPECT_EQ(kms.last_app_id, app_id_of(*compose));
  // 2. --kms-url: asked directly.
  int before = kms.calls;
  auto [rc2, out2] = deploy("direct", {"--kms-url", kms.url});
  ASSERT_EQ(rc2, 0) << out2;
  check_env_of(out2);
  EXPECT_EQ(kms.calls.load(), before + 1);
  EXPECT_EQ(vmm.vm_count(), 2u);

  // 3. A signature that recovers no key: refused, nothing created.
  kms.mode = FakeKms::Mode::BadSignature;
  auto [rc3, out3] = deploy("bad-sig", {});
  EXPECT_NE(rc3, 0);
  EXPECT_NE(out3.find("invalid signature"), std::string::npos) << out3;
  // 4. A valid signature by a key that is not in the whitelist: refused, nothing created.
  kms.mode = FakeKms::Mode::UntrustedSigner;
  auto [rc4, out4] = deploy("untrusted", {"--kms-url", kms.url});
  EXPECT_NE(rc4, 0);
  EXPECT_NE(out4.find("signed by " + to_hex(kms.stranger.public_compressed()) + ", which is not in"),
            std::string::npos)
      << out4;
  EXPECT_EQ(vmm.vm_count(), 2u);
  EXPECT_FALSE(vmm.m->resolve("bad-sig").has_value());
  EXPECT_FALSE(vmm.m->resolve("untrusted").has_value());

  // 5. Env file with a compose that has no KMS: refused before any network call.
  auto nokms = compose_options();
  nokms.kms = false;
  std::string nokms_file = tmp.path + "/nokms.json";
  ASSERT_TRUE(write_file_atomic(nokms_file, *render_app_compose(nokms)).ok());
  auto [rc5, out5] = run({cli(), "deploy", "--name", "nokms", "--image", "img-1", "--compose", nokms_file,
                          "--env-file", env_file},
                         tmp.path + "/cli-nokms.log", env);
  EXPECT_NE(rc5, 0);
  EXPECT_NE(out5.find("kms_enabled"), std::string::npos) << out5;
}

// ---------------------------------------------------------------- docker registry pre-check

TEST(VmmRegistry, CreateVmChecksImagesInRegistry) {
  TempDir tmp;
  std::atomic<int> hits{0};
  rpc::HttpServer reg;
  reg.route_prefix("GET", "/v2/", [&](const rpc::HttpRequest& req) {
    ++hits;
    if (req.path == "/v2/library/nginx/tags/list")
      return rpc::HttpResponse::json(200, R"({"name":"library/nginx","tags":["1.25","latest"]})");
    if (req.path == "/v2/dstack-kms/tags/list")
      return rpc::HttpResponse::json(200, R"({"name":"dstack-kms","tags":["fixed"]})");
    return rpc::HttpResponse::json(404, R"({"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known"}]})");
  });
  ASSERT_TRUE(reg.listen("tcp:127.0.0.1:0").ok());
  reg.start();
  VmmConfig cfg = vmm_config(tmp.path);
  cfg.cvm.docker_registry = "127.0.0.1:" + std::to_string(reg.bound_port(0));
  cfg.cvm.docker_registry_timeout_ms = 2000;
  Vmm vmm(cfg);
  auto create = [&](const std::string& name, const std::string& image) {
    auto c = render_app_compose(compose_options(image));
    EXPECT_TRUE(c.ok());
    auto req = create_request(name, *c);
    req["stopped"] = true;
    return vmm.m->create_vm(req);
  };
  auto dirs = [&] {
    size_t n = 0;
    std::error_code ec;
    for ([[maybe_unused]] auto& e : fs::directory_iterator(cfg.run_path, ec)) ++n;
    return n;
  };
  auto ok1 = create("web", "nginx:latest");
  ASSERT_TRUE(ok1.ok()) << ok1.error().message;
  auto ok2 = create("kms", "registry.example.com/dstack-kms:fixed");  // the seed's registry-qualified ref
  ASSERT_TRUE(ok2.ok()) << ok2.error().message;
  EXPECT_GE(hits.load(), 2);
  EXPECT_EQ(dirs(), 2u);

  auto missing_repo = create("ghost", "ghost/app:1");
  ASSERT_FALSE(missing_repo.ok());
  EXPECT_NE(missing_repo.error().message.find("image ghost/app:1 not found in registry " + cfg.cvm.docker_registry),
            std::string::npos)
      << missing_repo.error().message;
  auto missing_tag = create("old", "nginx:0.1");
  ASSERT_FALSE(missing_tag.ok());
  EXPECT_NE(missing_tag.error().message.find("image nginx:0.1 not found in registry"), std::string::npos)
      << missing_tag.error().message;
  EXPECT_EQ(dirs(), 2u) << "a refused CreateVm left something in run_path";

  // The CLI shows the same error and exits non-zero.
  std::string compose_file = tmp.path + "/ghost.json";
  ASSERT_TRUE(write_file_atomic(compose_file, *render_app_compose(compose_options("ghost/app:1"))).ok());
  auto [rc, out] = run({cli(), "--url", vmm.url, "deploy", "--name", "ghost", "--image", "img-1", "--compose",
                        compose_file, "--memory", "512", "--disk", "1"},
                       tmp.path + "/cli.log");
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("image ghost/app:1 not found in registry"), std::string::npos) << out;

  // Registry down: a clear error within the configured timeout.
  reg.stop();
  auto t0 = std::chrono::steady_clock::now();
  auto down = create("late", "nginx:latest");
  ASSERT_FALSE(down.ok());
  EXPECT_NE(down.error().message.find("unreachable"), std::string::npos) << down.error().message;
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 4s);
  EXPECT_EQ(dirs(), 2u);
}
