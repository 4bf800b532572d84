// `dstack-cvm-sim guest-init`: the guest's init inside the per-VM sandbox — the boot sequence of spec §9, the
// guest agent, the VM side of port mappings and the docker-compose services.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/timex.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <thread>

#include <spdlog/spdlog.h>

#include "attest/collateral.h"
#include "attest/eventlog.h"
#include "attest/measurement.h"
#include "base/fs.h"
#include "crypto/ecdh.h"
#include "crypto/hash.h"
#include "crypto/p256.h"
#include "crypto/x509.h"
#include "cvmsim/cvm.h"
#include "cvmsim/keys.h"
#include "cvmsim/portfwd.h"
#include "cvmsim/process.h"
#include "keyprovider/client.h"
#include "ratls/ratls.h"
#include "rpc/prpc.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace dstack::cvmsim {

namespace {

std::atomic<bool> g_stop{false};
void on_term(int) { g_stop.store(true); }

class Guest {
 public:
  explicit Guest(json plan) : plan_(std::move(plan)) {}
  int main(int shutdown_fd);

 private:
  Status boot();
  Status start_agent(const std::string& keys_file, bool generate_keys);
  void stop_agent();
  Status emit(const std::string& event, ByteView payload);
  Status emit_direct(const std::string& event, ByteView payload);
  Result<Bytes> get_quote(ByteView report_data);
  Result<json> host_call(const std::string& method, const json& req, std::chrono::milliseconds timeout);
  void notify(const std::string& event, const std::string& payload);
  Status get_keys();
  Status get_keys_local(Bytes& seed, Bytes& mr);
  Result<json> get_keys_from_kms(const std::string& url);
  Status decrypt_env();
  void wait_secure_time();
  Status start_services();
  void supervise(const ServiceSpec& svc);
  Result<pid_t> spawn_service(const ServiceSpec& svc, int& out_fd);
  void shutdown();

  json plan_;
  AppCompose compose_;
  SysConfig sys_;
  Bytes kms_os_image_hash_;
  Bytes app_id_, instance_id_, instance_id_seed_;
  std::string kp_name_, kp_id_;
  json appkeys_;
  std::map<std::string, std::string> app_env_;
  pid_t agent_pid_ = -1;
  std::thread agent_relay_;
  std::vector<std::unique_ptr<Forwarder>> forwarders_;
  std::vector<std::thread> supervisors_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, pid_t> running_;  // service -> pid of its bwrap (own process group)
};

std::string agent_url() { return std::string("unix:") + kGuestAgentSocket + ":"; }

// Before the agent runs, boot events extend the simulated RTMR3 register directly — the agent's simulator
// backend keeps RTMR3 in <state_dir>/rtmr3 (hex), the stand-in for the tdx_guest sysfs RTMR file that the real
// dstack-util writes — and append to the runtime event log under its flock (spec §8.3). The agent restores RTMR3
// from that file at start and, seeing a non-empty log, does not emit its own simulated boot events.
Status Guest::emit_direct(const std::string& event, ByteView payload) {
  const std::string dir = "/run/log/dstack";
  TRY(make_dirs(dir, 0700));
  TRY(make_dirs("/run/dstack-sim", 0700));
  int lk = ::open((dir + "/runtime_event.lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (lk < 0) return make_error("cannot open the runtime event lock in " + dir);
  flock(lk, LOCK_EX);
  struct Unlock {
    int fd;
    ~Unlock() { flock(fd, LOCK_UN); ::close(fd); }
  } unlock{lk};
  if (!file_exists(dir + "/runtime_event_version")) TRY(write_file_atomic(dir + "/runtime_event_version", std::string_view("1"), 0644));
  const std::string state = "/run/dstack-sim/rtmr3";
  Bytes mr(48, 0);
  if (file_exists(state)) {
    TRY_ASSIGN(std::string t, read_file(state));
    while (!t.empty() && std::isspace(static_cast<unsigned char>(t.back()))) t.pop_back();
    TRY_ASSIGN(mr, from_hex(t));
  }
  attest::RuntimeEvent ev{event, Bytes(payload.begin(), payload.end()), 1};
  if (mr.size() != attest::kRtmrSize) return make_error(state + " does not hold a 48-byte RTMR3 value");
  mr = attest::rtmr_extend(mr, ev.digest());
  TRY(write_file_atomic(state, to_hex(mr) + "\n", 0600));
  std::string line = attest::runtime_event_to_log_line(ev) + "\n";
  int fd = ::open((dir + "/runtime_events.log").c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return make_error("cannot open " + dir + "/runtime_events.log");
  bool ok = ::write(fd, line.data(), line.size()) == static_cast<ssize_t>(line.size());
  ::fsync(fd);
  ::close(fd);
  if (!ok) return make_error("appending to the runtime event log failed");
  return Status::Ok();
}

Status Guest::emit(const std::string& event, ByteView payload) {
  if (agent_pid_ <= 0) return emit_direct(event, payload);
  rpc::ClientOptions o;
  o.timeout = std::chrono::milliseconds(10000);
  auto r = rpc::prpc_call(agent_url(), "EmitEvent", json{{"event", event}, {"payload", to_hex(payload)}}, o);
  if (!r.ok()) return r.error().wrap("emitting runtime event '" + event + "' through the guest agent");
  return Status::Ok();
}

Result<Bytes> Guest::get_quote(ByteView report_data) {
  rpc::ClientOptions o;
  o.timeout = std::chrono::milliseconds(10000);
  TRY_ASSIGN(json r, rpc::prpc_call(agent_url(), "GetQuote", json{{"report_data", to_hex(report_data)}}, o));
  TRY_ASSIGN(Bytes q, rpc::get_hex(r, "quote"));
  return q;
}

Result<json> Guest::host_call(const std::string& method, const json& req, std::chrono::milliseconds timeout) {
  rpc::ClientOptions o;
  o.timeout = timeout;
  return rpc::prpc_call("unix:" + plan_.value("host_api_socket", std::string()) + ":/api", method, req, o);
}

void Guest::notify(const std::string& event, const std::string& payload) {
  auto r = host_call("Notify", json{{"event", event}, {"payload", payload}}, std::chrono::milliseconds(3000));
  if (!r.ok()) spdlog::debug("host API Notify {}: {}", event, r.error().message);
}

void Guest::wait_secure_time() {
  int wait_s = plan_.value("secure_time_wait_s", 5);
  console_line("Waiting for secure time sync (up to " + std::to_string(wait_s) + " s)...");
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(wait_s);
  for (;;) {
    timex tx{};
    int state = adjtimex(&tx);
    if (state >= 0 && state != TIME_ERROR && !(tx.status & STA_UNSYNC)) {
      console_line("Secure time: system clock is synchronized");
      return;
    }
    if (std::chrono::steady_clock::now() >= deadline || g_stop.load()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
  console_line("WARNING: secure time sync not confirmed after " + std::to_string(wait_s) +
               " s (no trusted time source in the simulator); continuing boot with the host clock");
}

void Guest::stop_agent() {
  if (agent_pid_ > 0) terminate(agent_pid_, std::chrono::seconds(3));
  agent_pid_ = -1;
  if (agent_relay_.joinable()) agent_relay_.join();
}

Status Guest::start_agent(const std::string& keys_file, bool generate_keys) {
  std::string bin = plan_.value("agent_bin", std::string());
  if (!fs::exists(bin)) return make_error("guest agent binary " + bin + " not found (build the dstack-guest-agent target)");
  const std::string hs = kGuestHostShared;
  std::string toml;
  toml += "[default.core]\n";
  toml += "keys_file = \"" + keys_file + "\"\n";
  toml += "compose_file = \"" + hs + "/app-compose.json\"\n";
  toml += "sys_config_file = \"" + hs + "/.sys-config.json\"\n";
  toml += "event_log_dir = \"/run/log/dstack\"\n";
  toml += "backend = \"simulator\"\n\n";
  toml += "[default.core.simulator]\n";
  toml += std::string("platform_dir = \"") + kGuestPlatformDir + "\"\n";
  toml += "state_dir = \"/run/dstack-sim\"\n";
  for (const char* k : {"mrtd", "rtmr0", "rtmr1", "rtmr2", "mr_config_id"})
    toml += std::string(k) + " = \"" + plan_.value(k, std::string()) + "\"\n";
  toml += "app_id = \"" + to_hex(app_id_) + "\"\n";
  toml += "instance_id = \"" + to_hex(instance_id_) + "\"\n";
  toml += std::string("generate_keys = ") + (generate_keys ? "true" : "false") + "\n\n";
  toml += std::string("[internal]\naddress = \"unix:") + kGuestAgentSocket + "\"\nmode = \"0666\"\n\n";
  toml += "[internal-v0]\naddress = \"unix:/var/run/tappd.sock\"\nmode = \"0666\"\n\n";
  toml += "[external]\naddress = \"0.0.0.0\"\nport = 8090\n";
  TRY(make_dirs("/run/log/dstack", 0700));
  TRY(make_dirs("/run/dstack-sim", 0700));
  TRY(write_file_atomic("/dstack/dstack.toml", toml, 0644));
  SpawnOptions so;
  so.argv = {bin, "-c", "/dstack/dstack.toml"};
  so.pipe_output = true;
  TRY_ASSIGN(Child c, spawn(so));
  agent_pid_ = c.pid;
  agent_relay_ = relay_lines(c.out_fd, "dstack-guest-agent  ");
  // Ready when it answers on dstack.sock.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(15);
  std::string last;
  while (std::chrono::steady_clock::now() < deadline) {
    if (fs::exists(kGuestAgentSocket)) {
      rpc::ClientOptions o;
      o.timeout = std::chrono::milliseconds(2000);
      auto r = rpc::prpc_call(agent_url(), "Version", json::object(), o);
      if (r.ok()) return Status::Ok();
      last = r.error().message;
    }
    if (wait_for(agent_pid_, std::chrono::milliseconds(0))) {
      agent_pid_ = -1;
      return make_error("the guest agent exited during startup (see its output above)");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return make_error("the guest agent did not answer on " + std::string(kGuestAgentSocket) + " within 15 s: " + last);
}

// Trust material of the simulated platform that `run` puts in <vm-dir>/sim/trust (what a PCCS + the Intel root
// would be on real hardware): root-ca.pem, tdx-collateral.json, sgx-collateral.json.
Result<std::string> trust_file(const std::string& name) {
  std::string path = std::string(kGuestVmDir) + "/sim/trust/" + name;
  auto t = read_file(path);
  if (!t.ok()) return make_error("simulated platform trust material " + path + " is missing (written by `run`; is "
                                 "dstack-tdx-sim next to dstack-cvm-sim?): " + t.error().message);
  return t;
}

Result<keyprovider::OpenedSealingKey> open_local_key(const keyprovider::SealingKeyResponse& resp, ByteView secret,
                                                     const std::optional<Bytes>& pin) {
  keyprovider::OpenOptions o;
  TRY_ASSIGN(std::string coll, trust_file("sgx-collateral.json"));
  TRY_ASSIGN(o.collateral, attest::parse_collateral_json(coll));
  TRY_ASSIGN(std::string root, trust_file("root-ca.pem"));
  o.trust.trust_intel_root = false;  // simulated platform: opt in to its root explicitly, nothing else
  o.trust.extra_root_pems = {root};
  o.expected_mr_enclave = pin;
  return keyprovider::open_sealing_key(resp, secret, o);
}

Status Guest::get_keys_local(Bytes& seed, Bytes& mr) {
  console_line("Requesting the app key from the local key provider (host API GetSealingKey)...");
  auto kx = crypto::x25519_generate();
  Bytes rd = kx.public_key;
  rd.resize(64, 0);
  TRY_ASSIGN(Bytes quote, get_quote(rd));
  TRY_ASSIGN(json resp, host_call("GetSealingKey", json{{"quote", to_hex(quote)}}, std::chrono::seconds(40)));
  keyprovider::SealingKeyResponse r;
  TRY_ASSIGN(r.encrypted_key, rpc::get_hex(resp, "encrypted_key"));
  TRY_ASSIGN(r.provider_quote, rpc::get_hex(resp, "provider_quote"));
  std::optional<Bytes> pin;
  if (!compose_.key_provider_id.empty()) pin = compose_.key_provider_id;
  auto opened = open_local_key(r, kx.secret, pin);
  secure_wipe(kx.secret);
  if (!opened.ok()) return opened.error().wrap("verifying and opening the sealed key from the local key provider");
  seed = std::move(opened->key);
  mr = opened->mr_enclave;
  console_line("Local key provider quote verified (TCB " + opened->tcb_status + ", MRENCLAVE " + to_hex(mr) + ")");
  return Status::Ok();
}

Result<json> Guest::get_keys_from_kms(const std::string& url_in) {
  std::string url = url_in;
  while (!url.empty() && url.back() == '/') url.pop_back();
  if (url.size() < 5 || url.compare(url.size() - 5, 5, "/prpc") != 0) url += "/prpc";
  // 1. Temp CA over TLS without server verification (bootstrap only; spec §5.5 step 1).
  rpc::ClientOptions insecure;
  insecure.timeout = std::chrono::seconds(10);
  insecure.insecure_skip_verify = true;
  auto tmp = rpc::prpc_call(url, "GetTempCaCert", json::object(), insecure);
  if (!tmp.ok()) return tmp.error().wrap("GetTempCaCert from " + url);
  TRY_ASSIGN(std::string tmp_cert_pem, rpc::get_string(*tmp, "temp_ca_cert"));
  TRY_ASSIGN(std::string tmp_key_pem, rpc::get_string(*tmp, "temp_ca_key"));
  TRY_ASSIGN(std::string ca_pem, rpc::get_string(*tmp, "ca_cert"));
  TRY_ASSIGN(crypto::Certificate tmp_cert, crypto::Certificate::from_pem(tmp_cert_pem));
  TRY_ASSIGN(crypto::P256Key tmp_key, crypto::P256Key::from_pem(tmp_key_pem));
  TRY_ASSIGN(crypto::Certificate ca_cert, crypto::Certificate::from_pem(ca_pem));
  // 2. RA-TLS client certificate: fresh P-256 key, attestation bound to its SPKI, signed by the temp CA.
  TRY_ASSIGN(crypto::P256Key client_key, crypto::P256Key::generate());
  rpc::ClientOptions ao;
  ao.timeout = std::chrono::seconds(10);
  auto att = rpc::prpc_call(agent_url(), "Attest",
                            json{{"report_data", to_hex(ratls::ratls_report_data(client_key.spki_der()))}}, ao);
  if (!att.ok()) return att.error().wrap("guest agent Attest for the RA-TLS client certificate");
  ratls::RaTlsCertParams p;
  p.common_name = "RA-TLS TEMP Cert";
  TRY_ASSIGN(p.attestation, rpc::get_hex(*att, "attestation"));
  TRY_ASSIGN(crypto::Certificate client_cert, ratls::issue_cert(p, client_key, tmp_key, &tmp_cert));
  // 3. GetAppKey over mutual TLS, trusting only the KMS root CA from step 1.
  rpc::ClientOptions mtls;
  mtls.timeout = std::chrono::seconds(30);
  mtls.ca_pem = ca_pem;
  mtls.client_cert_pem = client_cert.to_pem();
  mtls.client_key_pem = client_key.to_pkcs8_pem();
  json req = {{"api_version", 1}, {"vm_config", sys_.vm_config}};
  auto resp = rpc::http_request("POST", url + "/GetAppKey?json", req.dump(), mtls);
  if (!resp.ok()) return resp.error().wrap("GetAppKey from " + url);
  json body = json::parse(resp->body, nullptr, false);
  if (resp->status != 200) {
    std::string msg = body.is_object() && body.contains("error") ? body["error"].dump() : resp->body.substr(0, 300);
    return make_error("GetAppKey refused by " + url + ": " + msg);
  }
  if (!body.is_object()) return make_error("GetAppKey answer from " + url + " is not JSON");
  // The server certificate must be the KMS RPC certificate, and its attestation (if any) must verify.
  if (resp->peer_cert_chain_der.empty()) return make_error("KMS " + url + " presented no TLS certificate");
  TRY_ASSIGN(ratls::CertExtensions ext, ratls::read_extensions(resp->peer_cert_chain_der.front()));
  if (ext.special_usage.value_or("") != "kms:rpc")
    return make_error("KMS " + url + " server certificate is not a KMS RPC certificate (special usage '" +
                      ext.special_usage.value_or("") + "', expected 'kms:rpc')");
  if (ext.has_attestation()) {
    ratls::VerifyOptions vo;
    TRY_ASSIGN(std::string root, trust_file("root-ca.pem"));
    vo.trust.root_ca_pem = root;
    TRY_ASSIGN(vo.collateral, ratls::CollateralSource::from_file(std::string(kGuestVmDir) + "/sim/trust/tdx-collateral.json"));
    auto v = ratls::verify_peer_attestation(resp->peer_cert_chain_der.front(), vo);
    if (!v.ok()) return v.error().wrap("KMS " + url + " server certificate attestation");
    console_line("KMS server attestation verified (TCB " + v->tcb_status + ")");
  }
  TRY_ASSIGN(std::string got_ca, rpc::get_string(body, "ca_cert"));
  if (got_ca.empty()) got_ca = ca_pem;
  TRY_ASSIGN(crypto::Certificate got_ca_cert, crypto::Certificate::from_pem(got_ca));
  if (got_ca_cert.spki_der() != ca_cert.spki_der()) return make_error("GetAppKey ca_cert differs from GetTempCaCert's");
  nlohmann::ordered_json kp;
  kp["Kms"] = {{"url", url}, {"pubkey", to_hex(ca_cert.spki_der())}, {"tmp_ca_key", tmp_key_pem}, {"tmp_ca_cert", tmp_cert_pem}};
  nlohmann::ordered_json j;
  for (const char* k : {"disk_crypt_key", "env_crypt_key", "k256_key", "k256_signature"}) {
    TRY_ASSIGN(Bytes v, rpc::get_hex(body, k));
    j[k] = to_hex(v);
    secure_wipe(v);
  }
  j["gateway_app_id"] = body.value("gateway_app_id", std::string());
  j["ca_cert"] = got_ca;
  j["key_provider"] = kp;
  TRY_ASSIGN(kms_os_image_hash_, rpc::get_hex(body, "os_image_hash"));
  kp_id_ = to_hex(ca_cert.spki_der());
  return json::parse(j.dump());
}

Status Guest::get_keys() {
  const std::string& kp = compose_.key_provider;
  Bytes seed;
  std::string provider_kind = "None";
  Bytes mr;
  if (kp == "none") {
    seed = crypto::random_bytes(32);
    kp_name_ = "none";
    kp_id_ = "";
  } else if (kp == "local") {
    TRY(get_keys_local(seed, mr));
    if (seed.size() != 32) return make_error("key provider returned a " + std::to_string(seed.size()) + "-byte key (expected 32)");
    provider_kind = "Local";
    kp_name_ = "local-sgx";
    kp_id_ = to_hex(mr);
  } else if (kp == "kms") {
    if (sys_.kms_urls.empty()) return make_error("key provider 'kms' but .sys-config.json has no kms_urls (deploy with --kms-url)");
    std::string errors;
    for (const auto& u : sys_.kms_urls) {
      console_line("Requesting app keys from KMS " + u + "...");
      auto k = get_keys_from_kms(u);
      if (k.ok()) {
        appkeys_ = std::move(k).value();
        break;
      }
      console_line("KMS " + u + " failed: " + k.error().message);
      errors += (errors.empty() ? "" : "; ") + k.error().message;
    }
    if (appkeys_.is_null()) return make_error("no KMS gave app keys: " + errors);
    kp_name_ = "kms";
    TRY(emit(attest::events::kOsImageHash, kms_os_image_hash_));
    if (!compose_.key_provider_id.empty() && to_hex(compose_.key_provider_id) != kp_id_)
      return make_error("key_provider_id in app-compose (" + to_hex(compose_.key_provider_id) +
                        ") does not match the KMS root CA public key (" + kp_id_ + ")");
    return Status::Ok();
  } else {
    return make_error("key provider '" + kp + "' is not available in the simulator");
  }
  if (!compose_.key_provider_id.empty() && to_hex(compose_.key_provider_id) != kp_id_)
    return make_error("key_provider_id in app-compose (" + to_hex(compose_.key_provider_id) +
                      ") does not match the key provider's id (" + kp_id_ + ")");
  TRY_ASSIGN(appkeys_, app_keys_from_seed(seed, provider_kind, mr));
  secure_wipe(seed);
  return Status::Ok();
}

Status Guest::decrypt_env() {
  std::string path = std::string(kGuestHostShared) + "/.encrypted-env";
  if (!fs::exists(path)) return Status::Ok();
  std::string key_hex = appkeys_.value("env_crypt_key", std::string());
  if (key_hex.empty()) {
    console_line("WARNING: .encrypted-env present but the key provider gives no env key; env not decrypted");
    return Status::Ok();
  }
  TRY_ASSIGN(Bytes key, from_hex(key_hex));
  TRY_ASSIGN(Bytes blob, read_file_bytes(path));
  TRY_ASSIGN(Bytes plain, crypto::dstack_decrypt_env(key, blob));
  json j = json::parse(to_string(plain), nullptr, false);
  if (j.is_discarded() || !j.contains("env")) return make_error("decrypted env is not {\"env\":[...]}");
  std::set<std::string> allowed(compose_.allowed_envs.begin(), compose_.allowed_envs.end());
  std::string lines;
  for (const auto& e : j["env"]) {
    std::string k = e.value("key", ""), v = e.value("value", "");
    if (!allowed.count(k)) continue;
    app_env_[k] = v;
    lines += k + "=" + v + "\n";
  }
  TRY(write_file_atomic(std::string(kGuestHostShared) + "/.decrypted-env", lines, 0600));
  return Status::Ok();
}

Status Guest::boot() {
  // Host share → /dstack/.host-shared (a copy, as the real guest does).
  std::error_code ec;
  fs::remove_all(kGuestHostShared, ec);
  TRY(make_dirs(kGuestHostShared, 0755));
  for (const auto& e : fs::directory_iterator(std::string(kGuestVmDir) + "/shared", ec)) {
    if (e.is_regular_file()) fs::copy_file(e.path(), fs::path(kGuestHostShared) / e.path().filename(), ec);
  }
  TRY_ASSIGN(std::string raw, read_file(std::string(kGuestHostShared) + "/app-compose.json"));
  TRY_ASSIGN(compose_, parse_app_compose(raw));
  if (auto t = read_file(std::string(kGuestHostShared) + "/.sys-config.json"); t.ok()) {
    TRY_ASSIGN(sys_, parse_sys_config(*t));
  }

  if (compose_.secure_time) wait_secure_time();

  // app_id / instance id (spec §9 steps 1-2).
  json inst = json::object();
  if (auto t = read_file(std::string(kGuestHostShared) + "/.instance_info"); t.ok()) {
    inst = json::parse(*t, nullptr, false);
    if (inst.is_discarded()) inst = json::object();
  }
  std::string app_hex = inst.value("app_id", std::string());
  if (app_hex.empty()) app_hex = plan_.value("app_id", std::string());
  if (!app_hex.empty()) {
    TRY_ASSIGN(app_id_, from_hex(app_hex));
  } else {
    app_id_.assign(compose_.compose_hash.begin(), compose_.compose_hash.begin() + 20);
  }
  if (app_id_.size() != 20) return make_error("app_id must be 20 bytes, got " + std::to_string(app_id_.size()));
  std::string seed_hex = inst.value("instance_id_seed", std::string());
  if (compose_.key_provider != "none" && !seed_hex.empty()) instance_id_seed_ = from_hex(seed_hex).value_or(Bytes{});
  if (instance_id_seed_.size() != 20) instance_id_seed_ = crypto::random_bytes(20);
  if (!compose_.no_instance_id) {
    Bytes h = crypto::sha256(concat({instance_id_seed_, app_id_}));
    instance_id_.assign(h.begin(), h.begin() + 20);
  }

  notify("boot.progress", "measuring");
  TRY(emit("system-preparing", {}));
  TRY(emit("app-id", app_id_));
  TRY(emit("compose-hash", compose_.compose_hash));
  TRY(emit("instance-id", instance_id_));
  TRY(emit("boot-mr-done", {}));
  // Boot phase of the agent: it serves quotes for the key provider; its temporary keys are never used by apps.
  TRY(start_agent("/run/dstack-sim/boot-appkeys.json", true));

  notify("boot.progress", "requesting app keys");
  TRY(get_keys());
  // MR_CONFIG_ID (spec §8.5): all-zero = not bound; V1 must carry our compose hash.
  TRY_ASSIGN(Bytes q, get_quote(Bytes(64, 0)));
  TRY_ASSIGN(attest::TdMeasurements tdm, attest::TdMeasurements::from_quote(q));
  const Bytes& mrc = tdm.mr_config_id;
  TRY_ASSIGN(Bytes want_mrc, attest::mr_config_id_v1(compose_.compose_hash));
  if (mrc != Bytes(48, 0) && mrc[0] == 0x01 && mrc != want_mrc)
    return make_error("MR_CONFIG_ID does not match the compose hash: the host bound a different app");
  TRY(emit("key-provider", as_view(key_provider_info(kp_name_, kp_id_))));
  TRY(write_file_atomic(std::string(kGuestHostShared) + "/.appkeys.json", appkeys_.dump(), 0600));
  console_line("Key provider " + kp_name_ + " ready");

  TRY(emit("storage-fs", as_view(std::string("ext4"))));
  json info = {{"instance_id_seed", to_hex(instance_id_seed_)}, {"instance_id", to_hex(instance_id_)}, {"app_id", to_hex(app_id_)}};
  notify("instance.info", info.dump());
  TRY(emit("system-ready", {}));
  // Serving phase: the agent restarts with the app keys; RTMR3 and the event log carry over.
  stop_agent();
  std::error_code ec2;
  fs::remove("/run/dstack-sim/boot-appkeys.json", ec2);
  TRY(start_agent(std::string(kGuestHostShared) + "/.appkeys.json", false));
  TRY(decrypt_env());
  console_line("System ready (app_id " + to_hex(app_id_) + ", instance_id " + to_hex(instance_id_) + ")");
  return Status::Ok();
}

Result<pid_t> Guest::spawn_service(const ServiceSpec& svc, int& out_fd) {
  const json& img = plan_["services"][svc.name];
  std::string cdir = "/dstack/containers/" + svc.name;
  std::string rootfs = cdir + "/rootfs";
  if (!fs::exists(rootfs)) return make_error("rootfs of service " + svc.name + " is missing (image not unpacked)");
  // /etc/hosts: every compose service shares the VM's loopback, so service names resolve to 127.0.0.1.
  std::string hosts = "127.0.0.1\tlocalhost " + plan_.value("name", std::string("dstack-cvm"));
  for (const auto& [name, _] : plan_["services"].items()) hosts += " " + name;
  hosts += "\n::1\tlocalhost ip6-localhost ip6-loopback\n";
  TRY(write_file_atomic(cdir + "/hosts", hosts));

  std::vector<std::string> argv = {"bwrap", "--unshare-pid", "--unshare-ipc", "--bind", rootfs, "/",
                                   "--proc", "/proc", "--dev", "/dev", "--ro-bind", cdir + "/hosts", "/etc/hosts"};
  if (fs::exists(std::string(kGuestVmDir) + "/sim/trust"))
    argv.insert(argv.end(), {"--ro-bind", std::string(kGuestVmDir) + "/sim/trust", "/etc/dstack-sim"});
  if (fs::exists("/etc/resolv.conf")) argv.insert(argv.end(), {"--ro-bind-try", "/etc/resolv.conf", "/etc/resolv.conf"});
  for (const auto& v : svc.volumes) {
    std::string src;
    if (v.named) {
      src = "/dstack/volumes/" + v.source;
      TRY(make_dirs(src));
    } else {
      src = v.source;
      if (!fs::exists(src)) return make_error("service " + svc.name + ": bind source " + src + " does not exist in the VM");
    }
    argv.insert(argv.end(), {v.read_only ? "--ro-bind" : "--bind", src, v.target});
  }
  std::vector<std::string> cmd;
  std::vector<std::string> ep = svc.entrypoint ? *svc.entrypoint : img.value("entrypoint", std::vector<std::string>{});
  std::vector<std::string> args = svc.command ? *svc.command
                                  : svc.entrypoint ? std::vector<std::string>{}
                                                   : img.value("cmd", std::vector<std::string>{});
  cmd = ep;
  cmd.insert(cmd.end(), args.begin(), args.end());
  if (cmd.empty()) return make_error("service " + svc.name + ": neither the image nor the compose file gives a command");
  std::string wd = !svc.working_dir.empty() ? svc.working_dir : img.value("working_dir", std::string());
  if (!wd.empty()) argv.insert(argv.end(), {"--chdir", wd});
  argv.push_back("--");
  argv.insert(argv.end(), cmd.begin(), cmd.end());

  std::map<std::string, std::string> env;
  env["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
  env["HOSTNAME"] = svc.name;
  for (const auto& e : img.value("env", std::vector<std::string>{})) {
    auto eq = e.find('=');
    if (eq != std::string::npos) env[e.substr(0, eq)] = e.substr(eq + 1);
  }
  for (const auto& [k, v] : svc.environment) env[k] = v;
  SpawnOptions so;
  so.argv = argv;
  so.env = std::vector<std::string>{};
  for (const auto& [k, v] : env) so.env->push_back(k + "=" + v);
  so.pipe_output = true;
  so.new_process_group = true;
  TRY_ASSIGN(Child c, spawn(so));
  out_fd = c.out_fd;
  return c.pid;
}

void Guest::supervise(const ServiceSpec& svc) {
  int failures = 0, restarts = 0;
  int max_failures = -1;
  if (svc.restart.rfind("on-failure:", 0) == 0) max_failures = std::atoi(svc.restart.c_str() + 11);
  std::string prefix = svc.name + "  ";
  for (;;) {
    if (g_stop.load()) return;
    int fd = -1;
    auto pid = spawn_service(svc, fd);
    if (!pid.ok()) {
      console_line(prefix + "| failed to start: " + pid.error().message);
      notify("boot.error", "service " + svc.name + ": " + pid.error().message);
      return;
    }
    {
      std::lock_guard<std::mutex> lk(mu_);
      running_[svc.name] = *pid;
      if (g_stop.load()) kill(-*pid, SIGTERM);  // shutdown began while it was starting
    }
    std::thread relay = relay_lines(fd, prefix);
    int st = 0;
    while (waitpid(*pid, &st, 0) < 0 && errno == EINTR) {
    }
    kill(-*pid, SIGKILL);  // the service's sandbox is gone once its bwrap is; sweep its group anyway
    relay.join();
    {
      std::lock_guard<std::mutex> lk(mu_);
      running_.erase(svc.name);
    }
    if (g_stop.load()) return;
    bool ok = WIFEXITED(st) && WEXITSTATUS(st) == 0;
    console_line(prefix + "| container exited (" + describe_status(st) + ")");
    if (!ok) ++failures;
    bool again = svc.restart == "always" || svc.restart == "unless-stopped" ||
                 (svc.restart.rfind("on-failure", 0) == 0 && !ok && (max_failures < 0 || failures <= max_failures));
    if (!again) return;
    ++restarts;
    int delay_ms = std::min(100 << std::min(restarts, 8), 10000);
    console_line(prefix + "| restarting (policy " + svc.restart + ", restart #" + std::to_string(restarts) + ") in " +
                 std::to_string(delay_ms) + " ms");
    std::unique_lock<std::mutex> lk(mu_);
    cv_.wait_for(lk, std::chrono::milliseconds(delay_ms), [] { return g_stop.load(); });
  }
}

Status Guest::start_services() {
  TRY_ASSIGN(ComposeProject proj, parse_docker_compose(compose_.docker_compose_file, app_env_));
  for (const auto& v : proj.volumes) TRY(make_dirs("/dstack/volumes/" + v));
  console_line("Docker container starting...");
  for (const auto& svc : proj.services) {
    if (!plan_["services"].contains(svc.name)) return make_error("service " + svc.name + " has no prepared image");
    console_line("Starting container " + svc.name + " (" + plan_["services"][svc.name].value("ref", svc.image) + ", " +
                 plan_["services"][svc.name].value("digest", std::string()) + ")");
    supervisors_.emplace_back([this, svc] { supervise(svc); });
  }
  return Status::Ok();
}

void Guest::shutdown() {
  notify("shutdown.progress", "stopping containers");
  g_stop.store(true);
  cv_.notify_all();
  std::map<std::string, pid_t> snapshot;
  {
    std::lock_guard<std::mutex> lk(mu_);
    snapshot = running_;
  }
  for (const auto& [name, pid] : snapshot) {
    console_line("Stopping container " + name);
    kill(-pid, SIGTERM);
  }
  // Wait (bounded) for the service groups to empty, then kill what is left.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  for (const auto& [name, pid] : snapshot) {
    while (kill(-pid, 0) == 0 && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    kill(-pid, SIGKILL);
  }
  for (auto& t : supervisors_) t.join();
  for (auto& f : forwarders_) f->stop();
  stop_agent();
  notify("shutdown.progress", "powering off");
}

int Guest::main(int shutdown_fd) {
  // VM side of the port mappings first: connections wait in the host's retry loop until the app listens.
  for (const auto& p : plan_.value("vm_ports", std::vector<int>{})) {
    auto f = std::make_unique<Forwarder>(
        Endpoint::unix_socket(std::string(kGuestVsockDir) + "/tcp-" + std::to_string(p) + ".sock"),
        Endpoint::tcp("127.0.0.1", static_cast<uint16_t>(p)));
    if (auto st = f->start(); !st.ok()) {
      console_line("CVM boot failed: " + st.error().message);
      notify("boot.error", st.error().message);
      return 1;
    }
    forwarders_.push_back(std::move(f));
  }
  // KMS relays: TCP <kms host>:<port> inside the VM's netns -> unix socket -> the KMS as the host reaches it.
  for (const auto& r : plan_.value("kms_relays", json::array())) {
    auto f = std::make_unique<Forwarder>(Endpoint::tcp(r.value("listen", std::string("127.0.0.1")), r.value("port", 0)),
                                         Endpoint::unix_socket(r.value("socket", std::string())));
    if (auto st = f->start(); !st.ok()) {
      console_line("CVM boot failed: KMS relay for " + r.value("url", std::string()) + ": " + st.error().message);
      notify("boot.error", st.error().message);
      return 1;
    }
    forwarders_.push_back(std::move(f));
  }
  Status st = boot();
  if (st.ok()) st = start_services();
  if (!st.ok()) {
    console_line("CVM boot failed: " + st.error().message);
    notify("boot.error", st.error().message);
    g_stop.store(true);
    shutdown();
    return 1;
  }
  notify("boot.progress", "running");
  // Run until EOF on the shutdown fd (the host's `run` closed it) or SIGTERM.
  while (!g_stop.load()) {
    pollfd p{shutdown_fd, POLLIN, 0};
    int r = poll(&p, 1, 200);
    if (r > 0) {
      char c;
      if (read(shutdown_fd, &c, 1) <= 0) break;
    }
    if (agent_pid_ > 0 && wait_for(agent_pid_, std::chrono::milliseconds(0))) {
      console_line("WARNING: the guest agent exited; restarting it");
      agent_pid_ = -1;
      if (agent_relay_.joinable()) agent_relay_.join();
      if (auto s = start_agent(std::string(kGuestHostShared) + "/.appkeys.json", false); !s.ok()) console_line("guest agent restart failed: " + s.error().message);
    }
  }
  console_line("Guest shutting down...");
  shutdown();
  console_line("Guest powered off.");
  return 0;
}

}  // namespace

int guest_init(const std::string& plan_path, int shutdown_fd) {
  install_stop_handlers(on_term);
  auto text = read_file(plan_path);
  if (!text.ok()) {
    console_line("guest-init: " + text.error().message);
    return 1;
  }
  json plan = json::parse(*text, nullptr, false);
  if (plan.is_discarded()) {
    console_line("guest-init: " + plan_path + " is not valid JSON");
    return 1;
  }
  Guest g(std::move(plan));
  return g.main(shutdown_fd);
}

}  // namespace dstack::cvmsim
