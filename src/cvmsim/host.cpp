// `dstack-cvm-sim run`: the host side of one simulated CVM.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <memory>

#include <spdlog/spdlog.h>

#include "base/fs.h"
#include "crypto/hash.h"
#include "cvmsim/cvm.h"
#include "cvmsim/measure.h"
#include "cvmsim/portfwd.h"
#include "cvmsim/process.h"
#include "rpc/prpc.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace dstack::cvmsim {

namespace {

std::atomic<int> g_signal{0};
void on_signal(int sig) { g_signal.store(sig); }

std::string env_or(const char* name, const std::string& def) {
  const char* v = getenv(name);
  return v && *v ? std::string(v) : def;
}

class HostApi {
 public:
  explicit HostApi(std::string sock) : sock_(std::move(sock)) {}
  void notify(const std::string& event, const std::string& payload) const {
    if (sock_.empty() || !fs::exists(sock_)) return;
    rpc::ClientOptions o;
    o.timeout = std::chrono::milliseconds(3000);
    auto r = rpc::prpc_call("unix:" + sock_ + ":/api", "Notify", json{{"event", event}, {"payload", payload}}, o);
    if (!r.ok()) spdlog::warn("host API Notify {} failed: {}", event, r.error().message);
  }

 private:
  std::string sock_;
};

Status ensure_platform(const std::string& dir, const std::string& bin_dir) {
  TRY(make_dirs(fs::path(dir).parent_path().string()));
  if (fs::exists(dir + "/platform.json")) return Status::Ok();
  // Serialize creation between VMs starting at the same time.
  int lk = open((dir + ".lock").c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0600);
  if (lk < 0) return make_error("cannot create lock file " + dir + ".lock");
  flock(lk, LOCK_EX);
  Status st;
  if (!fs::exists(dir + "/platform.json")) {
    std::string tool = bin_dir + "/dstack-tdx-sim";
    if (fs::exists(tool)) {
      auto r = run_capture({tool, "init", "--dir", dir}, std::chrono::seconds(60));
      if (!r.ok()) st = r.error().wrap("creating the simulated TDX platform in " + dir);
    } else {
      spdlog::warn("{} not found; the guest agent will create the simulated platform in {}", tool, dir);
      TRY(make_dirs(dir, 0700));
    }
  }
  flock(lk, LOCK_UN);
  close(lk);
  return st;
}

// A KMS URL as the relay needs it: host and port.
struct KmsTarget {
  std::string url, host;
  uint16_t port = 0;
};

Result<KmsTarget> parse_kms_url(const std::string& url) {
  KmsTarget t;
  t.url = url;
  auto se = url.find("://");
  if (se == std::string::npos) return make_error("KMS URL '" + url + "' has no scheme (expected https://host:port)");
  std::string scheme = url.substr(0, se);
  std::string rest = url.substr(se + 3);
  std::string hostport = rest.substr(0, rest.find('/'));
  std::string port;
  if (!hostport.empty() && hostport.front() == '[') {
    auto rb = hostport.find(']');
    if (rb == std::string::npos) return make_error("KMS URL '" + url + "': bad IPv6 literal");
    t.host = hostport.substr(1, rb - 1);
    if (rb + 1 < hostport.size() && hostport[rb + 1] == ':') port = hostport.substr(rb + 2);
  } else {
    auto c = hostport.rfind(':');
    t.host = hostport.substr(0, c);
    if (c != std::string::npos) port = hostport.substr(c + 1);
  }
  if (t.host.empty()) return make_error("KMS URL '" + url + "' has no host");
  if (port.empty()) {
    t.port = scheme == "http" ? 80 : 443;
  } else {
    char* end = nullptr;
    long v = std::strtol(port.c_str(), &end, 10);
    if (*end || v <= 0 || v > 65535) return make_error("KMS URL '" + url + "' has a bad port");
    t.port = static_cast<uint16_t>(v);
  }
  return t;
}

// Host-side name resolution for the relay target (IPv4 first).
Result<std::string> resolve_host(const std::string& host) {
  in6_addr a6;
  in_addr a4;
  if (inet_pton(AF_INET, host.c_str(), &a4) == 1 || inet_pton(AF_INET6, host.c_str(), &a6) == 1) return host;
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (int rc = getaddrinfo(host.c_str(), nullptr, &hints, &res); rc != 0 || !res)
    return make_error("cannot resolve KMS host '" + host + "': " + gai_strerror(rc));
  std::string best;
  for (addrinfo* p = res; p; p = p->ai_next) {
    char buf[INET6_ADDRSTRLEN] = {};
    if (p->ai_family == AF_INET) {
      inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(p->ai_addr)->sin_addr, buf, sizeof buf);
      best = buf;
      break;
    }
    if (p->ai_family == AF_INET6 && best.empty()) {
      inet_ntop(AF_INET6, &reinterpret_cast<sockaddr_in6*>(p->ai_addr)->sin6_addr, buf, sizeof buf);
      best = buf;
    }
  }
  freeaddrinfo(res);
  if (best.empty()) return make_error("cannot resolve KMS host '" + host + "'");
  return best;
}

std::string abs_path(const std::string& p) {
  std::error_code ec;
  auto a = fs::weakly_canonical(fs::absolute(p), ec);
  return ec ? fs::absolute(p).string() : a.string();
}

}  // namespace

int run_vm(const RunOptions& in) {
  RunOptions opts = in;
  const std::string D = abs_path(opts.vm_dir);
  const std::string run_path = fs::path(D).parent_path().string();
  if (opts.bin_dir.empty()) opts.bin_dir = self_dir();
  if (opts.image_cache_dir.empty())
    opts.image_cache_dir = env_or("DSTACK_SIM_IMAGE_CACHE", fs::path(run_path).parent_path().string() + "/sim-images");
  if (opts.platform_dir.empty())
    opts.platform_dir = env_or("DSTACK_SIM_PLATFORM_DIR", fs::path(run_path).parent_path().string() + "/sim-platform");
  const std::string host_api_sock = env_or("DSTACK_VMM_HOST_API", D + "/host-api.sock");
  HostApi host(host_api_sock);

  auto fail = [&](const std::string& msg) {
    console_line("CVM boot failed: " + msg);
    spdlog::error("{}", msg);
    host.notify("boot.error", msg);
    return 1;
  };

  // ---- read the VMM's files ----
  auto mtext = read_file(D + "/vm-manifest.json");
  if (!mtext.ok()) return fail("reading " + D + "/vm-manifest.json: " + mtext.error().message);
  auto manifest = parse_manifest(*mtext);
  if (!manifest.ok()) return fail(manifest.error().message);
  auto ctext = read_file(D + "/shared/app-compose.json");
  if (!ctext.ok()) return fail("reading shared/app-compose.json: " + ctext.error().message);
  auto compose = parse_app_compose(*ctext);
  if (!compose.ok()) return fail(compose.error().message);
  SysConfig sys;
  if (auto st = read_file(D + "/shared/.sys-config.json"); st.ok()) {
    auto s = parse_sys_config(*st);
    if (!s.ok()) return fail(s.error().message);
    sys = *s;
  }
  if (compose->runner != "docker-compose")
    return fail("runner '" + compose->runner + "' is not supported by the simulator (use docker-compose)");

  console_line("CVM booting... (simulated TDX CVM " + manifest->name + ", id " + manifest->id + ")");
  host.notify("boot.progress", "booting");

  // ---- per-boot directories ----
  const std::string sim = D + "/sim";
  std::error_code ec;
  fs::remove_all(sim + "/run", ec);    // the guest's /run is fresh every boot (RTMR3 starts at zero)
  fs::remove_all(sim + "/vsock", ec);
  for (const auto& d : {sim + "/run", sim + "/dstack", sim + "/vsock", sim + "/containers", D + "/volumes"}) {
    if (auto st = make_dirs(d); !st.ok()) return fail(st.error().message);
  }
  if (auto st = ensure_platform(opts.platform_dir, opts.bin_dir); !st.ok()) return fail(st.error().message);

  // ---- public trust material of the simulated platform, bound read-only into every container at
  // /etc/dstack-sim: root-ca.pem and fresh TDX collateral (what a PCCS would serve), so in-CVM verifiers (the
  // KMS's self-check) can opt in to the simulated root (images/kms/kms.toml does) ----
  {
    std::string trust = sim + "/trust";
    fs::remove_all(trust, ec);
    std::string tool = opts.bin_dir + "/dstack-tdx-sim";
    if (fs::exists(opts.platform_dir + "/root-ca.pem") && fs::exists(tool) && make_dirs(trust).ok()) {
      fs::copy_file(opts.platform_dir + "/root-ca.pem", trust + "/root-ca.pem", ec);
      auto r = run_capture({tool, "collateral", "--dir", opts.platform_dir, "--out", trust + "/tdx-collateral.json"},
                           std::chrono::seconds(60));
      if (!r.ok()) spdlog::warn("simulated TDX collateral not written: {}", r.error().message);
      // SGX collateral: the guest DCAP-verifies the local key provider's SGX quote with it.
      r = run_capture({tool, "collateral", "--sgx", "--dir", opts.platform_dir, "--out", trust + "/sgx-collateral.json"},
                      std::chrono::seconds(60));
      if (!r.ok()) spdlog::warn("simulated SGX collateral not written: {}", r.error().message);
    } else {
      spdlog::warn("simulated platform trust material not available (no {} or {}/root-ca.pem)", tool, opts.platform_dir);
    }
  }

  // ---- images: pulled over the host's network (the sandbox has no route to the registry) ----
  auto project = parse_docker_compose(compose->docker_compose_file);
  if (!project.ok()) return fail("docker_compose_file: " + project.error().message);
  std::string mirror = env_or("DSTACK_VMM_DOCKER_REGISTRY", sys.docker_registry);
  ImageStore store(opts.image_cache_dir + "", std::chrono::seconds(300));
  json services = json::object();
  for (const auto& svc : project->services) {
    std::string ref = apply_mirror(svc.image, mirror);
    console_line("Pulling image " + ref + " for service " + svc.name + "...");
    auto img = store.pull(ref);
    if (!img.ok()) return fail(img.error().message);
    auto up = store.unpack(*img, sim + "/containers/" + svc.name + "/rootfs");
    if (!up.ok()) return fail(up.error().message);
    services[svc.name] = {{"ref", ref},
                          {"digest", img->digest},
                          {"entrypoint", img->config.entrypoint},
                          {"cmd", img->config.cmd},
                          {"env", img->config.env},
                          {"working_dir", img->config.working_dir}};
  }

  // ---- simulated boot measurement ----
  Bytes os_image_hash;
  std::string image_dir = env_or("DSTACK_VMM_IMAGE_DIR", "");
  if (!image_dir.empty()) {
    if (auto d = read_file(image_dir + "/digest.txt"); d.ok()) {
      std::string h = *d;
      while (!h.empty() && std::isspace(static_cast<unsigned char>(h.back()))) h.pop_back();
      os_image_hash = from_hex(h).value_or(Bytes{});
    }
  }
  if (os_image_hash.empty() && !sys.os_image_hash_hex.empty()) os_image_hash = from_hex(sys.os_image_hash_hex).value_or(Bytes{});
  if (os_image_hash.empty()) os_image_hash = crypto::sha256(as_view("dstack-cvmsim-os-image:" + manifest->image));
  uint64_t mem_bytes = static_cast<uint64_t>(manifest->memory) << 20;
  auto bmr = derive_boot_measurement(os_image_hash, manifest->vcpu, mem_bytes, compose->compose_hash);
  if (!bmr.ok()) return fail("simulated boot measurement: " + bmr.error().message);
  const BootMeasurement& bm = *bmr;

  // ---- KMS reachability: the sandbox has its own netns, so each KMS URL gets a relay, as the host API does:
  // guest TCP <host>:<port> (in the VM's netns) -> <vm-dir>/sim/vsock/kms-<i>.sock -> host TCP <host>:<port>.
  // Loopback literals listen on the same address inside the VM; a host name is mapped to 127.0.1.<i+1> by an
  // /etc/hosts overlay, so the URL (and TLS host name checks) stay unchanged inside the VM.
  // Only for key provider kms: a relay occupies <host>:<port> in the VM's netns, which other apps (a KMS CVM
  // listening on the port its own kms_urls point at) may need.
  std::vector<std::string> kms_urls;
  if (compose->key_provider == "kms") kms_urls = sys.kms_urls;  // what the guest reads
  json kms_relays = json::array();
  std::vector<std::pair<Endpoint, Endpoint>> kms_host_side;
  std::string hosts_extra;
  for (size_t i = 0; i < kms_urls.size(); ++i) {
    auto t = parse_kms_url(kms_urls[i]);
    if (!t.ok()) return fail(t.error().message);
    in_addr a4;
    in6_addr a6;
    std::string listen;
    if (t->host == "localhost") {
      listen = "127.0.0.1";
    } else if (inet_pton(AF_INET, t->host.c_str(), &a4) == 1) {
      if ((ntohl(a4.s_addr) >> 24) != 127)
        return fail("KMS URL " + t->url + ": the simulator relays loopback addresses and host names only (use "
                    "https://127.0.0.1:<port> or a name for a non-loopback KMS)");
      listen = t->host;
    } else if (inet_pton(AF_INET6, t->host.c_str(), &a6) == 1) {
      if (t->host != "::1") return fail("KMS URL " + t->url + ": only the IPv6 loopback ::1 is relayed");
      listen = "::1";
    } else {
      if (i >= 250) return fail("too many KMS URLs");
      listen = "127.0.1." + std::to_string(i + 1);
      hosts_extra += listen + "\t" + t->host + "\n";
    }
    auto target = resolve_host(t->host == "localhost" ? "127.0.0.1" : t->host);
    if (!target.ok()) return fail(target.error().message);
    std::string sock = "kms-" + std::to_string(i) + ".sock";
    kms_host_side.emplace_back(Endpoint::unix_socket(sim + "/vsock/" + sock), Endpoint::tcp(*target, t->port));
    kms_relays.push_back({{"url", t->url}, {"listen", listen}, {"port", t->port},
                          {"socket", std::string(kGuestVsockDir) + "/" + sock}});
  }
  std::string hosts_overlay;
  if (!hosts_extra.empty()) {
    hosts_overlay = sim + "/etc-hosts";
    std::string base = read_file("/etc/hosts").value_or(std::string("127.0.0.1\tlocalhost\n"));
    if (!base.empty() && base.back() != '\n') base += "\n";
    if (auto st = write_file_atomic(hosts_overlay, base + "# dstack-cvm-sim KMS relays\n" + hosts_extra, 0644); !st.ok())
      return fail(st.error().message);
  }

  std::vector<int> vm_ports;
  for (const auto& p : manifest->port_map) vm_ports.push_back(p.to);
  json plan = {{"vm_id", manifest->id},
               {"name", manifest->name},
               {"app_id", manifest->app_id},
               {"mrtd", to_hex(bm.mrtd)},
               {"rtmr0", to_hex(bm.rtmr0)},
               {"rtmr1", to_hex(bm.rtmr1)},
               {"rtmr2", to_hex(bm.rtmr2)},
               {"mr_config_id", to_hex(bm.mr_config_id)},
               {"os_image_hash", to_hex(os_image_hash)},
               {"secure_time_wait_s", opts.secure_time_wait.count()},
               {"agent_bin", opts.bin_dir + "/dstack-guest-agent"},
               {"host_api_socket", std::string(kGuestVmDir) + "/" + fs::path(host_api_sock).filename().string()},
               {"vm_ports", vm_ports},
               {"kms_relays", kms_relays},
               {"services", services}};
  if (auto st = write_file_atomic(sim + "/boot.json", plan.dump(2)); !st.ok()) return fail(st.error().message);

  // ---- host side of port mappings ----
  std::vector<std::unique_ptr<Forwarder>> forwarders;
  for (const auto& p : manifest->port_map) {
    auto f = std::make_unique<Forwarder>(Endpoint::tcp(p.address, p.from),
                                         Endpoint::unix_socket(sim + "/vsock/tcp-" + std::to_string(p.to) + ".sock"));
    if (auto st = f->start(); !st.ok()) return fail("port mapping tcp:" + p.address + ":" + std::to_string(p.from) + ":" +
                                                    std::to_string(p.to) + ": " + st.error().message);
    forwarders.push_back(std::move(f));
  }
  for (const auto& [listen, target] : kms_host_side) {
    auto f = std::make_unique<Forwarder>(listen, target);
    if (auto st = f->start(); !st.ok()) return fail("KMS relay to " + target.describe() + ": " + st.error().message);
    forwarders.push_back(std::move(f));
  }

  // ---- the sandbox ----
  int sd[2];
  if (pipe2(sd, O_CLOEXEC) != 0) return fail("pipe failed");
  std::string hostname = manifest->name.empty() ? "dstack-cvm" : manifest->name;
  std::vector<std::string> argv = {"bwrap", "--die-with-parent", "--unshare-net", "--unshare-pid", "--unshare-ipc",
                                   "--unshare-uts", "--unshare-cgroup-try", "--hostname", hostname, "--cap-add", "ALL",
                                   "--ro-bind", "/usr", "/usr", "--ro-bind", "/etc", "/etc"};
  if (!hosts_overlay.empty()) argv.insert(argv.end(), {"--ro-bind", hosts_overlay, "/etc/hosts"});
  for (const char* top : {"/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32"}) {
    if (fs::is_symlink(top)) {
      argv.insert(argv.end(), {"--symlink", fs::read_symlink(top).string(), top});
    } else if (fs::is_directory(top)) {
      argv.insert(argv.end(), {"--ro-bind", top, top});
    }
  }
  argv.insert(argv.end(), {"--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp",
                           "--bind", sim + "/run", "/run", "--dir", "/var", "--symlink", "../run", "/var/run",
                           "--bind", sim + "/dstack", "/dstack",
                           "--bind", D + "/volumes", "/dstack/volumes",
                           "--bind", sim + "/containers", "/dstack/containers",
                           "--ro-bind", D, kGuestVmDir,
                           "--bind", sim + "/vsock", kGuestVsockDir,
                           "--bind", opts.platform_dir, kGuestPlatformDir});
  if (fs::exists(host_api_sock) && fs::path(host_api_sock).parent_path() != fs::path(D))
    argv.insert(argv.end(), {"--ro-bind", host_api_sock, std::string(kGuestVmDir) + "/host-api.sock"});
  // The runner's own dir and the bin dir (usually the same dir: bind it once).
  std::vector<std::string> bin_dirs;
  for (const std::string& dir : {abs_path(self_dir()), abs_path(opts.bin_dir)}) {
    if (dir.rfind("/usr/", 0) == 0 || std::find(bin_dirs.begin(), bin_dirs.end(), dir) != bin_dirs.end()) continue;
    bin_dirs.push_back(dir);
    argv.insert(argv.end(), {"--ro-bind", dir, dir});
  }
  argv.insert(argv.end(), {"--chdir", "/", "--", self_exe(), "guest-init", "--plan",
                           std::string(kGuestVmDir) + "/sim/boot.json", "--shutdown-fd", std::to_string(sd[0])});

  install_stop_handlers(on_signal);

  SpawnOptions so;
  so.argv = argv;
  std::vector<std::string> env = {"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root",
                                  "LANG=C.UTF-8"};
  for (const char* keep : {"RUST_LOG", "DSTACK_LOG"})
    if (const char* v = getenv(keep)) env.push_back(std::string(keep) + "=" + v);
  so.env = env;
  so.new_process_group = true;  // a group SIGTERM to `run` must not kill the sandbox before it shuts down
  so.keep_fds = {sd[0]};
  auto child = spawn(so);
  close(sd[0]);
  if (!child.ok()) {
    close(sd[1]);
    return fail(child.error().message + " (is bubblewrap installed?)");
  }
  spdlog::info("sandbox started (bwrap pid {})", child->pid);

  int status = 0;
  bool requested_stop = false;
  for (;;) {
    if (auto st = wait_for(child->pid, std::chrono::milliseconds(100))) {
      status = *st;
      break;
    }
    if (g_signal.load() != 0 && !requested_stop) {
      requested_stop = true;
      console_line("CVM shutting down (signal " + std::to_string(g_signal.load()) + ")...");
      close(sd[1]);  // EOF on the guest's shutdown fd
      sd[1] = -1;
      if (auto st = wait_for(child->pid, opts.stop_grace)) {
        status = *st;
      } else {
        spdlog::warn("sandbox did not stop within {} s; killing it", opts.stop_grace.count());
        status = terminate(child->pid, std::chrono::milliseconds(500), true);
      }
      break;
    }
  }
  if (sd[1] >= 0) close(sd[1]);
  for (auto& f : forwarders) f->stop();
  kill(-child->pid, SIGKILL);  // nothing of the sandbox may survive us
  if (requested_stop) {
    console_line("CVM stopped.");
    return 0;
  }
  std::string why = "guest exited unexpectedly (" + describe_status(status) + ")";
  console_line("CVM " + why);
  return WIFEXITED(status) && WEXITSTATUS(status) != 0 ? WEXITSTATUS(status) : 1;
}

}  // namespace dstack::cvmsim
