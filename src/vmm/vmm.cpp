#include "vmm/vmm.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <spdlog/spdlog.h>
#include <thread>

#include "base/fs.h"
#include "crypto/hash.h"
#include "keyprovider/client.h"
#include "rpc/http.h"
#include "rpc/prpc.h"
#include "vmm/compose.h"
#include "vmm/manifest.h"

namespace fs = std::filesystem;

namespace dstack::vmm {

const char* const kVmmVersion = "0.5.5-cpp";

namespace {

using Clock = std::chrono::steady_clock;
using ojson = nlohmann::ordered_json;

uint64_t now_ms() {
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count());
}

std::string new_uuid() {
  Bytes b = crypto::random_bytes(16);
  b[6] = static_cast<uint8_t>((b[6] & 0x0f) | 0x40);
  b[8] = static_cast<uint8_t>((b[8] & 0x3f) | 0x80);
  std::string h = to_hex(b);
  return h.substr(0, 8) + "-" + h.substr(8, 4) + "-" + h.substr(12, 4) + "-" + h.substr(16, 4) + "-" + h.substr(20);
}

std::string humantime(uint64_t secs) {
  if (secs == 0) return "0s";
  std::string out;
  uint64_t d = secs / 86400, h = secs / 3600 % 24, m = secs / 60 % 60, s = secs % 60;
  auto add = [&](uint64_t v, const char* u) {
    if (!v) return;
    if (!out.empty()) out += " ";
    out += std::to_string(v) + u;
  };
  add(d, "days");
  add(h, "h");
  add(m, "m");
  add(s, "s");
  return out;
}

Result<Json> read_json_file(const std::string& path) {
  TRY_ASSIGN(auto text, read_file(path));
  try {
    return Json::parse(text);
  } catch (const std::exception& e) {
    return make_error(path + ": invalid JSON: " + e.what());
  }
}

bool valid_name(const std::string& n) {
  static const std::regex re("^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$");
  return std::regex_match(n, re);
}

std::string normalize_registry(std::string r) {
  if (r.rfind("http://", 0) == 0 || r.rfind("https://", 0) == 0) {
    while (!r.empty() && r.back() == '/') r.pop_back();
    return r;
  }
  return "http://" + r;
}

Result<std::vector<std::string>> string_list(const Json& j, const char* field) {
  std::vector<std::string> out;
  if (!j.contains(field) || j[field].is_null()) return out;
  if (!j[field].is_array()) return make_error(std::string(field) + " must be a list of strings");
  for (const auto& v : j[field]) {
    if (!v.is_string()) return make_error(std::string(field) + " must be a list of strings");
    out.push_back(v.get<std::string>());
  }
  return out;
}

Result<std::optional<uint64_t>> opt_u64(const Json& j, const char* field) {
  if (!j.contains(field) || j[field].is_null()) return std::optional<uint64_t>{};
  TRY_ASSIGN(auto v, rpc::get_u64(j, field));
  return std::optional<uint64_t>{v};
}

// argv[0] as given if it contains '/', else the first executable match in PATH.
Result<std::string> resolve_executable(const std::string& exe) {
  if (exe.empty()) return make_error("backend returned an empty command line");
  if (exe.find('/') != std::string::npos) return exe;
  const char* path = std::getenv("PATH");
  std::string p = path ? path : "/usr/local/bin:/usr/bin:/bin";
  size_t pos = 0;
  while (pos <= p.size()) {
    size_t c = p.find(':', pos);
    std::string d = p.substr(pos, c == std::string::npos ? std::string::npos : c - pos);
    pos = c == std::string::npos ? p.size() + 1 : c + 1;
    if (d.empty()) d = ".";
    std::string cand = d + "/" + exe;
    if (::access(cand.c_str(), X_OK) == 0) return cand;
  }
  return make_error(exe + " not found in PATH (install it or configure its absolute path in vmm.toml)");
}

}  // namespace

enum class Phase { Stopped, Running, Stopping, Exited, Removing };
static const char* phase_name(Phase p) {
  switch (p) {
    case Phase::Stopped: return "stopped";
    case Phase::Running: return "running";
    case Phase::Stopping: return "stopping";
    case Phase::Exited: return "exited";
    case Phase::Removing: return "removing";
  }
  return "unknown";
}

struct VmManager::Vm {
  VmManifest manifest;
  std::string dir;
  bool started = false;
  Phase phase = Phase::Stopped;
  pid_t pid = -1;
  uint64_t started_at_ms = 0;
  uint64_t exited_at_ms = 0;
  std::string boot_progress, boot_error, shutdown_progress, instance_id;
  std::string image_version;
  std::deque<Json> events;
  bool stop_requested = false;
  bool powering_off = false;
  uint32_t restart_failures = 0;
  std::thread worker;
  std::unique_ptr<rpc::HttpServer> host_api;
  std::shared_ptr<rpc::PrpcService> host_api_svc;  // routes of host_api point into it
  std::condition_variable cv;
};

struct VmManager::Impl {
  mutable std::mutex mu;
  std::map<std::string, std::shared_ptr<Vm>> vms;
  std::mutex create_mu;  // serializes create/update validation + insert
  std::thread rotator;
  std::condition_variable rot_cv;
  bool shutting_down = false;
  std::atomic<bool> closing{false};
};

VmManager::VmManager(VmmConfig config, std::unique_ptr<Backend> backend)
    : cfg_(std::move(config)), backend_(std::move(backend)), impl_(std::make_unique<Impl>()) {
  impl_->rotator = std::thread([this] {
    std::unique_lock lk(impl_->mu);
    while (!impl_->shutting_down) {
      impl_->rot_cv.wait_for(lk, std::chrono::duration<double>(std::max(0.2, cfg_.cvm.log.check_interval_secs)));
      if (impl_->shutting_down) break;
      lk.unlock();
      rotate_logs();
      lk.lock();
    }
  });
}

VmManager::~VmManager() {
  shutdown();
  {
    std::lock_guard lk(impl_->mu);
    impl_->shutting_down = true;
  }
  impl_->rot_cv.notify_all();
  if (impl_->rotator.joinable()) impl_->rotator.join();
}

std::string VmManager::vm_dir(const std::string& id) const { return cfg_.run_path + "/" + id; }

bool VmManager::exists(const std::string& id) const {
  std::lock_guard lk(impl_->mu);
  return impl_->vms.count(id) > 0;
}

std::optional<std::string> VmManager::resolve(const std::string& key) const {
  std::lock_guard lk(impl_->mu);
  if (impl_->vms.count(key)) return key;
  std::optional<std::string> found;
  for (const auto& [id, vm] : impl_->vms)
    if (vm->manifest.name == key) return id;
  for (const auto& [id, vm] : impl_->vms) {
    if (key.size() >= 4 && id.rfind(key, 0) == 0) {
      if (found) return std::nullopt;  // ambiguous prefix
      found = id;
    }
  }
  return found;
}

// ---------------------------------------------------------------- files

static Status write_state(const std::string& dir, bool started) {
  return write_file_atomic(dir + "/vm-state.json", Json{{"started", started}}.dump());
}

static void push_event(std::deque<Json>& events, size_t cap, const std::string& event, const std::string& body) {
  events.push_back(Json{{"event", event}, {"body", body}, {"timestamp", now_ms()}});
  while (cap > 0 && events.size() > cap) events.pop_front();
}

static Result<Json> load_image_metadata(const std::string& image_root, const std::string& image) {
  if (image.empty() || image.find('/') != std::string::npos || image == "." || image == "..")
    return make_error("invalid image name \"" + image + "\"");
  std::string meta = image_root + "/" + image + "/metadata.json";
  if (!file_exists(meta))
    return make_error("image \"" + image + "\" not found: " + meta +
                      " does not exist (list images with `vmm-cli lsimage`; create one with scripts/make-sim-image.sh)");
  return read_json_file(meta);
}

// .sys-config.json (spec §10.3), regenerated on every start.
static Status write_sys_config(const VmmConfig& cfg, const VmManifest& m, const std::string& dir,
                               const std::string& image_dir, const std::string& host_api_url) {
  std::string digest;
  if (auto d = read_file(image_dir + "/digest.txt")) {
    digest = *d;
    while (!digest.empty() && (digest.back() == '\n' || digest.back() == '\r' || digest.back() == ' ')) digest.pop_back();
  }
  ojson vm_config;
  vm_config["os_image_hash"] = digest;
  vm_config["cpu_count"] = m.vcpu;
  vm_config["memory_size"] = static_cast<uint64_t>(m.memory) << 20;
  vm_config["pci_hole64_size"] = 0;
  vm_config["hugepages"] = m.hugepages;
  vm_config["num_gpus"] = 0;
  vm_config["num_nvswitches"] = 0;
  vm_config["hotplug_off"] = false;
  vm_config["image"] = m.image;
  vm_config["host_share_mode"] = "9p";
  vm_config["spec_version"] = 1;
  ojson sys;
  sys["kms_urls"] = m.kms_urls.empty() ? cfg.cvm.kms_urls : m.kms_urls;
  sys["gateway_urls"] = m.gateway_urls.empty() ? cfg.cvm.gateway_urls : m.gateway_urls;
  sys["pccs_url"] = cfg.cvm.pccs_url;
  sys["collateral_urls"] = {{"pccs", cfg.cvm.pccs_url}};
  sys["nvidia_attestation_proxy_url"] = nullptr;
  sys["docker_registry"] = cfg.cvm.docker_registry;
  sys["host_api_url"] = host_api_url;
  sys["vm_config"] = vm_config.dump();
  return write_file_atomic(dir + "/shared/.sys-config.json", sys.dump());
}

// ---------------------------------------------------------------- log helpers

std::string tail_lines(const std::string& path, size_t lines) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return {};
  f.seekg(0, std::ios::end);
  std::streamoff size = f.tellg();
  if (lines == 0) {
    f.seekg(0);
    return std::string(std::istreambuf_iterator<char>(f), {});
  }
  std::string buf;
  std::streamoff pos = size;
  const std::streamoff chunk = 64 * 1024;
  size_t count = 0;
  while (pos > 0) {
    std::streamoff n = std::min(chunk, pos);
    pos -= n;
    std::string part(static_cast<size_t>(n), '\0');
    f.seekg(pos);
    f.read(part.data(), n);
    buf = part + buf;
    count = static_cast<size_t>(std::count(buf.begin(), buf.end(), '\n'));
    if (!buf.empty() && buf.back() != '\n') ++count;
    if (count > lines) break;
  }
  // Keep the last `lines` lines.
  size_t want = lines;
  size_t end = buf.size();
  if (!buf.empty() && buf.back() == '\n') end--;
  size_t i = end;
  while (i > 0) {
    if (buf[i - 1] == '\n') {
      if (--want == 0) return buf.substr(i);
    }
    --i;
  }
  return buf;
}

static size_t count_lines(const std::string& s) {
  size_t n = static_cast<size_t>(std::count(s.begin(), s.end(), '\n'));
  if (!s.empty() && s.back() != '\n') ++n;
  return n;
}

std::string tail_log_lines(const std::string& path, size_t lines) {
  std::string out = tail_lines(path, lines);
  size_t have = count_lines(out);
  for (int i = 1; i <= 1000 && (lines == 0 || have < lines); ++i) {
    std::string backup = path + "." + std::to_string(i);
    if (!file_exists(backup)) break;
    std::string older = tail_lines(backup, lines == 0 ? 0 : lines - have);
    have += count_lines(older);
    out = older + out;
  }
  return out;
}

std::string strip_ansi(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\x1b' && i + 1 < s.size() && s[i + 1] == '[') {
      i += 2;
      while (i < s.size() && !(s[i] >= 0x40 && s[i] <= 0x7e)) ++i;
      continue;
    }
    out.push_back(s[i]);
  }
  return out;
}

void VmManager::rotate_logs() {
  std::vector<std::string> dirs;
  {
    std::lock_guard lk(impl_->mu);
    for (auto& [id, vm] : impl_->vms) dirs.push_back(vm->dir);
  }
  for (const auto& d : dirs) {
    std::string log = d + "/serial.log";
    std::error_code ec;
    auto size = fs::file_size(log, ec);
    if (ec || size <= cfg_.cvm.log.max_bytes) continue;
    uint32_t keep = cfg_.cvm.log.max_backups;
    if (keep > 0) {
      fs::remove(log + "." + std::to_string(keep), ec);
      for (uint32_t i = keep; i > 1; --i)
        fs::rename(log + "." + std::to_string(i - 1), log + "." + std::to_string(i), ec);
      fs::copy_file(log, log + ".1", fs::copy_options::overwrite_existing, ec);
    }
    // The runner appends with O_APPEND, so truncation in place is safe (copy-truncate rotation).
    if (::truncate(log.c_str(), 0) != 0) spdlog::warn("rotating {}: truncate failed: {}", log, std::strerror(errno));
    else spdlog::info("rotated {} ({} bytes)", log, size);
  }
}

// ---------------------------------------------------------------- supervision

namespace {

struct PreparedExec {
  std::vector<std::string> argv_s, env_s;
  std::vector<char*> argv, envp;
  std::string cwd, log;
};

// Kills a runner left over from a previous VMM process (pid file + cmdline check).
void kill_stale_runner(const std::string& dir) {
  auto pidtext = read_file(dir + "/runner.pid");
  if (!pidtext) return;
  pid_t pid = static_cast<pid_t>(std::atol(pidtext->c_str()));
  if (pid <= 1) return;
  auto cmd = read_file("/proc/" + std::to_string(pid) + "/cmdline");
  if (!cmd || cmd->find(dir) == std::string::npos) return;
  spdlog::warn("killing stale backend process group {} of {}", pid, dir);
  ::kill(-pid, SIGTERM);
  for (int i = 0; i < 50 && ::kill(pid, 0) == 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  ::kill(-pid, SIGKILL);
  ::kill(pid, SIGKILL);
  std::error_code ec;
  fs::remove(dir + "/runner.pid", ec);
}

}  // namespace

Status VmManager::start_vm(const std::string& id) {
  std::shared_ptr<Vm> vm;
  {
    std::lock_guard lk(impl_->mu);
    auto it = impl_->vms.find(id);
    if (it == impl_->vms.end()) return make_error("VM " + id + " not found");
    vm = it->second;
    if (vm->phase == Phase::Running || vm->phase == Phase::Stopping)
      return make_error("VM " + vm->manifest.name + " is already " + phase_name(vm->phase));
    if (vm->phase == Phase::Removing) return make_error("VM " + vm->manifest.name + " is being removed");
  }
  // A worker may still be in its restart backoff (phase exited): stop it first.
  if (vm->worker.joinable()) {
    {
      std::lock_guard lk(impl_->mu);
      vm->stop_requested = true;
    }
    vm->cv.notify_all();
    vm->worker.join();
  }
  TRY(backend_->check());
  std::string image_dir = cfg_.image.path + "/" + vm->manifest.image;
  auto meta = load_image_metadata(cfg_.image.path, vm->manifest.image);
  if (!meta) return meta.error();
  TRY(write_state(vm->dir, true));
  std::lock_guard lk(impl_->mu);
  vm->image_version = meta->value("version", std::string());
  vm->started = true;
  vm->stop_requested = false;
  vm->powering_off = false;
  vm->restart_failures = 0;
  vm->boot_error.clear();
  vm->boot_progress.clear();
  vm->shutdown_progress.clear();
  vm->phase = Phase::Running;  // the worker spawns right away
  auto vm_copy = vm;
  vm->worker = std::thread([this, vm_copy]() mutable {
    // ---- supervision loop
    double backoff = cfg_.cvm.auto_restart.initial_backoff;
    while (true) {
      std::string dir = vm_copy->dir;
      VmManifest manifest;
      {
        std::lock_guard l(impl_->mu);
        if (vm_copy->stop_requested) break;
        manifest = vm_copy->manifest;
      }
      std::string image_dir = cfg_.image.path + "/" + manifest.image;
      std::string sock = dir + "/host-api.sock";
      const LaunchContext lctx{manifest.id, dir, image_dir, sock};
      Status prep = write_sys_config(cfg_, manifest, dir, image_dir, backend_->guest_host_api_url(lctx));
      Result<LaunchSpec> spec = make_error("not prepared");
      if (prep) {
        // Host API for this VM (backend.h contract).
        std::error_code ec;
        fs::remove(sock, ec);
        rpc::ServerOptions api_opts;
        api_opts.threads = 2;
        auto server = std::make_unique<rpc::HttpServer>(api_opts);
        auto svc = std::make_shared<rpc::PrpcService>("");
        std::weak_ptr<Vm> weak = vm_copy;
        svc->add("Info", [this](const Json&, const rpc::HttpRequest&) -> Result<Json> {
          return Json{{"name", cfg_.host_api.ident}, {"version", kVmmVersion}};
        });
        svc->add("Notify", [this, weak](const Json& req, const rpc::HttpRequest&) -> Result<Json> {
          auto v = weak.lock();
          if (!v) return make_error("VM is gone");
          TRY_ASSIGN(std::string event, rpc::get_string(req, "event"));
          TRY_ASSIGN(std::string payload, rpc::get_string(req, "payload"));
          std::lock_guard l(impl_->mu);
          push_event(v->events, cfg_.event_buffer_size, event, payload);
          if (event == "boot.progress") v->boot_progress = payload;
          else if (event == "boot.error") v->boot_error = payload;
          else if (event == "shutdown.progress") {
            v->shutdown_progress = payload;
            if (payload == "powering off") v->powering_off = true;
          } else if (event == "instance.info") {
            Json info;
            try { info = Json::parse(payload); } catch (...) { return make_error("instance.info payload is not JSON"); }
            if (!info.is_object()) return make_error("instance.info payload must be a JSON object");
            std::string path = v->dir + "/shared/.instance_info";
            Json cur = Json::object();
            if (auto c = read_json_file(path); c && c->is_object()) cur = *c;
            for (auto& [k, val] : info.items()) cur[k] = val;
            TRY(write_file_atomic(path, cur.dump()));
            if (info.contains("instance_id") && info["instance_id"].is_string())
              v->instance_id = info["instance_id"].get<std::string>();
          }
          spdlog::info("VM {} event {}: {}", v->manifest.name, event, event == "instance.info" ? "(ids)" : payload);
          return Json(nullptr);
        });
        svc->add("GetSealingKey", [this](const Json& req, const rpc::HttpRequest&) -> Result<Json> {
          if (!cfg_.key_provider.enabled) return make_error("key provider disabled ([key_provider] enabled = false)");
          TRY_ASSIGN(Bytes quote, rpc::get_hex(req, "quote"));
          if (quote.empty()) return make_error("GetSealingKey: empty quote");
          auto r = keyprovider::request_sealing_key(cfg_.key_provider.address, cfg_.key_provider.port, quote,
                                                    std::chrono::milliseconds(cfg_.key_provider.timeout_ms));
          if (!r) return r.error().wrap("GetSealingKey relay to the local key provider ([key_provider] in vmm.toml)");
          return Json{{"encrypted_key", to_hex(r->encrypted_key)}, {"provider_quote", to_hex(r->provider_quote)}};
        });
        svc->mount(*server, "/api");
        auto ls = server->listen("unix:" + sock, std::nullopt, 0600);
        if (!ls) {
          prep = ls.error().wrap("host API socket " + sock);
        } else {
          server->start();
          std::lock_guard l(impl_->mu);
          if (vm_copy->host_api) vm_copy->host_api->stop();
          vm_copy->host_api = std::move(server);
          vm_copy->host_api_svc = svc;
        }
        if (prep) spec = backend_->launch_spec(lctx);
        if (prep && spec) {
          if (auto exe = resolve_executable(spec->argv.empty() ? std::string() : spec->argv[0]); !exe) {
            spec = exe.error();
          } else {
            spec->argv[0] = *exe;
            // Launch record: what was exec'ed for this start (for operators and tests; no secrets in it).
            ojson rec;
            rec["backend"] = backend_->name();
            rec["argv"] = spec->argv;
            rec["env"] = spec->env;
            rec["cwd"] = spec->cwd.empty() ? dir : spec->cwd;
            rec["stdout"] = spec->stdout_file;
            rec["started_at_ms"] = now_ms();
            if (auto w = write_file_atomic(dir + "/launch.json", rec.dump(2)); !w) spec = w.error();
          }
        }
      }
      pid_t pid = -1;
      std::string fail;
      if (!prep) fail = prep.error().message;
      else if (!spec) fail = spec.error().message;
      else {
        PreparedExec px;
        px.argv_s = spec->argv;
        for (char** e = environ; *e; ++e) {
          std::string kv = *e;
          auto k = kv.substr(0, kv.find('='));
          if (!spec->env.count(k)) px.env_s.push_back(kv);
        }
        for (auto& [k, v] : spec->env) px.env_s.push_back(k + "=" + v);
        for (auto& s : px.argv_s) px.argv.push_back(s.data());
        px.argv.push_back(nullptr);
        for (auto& s : px.env_s) px.envp.push_back(s.data());
        px.envp.push_back(nullptr);
        px.cwd = spec->cwd.empty() ? dir : spec->cwd;
        px.log = dir + "/" + (spec->stdout_file.empty() ? std::string("serial.log") : spec->stdout_file);
        int logfd = ::open(px.log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        int nullfd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (logfd < 0 || nullfd < 0) {
          fail = "opening " + px.log + ": " + std::strerror(errno);
        } else {
          std::string banner = "[vmm] starting " + manifest.name + " (" + manifest.id + ") with backend " +
                               backend_->name() + "\n";
          // The banner goes to the console log (serial.log) even when the process output goes elsewhere.
          std::ofstream(dir + "/serial.log", std::ios::app) << banner;
          if (px.log != dir + "/serial.log") {
            [[maybe_unused]] auto w = ::write(logfd, banner.data(), banner.size());
          }
          pid_t parent = ::getpid();
          pid = ::fork();
          if (pid == 0) {
            // Child: async-signal-safe calls only.
            ::setsid();
            ::prctl(PR_SET_PDEATHSIG, SIGTERM);
            if (::getppid() != parent) ::_exit(127);
            sigset_t all;
            sigemptyset(&all);
            ::sigprocmask(SIG_SETMASK, &all, nullptr);
            ::signal(SIGPIPE, SIG_DFL);
            ::dup2(nullfd, 0);
            ::dup2(logfd, 1);
            ::dup2(logfd, 2);
            if (::chdir(px.cwd.c_str()) != 0) ::_exit(126);
            ::syscall(SYS_close_range, 3, ~0U, 0);
            ::execve(px.argv[0], px.argv.data(), px.envp.data());
            const char msg[] = "[vmm] exec of the backend runner failed\n";
            [[maybe_unused]] auto w2 = ::write(2, msg, sizeof msg - 1);
            ::_exit(127);
          }
          if (pid < 0) fail = std::string("fork: ") + std::strerror(errno);
        }
        if (logfd >= 0) ::close(logfd);
        if (nullfd >= 0) ::close(nullfd);
      }
      auto started = Clock::now();
      if (pid > 0) {
        (void)write_file_atomic(dir + "/runner.pid", std::to_string(pid));
        {
          std::lock_guard l(impl_->mu);
          vm_copy->pid = pid;
          vm_copy->phase = vm_copy->stop_requested ? Phase::Stopping : Phase::Running;
          vm_copy->started_at_ms = now_ms();
          push_event(vm_copy->events, cfg_.event_buffer_size, "vm.started", "pid " + std::to_string(pid));
        }
        spdlog::info("VM {} ({}) started, pid {}", manifest.name, manifest.id, pid);
        if (vm_copy->stop_requested) ::kill(-pid, SIGTERM);  // stop raced with the spawn
        siginfo_t si{};
        int rc;
        do { rc = ::waitid(P_PID, static_cast<id_t>(pid), &si, WEXITED | WNOWAIT); } while (rc < 0 && errno == EINTR);
        // The zombie still holds the pid: the group id cannot be reused yet. Clean up leftovers, then reap.
        ::kill(-pid, SIGKILL);
        {
          std::lock_guard l(impl_->mu);
          vm_copy->pid = -1;
        }
        int wst = 0;
        ::waitpid(pid, &wst, 0);
        std::error_code ec;
        fs::remove(dir + "/runner.pid", ec);
        if (si.si_code == CLD_EXITED) fail = "exit code " + std::to_string(si.si_status);
        else fail = std::string("killed by signal ") + std::to_string(si.si_status) + " (" + strsignal(si.si_status) + ")";
      }
      double uptime = std::chrono::duration<double>(Clock::now() - started).count();
      std::unique_lock l(impl_->mu);
      vm_copy->exited_at_ms = now_ms();
      if (vm_copy->stop_requested || vm_copy->powering_off) {
        push_event(vm_copy->events, cfg_.event_buffer_size, "vm.stopped", fail);
        spdlog::info("VM {} stopped ({})", manifest.name, fail);
        if (vm_copy->powering_off && !vm_copy->stop_requested) {
          vm_copy->started = false;
          (void)write_state(dir, false);
        }
        break;
      }
      vm_copy->phase = Phase::Exited;
      if (pid <= 0) {
        vm_copy->boot_error = fail;
        std::ofstream(dir + "/serial.log", std::ios::app) << "[vmm] failed to start: " << fail << "\n";
      }
      push_event(vm_copy->events, cfg_.event_buffer_size, "vm.exited", fail);
      spdlog::warn("VM {} ({}) exited unexpectedly: {}", manifest.name, manifest.id, fail);
      const auto& ar = cfg_.cvm.auto_restart;
      if (!ar.enabled) break;
      if (uptime >= ar.reset_window) {
        vm_copy->restart_failures = 0;
        backoff = ar.initial_backoff;
      }
      if (++vm_copy->restart_failures > ar.max_retries) {
        push_event(vm_copy->events, cfg_.event_buffer_size, "vm.restart_gave_up",
                   "gave up after " + std::to_string(ar.max_retries) + " restarts");
        spdlog::error("VM {}: auto restart gave up after {} retries", manifest.name, ar.max_retries);
        break;
      }
      push_event(vm_copy->events, cfg_.event_buffer_size, "vm.restarting",
                 "attempt " + std::to_string(vm_copy->restart_failures) + " in " + std::to_string(backoff) + "s");
      vm_copy->cv.wait_for(l, std::chrono::duration<double>(backoff), [&] { return vm_copy->stop_requested; });
      backoff = std::min(backoff * 2, ar.max_backoff);
      if (vm_copy->stop_requested) break;
      vm_copy->phase = Phase::Running;
    }
    std::unique_ptr<rpc::HttpServer> api;
    std::shared_ptr<rpc::PrpcService> api_svc;
    {
      std::lock_guard l(impl_->mu);
      api_svc = std::move(vm_copy->host_api_svc);
      if (vm_copy->phase != Phase::Exited) vm_copy->phase = Phase::Stopped;
      else if (vm_copy->stop_requested) vm_copy->phase = Phase::Stopped;
      api = std::move(vm_copy->host_api);
    }
    if (api) api->stop();
    std::error_code ec;
    fs::remove(vm_copy->dir + "/host-api.sock", ec);
  });
  return Status::Ok();
}

// Stops the worker + process of a VM; keep_started leaves vm-state.json alone (VMM shutdown).
static void stop_worker(std::mutex& mu, VmManager::Vm& vm, double timeout_secs);

Status VmManager::stop_vm(const std::string& id, bool force) {
  std::shared_ptr<Vm> vm;
  {
    std::lock_guard lk(impl_->mu);
    auto it = impl_->vms.find(id);
    if (it == impl_->vms.end()) return make_error("VM " + id + " not found");
    vm = it->second;
    vm->started = false;
  }
  TRY(write_state(vm->dir, false));
  double t = cfg_.cvm.stop_timeout_secs;
  if (force) t = std::min(t, 3.0);
  stop_worker(impl_->mu, *vm, t);
  return Status::Ok();
}

void stop_worker(std::mutex& mu, VmManager::Vm& vm, double timeout_secs) {
  pid_t pid;
  {
    std::lock_guard lk(mu);
    vm.stop_requested = true;
    pid = vm.pid;
    if (pid > 0) {
      vm.phase = Phase::Stopping;
      ::kill(-pid, SIGTERM);
    }
  }
  vm.cv.notify_all();
  if (pid > 0) {
    auto deadline = Clock::now() + std::chrono::duration<double>(timeout_secs);
    while (Clock::now() < deadline) {
      {
        std::lock_guard lk(mu);
        if (vm.pid <= 0) break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    std::lock_guard lk(mu);
    if (vm.pid > 0) {
      spdlog::warn("VM {} did not stop within {}s, sending SIGKILL", vm.manifest.name, timeout_secs);
      ::kill(-vm.pid, SIGKILL);
    }
  }
  if (vm.worker.joinable()) vm.worker.join();
  std::lock_guard lk(mu);
  vm.phase = Phase::Stopped;
}

bool VmManager::closing() const { return impl_->closing.load(); }

void VmManager::shutdown() {
  impl_->closing = true;
  std::vector<std::shared_ptr<Vm>> vms;
  {
    std::lock_guard lk(impl_->mu);
    for (auto& [id, vm] : impl_->vms) vms.push_back(vm);
  }
  std::vector<std::thread> ts;
  for (auto& vm : vms)
    ts.emplace_back([this, vm] { stop_worker(impl_->mu, *vm, cfg_.cvm.stop_timeout_secs); });
  for (auto& t : ts) t.join();
  backend_->stop_services();
}

Status VmManager::remove_vm(const std::string& id) {
  std::shared_ptr<Vm> vm;
  {
    std::lock_guard lk(impl_->mu);
    auto it = impl_->vms.find(id);
    if (it == impl_->vms.end()) return make_error("VM " + id + " not found");
    vm = it->second;
    vm->started = false;
  }
  (void)write_file_atomic(vm->dir + "/.removing", "");
  stop_worker(impl_->mu, *vm, std::min(cfg_.cvm.stop_timeout_secs, 3.0));
  {
    std::lock_guard lk(impl_->mu);
    vm->phase = Phase::Removing;
  }
  std::error_code ec;
  fs::remove_all(vm->dir, ec);
  if (ec) return make_error("removing " + vm->dir + ": " + ec.message());
  {
    std::lock_guard lk(impl_->mu);
    impl_->vms.erase(id);
  }
  backend_->vm_removed(id);
  spdlog::info("VM {} ({}) removed", vm->manifest.name, id);
  return Status::Ok();
}

// ---------------------------------------------------------------- load

Status VmManager::load() {
  TRY(make_dirs(cfg_.run_path, 0755));
  TRY(backend_->start_services(cfg_.run_path));
  std::vector<std::string> to_start;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(cfg_.run_path, ec)) {
    if (!entry.is_directory()) continue;
    std::string name = entry.path().filename().string();
    std::string dir = entry.path().string();
    if (name.rfind(".creating-", 0) == 0 || file_exists(dir + "/.removing")) {
      kill_stale_runner(dir);
      spdlog::info("cleaning up incomplete VM dir {}", dir);
      fs::remove_all(dir, ec);
      continue;
    }
    if (!file_exists(dir + "/vm-manifest.json")) continue;
    auto mj = read_json_file(dir + "/vm-manifest.json");
    if (!mj) { spdlog::error("skipping {}: {}", dir, mj.error().message); continue; }
    auto m = manifest_from_json(*mj);
    if (!m) { spdlog::error("skipping {}: {}", dir, m.error().message); continue; }
    if (m->id != name) { spdlog::error("skipping {}: manifest id {} does not match the directory", dir, m->id); continue; }
    kill_stale_runner(dir);
    auto vm = std::make_shared<Vm>();
    vm->manifest = *m;
    vm->dir = dir;
    auto st = read_json_file(dir + "/vm-state.json");
    vm->started = st && st->is_object() && st->value("started", false);
    if (auto ii = read_json_file(dir + "/shared/.instance_info"); ii && ii->is_object())
      vm->instance_id = ii->value("instance_id", std::string());
    if (auto meta = load_image_metadata(cfg_.image.path, m->image)) vm->image_version = meta->value("version", std::string());
    {
      std::lock_guard lk(impl_->mu);
      impl_->vms[m->id] = vm;
    }
    if (vm->started) to_start.push_back(m->id);
  }
  spdlog::info("loaded {} VM(s) from {}, restarting {}", impl_->vms.size(), cfg_.run_path, to_start.size());
  for (const auto& id : to_start) {
    if (auto s = start_vm(id); !s) spdlog::error("restarting VM {}: {}", id, s.error().message);
  }
  return Status::Ok();
}

// ---------------------------------------------------------------- create / update

static Status check_registry(const VmmConfig& cfg, const std::vector<std::string>& images) {
  if (cfg.cvm.docker_registry.empty()) return Status::Ok();
  std::string base = normalize_registry(cfg.cvm.docker_registry);
  for (const auto& ref : images) {
    ImageRef r = parse_image_ref(ref);
    std::string repo = r.repository;
    if (r.registry.empty() && repo.find('/') == std::string::npos) repo = "library/" + repo;
    rpc::ClientOptions opts;
    opts.timeout = std::chrono::milliseconds(cfg.cvm.docker_registry_timeout_ms);
    auto resp = rpc::http_request("GET", base + "/v2/" + repo + "/tags/list", "", opts);
    if (!resp) return make_error("cannot check image " + ref + ": registry " + cfg.cvm.docker_registry +
                                 " unreachable: " + resp.error().message);
    bool found = false;
    if (resp->status == 200) {
      try {
        auto j = Json::parse(resp->body);
        if (j.contains("tags") && j["tags"].is_array())
          for (const auto& t : j["tags"])
            if (t.is_string() && t.get<std::string>() == r.tag) found = true;
      } catch (...) {
      }
      if (r.tag.rfind("sha256:", 0) == 0) found = true;  // digests are not listed in tags
    }
    if (!found) return make_error("image " + ref + " not found in registry " + cfg.cvm.docker_registry);
  }
  return Status::Ok();
}

// Ports: allowed range + no duplicates (within the request and against other VMs).
static Status check_ports(const VmmConfig& cfg, const std::vector<PortMap>& ports,
                          const std::map<std::string, std::shared_ptr<VmManager::Vm>>& vms,
                          const std::string& self_id) {
  if (!ports.empty() && !cfg.cvm.port_mapping.enabled)
    return make_error("port mapping is disabled on this VMM ([cvm.port_mapping] enabled = false)");
  std::set<std::pair<std::string, uint16_t>> seen;
  for (const auto& p : ports) {
    bool ok = false;
    for (const auto& r : cfg.cvm.port_mapping.range)
      if (r.protocol == p.protocol && p.from >= r.from && p.from <= r.to) ok = true;
    if (!ok) {
      std::string ranges;
      for (const auto& r : cfg.cvm.port_mapping.range)
        ranges += (ranges.empty() ? "" : ", ") + r.protocol + " " + std::to_string(r.from) + "-" + std::to_string(r.to);
      return make_error("host port " + p.protocol + "/" + std::to_string(p.from) +
                        " is outside the allowed range (" + ranges + ")");
    }
    if (!seen.insert({p.protocol, p.from}).second)
      return make_error("duplicate port mapping: host port " + p.protocol + "/" + std::to_string(p.from) +
                        " appears more than once");
  }
  for (const auto& [id, vm] : vms) {
    if (id == self_id) continue;
    for (const auto& q : vm->manifest.port_map)
      if (seen.count({q.protocol, q.from}))
        return make_error("duplicate port mapping: host port " + q.protocol + "/" + std::to_string(q.from) +
                          " is already used by VM " + vm->manifest.name);
  }
  return Status::Ok();
}

Result<std::string> VmManager::create_vm(const Json& req) {
  if (!req.is_object()) return make_error("CreateVm: request must be a JSON object");
  VmManifest m;
  TRY_ASSIGN(m.name, rpc::get_string(req, "name"));
  if (!valid_name(m.name))
    return make_error("invalid VM name \"" + m.name + "\": use 1-63 letters, digits, '.', '_' or '-'");
  TRY_ASSIGN(m.image, rpc::get_string(req, "image"));
  if (m.image.empty()) return make_error("CreateVm: image is required (see `vmm-cli lsimage`)");
  TRY_ASSIGN(std::string compose, rpc::get_string(req, "compose_file"));
  if (compose.empty()) return make_error("CreateVm: compose_file is required");
  TRY_ASSIGN(uint64_t vcpu, rpc::get_u64(req, "vcpu"));
  TRY_ASSIGN(uint64_t memory, rpc::get_u64(req, "memory"));
  TRY_ASSIGN(uint64_t disk, rpc::get_u64(req, "disk_size"));
  if (vcpu == 0) vcpu = 1;
  if (memory == 0) memory = 1024;
  if (disk == 0) disk = 20;
  if (vcpu > cfg_.cvm.max_allocable_vcpu)
    return make_error("vcpu " + std::to_string(vcpu) + " exceeds max_allocable_vcpu " + std::to_string(cfg_.cvm.max_allocable_vcpu));
  if (memory > cfg_.cvm.max_allocable_memory_in_mb)
    return make_error("memory " + std::to_string(memory) + " MB exceeds max_allocable_memory_in_mb " +
                      std::to_string(cfg_.cvm.max_allocable_memory_in_mb));
  if (memory < 64) return make_error("memory must be at least 64 MB");
  if (disk > 65536) return make_error("disk_size " + std::to_string(disk) + " GB is too large");
  m.vcpu = static_cast<uint32_t>(vcpu);
  m.memory = static_cast<uint32_t>(memory);
  m.disk_size = static_cast<uint32_t>(disk);
  if (req.contains("ports") && !req["ports"].is_null()) {
    if (!req["ports"].is_array()) return make_error("ports must be a list");
    for (const auto& p : req["ports"]) {
      TRY_ASSIGN(auto pm, port_from_rpc(p, cfg_.cvm.port_mapping.address));
      m.port_map.push_back(pm);
    }
  }
  TRY_ASSIGN(Bytes encrypted_env, rpc::get_hex(req, "encrypted_env"));
  TRY_ASSIGN(std::string user_config, rpc::get_string(req, "user_config"));
  std::string app_id;
  if (req.contains("app_id") && !req["app_id"].is_null()) {
    TRY_ASSIGN(Bytes aid, rpc::get_hex(req, "app_id"));
    if (!aid.empty() && aid.size() != 20) return make_error("app_id must be 20 bytes (40 hex chars)");
    app_id = to_hex(aid);
  }
  if (app_id.empty()) app_id = app_id_of(compose);
  m.app_id = app_id;
  TRY_ASSIGN(m.hugepages, rpc::get_bool(req, "hugepages"));
  TRY_ASSIGN(m.pin_numa, rpc::get_bool(req, "pin_numa"));
  TRY_ASSIGN(m.kms_urls, string_list(req, "kms_urls"));
  TRY_ASSIGN(m.gateway_urls, string_list(req, "gateway_urls"));
  TRY_ASSIGN(m.no_tee, rpc::get_bool(req, "no_tee"));
  TRY_ASSIGN(bool stopped, rpc::get_bool(req, "stopped"));
  if (req.contains("simulated_tee") && req["simulated_tee"].is_string() && !req["simulated_tee"].get<std::string>().empty())
    m.simulated_tee = req["simulated_tee"].get<std::string>();

  auto info = validate_app_compose(compose);
  if (!info) return info.error();
  auto meta = load_image_metadata(cfg_.image.path, m.image);
  if (!meta) return meta.error();
  TRY(backend_->check());
  TRY(check_registry(cfg_, info->images));

  std::lock_guard create_lock(impl_->create_mu);
  {
    std::lock_guard lk(impl_->mu);
    for (const auto& [id, vm] : impl_->vms)
      if (vm->manifest.name == m.name) return make_error("a VM named \"" + m.name + "\" already exists (id " + id + ")");
    TRY(check_ports(cfg_, m.port_map, impl_->vms, ""));
  }
  m.id = new_uuid();
  m.created_at_ms = now_ms();
  TRY(make_dirs(cfg_.run_path, 0755));
  // Build the whole dir under a temporary name, then rename: nothing half-created is ever visible.
  std::string tmp = cfg_.run_path + "/.creating-" + m.id;
  std::string dir = vm_dir(m.id);
  auto build = [&]() -> Status {
    TRY(make_dirs(tmp + "/shared", 0755));
    TRY(write_file_atomic(tmp + "/vm-manifest.json", manifest_to_json(m).dump(4)));
    TRY(write_file_atomic(tmp + "/vm-state.json", Json{{"started", false}}.dump()));
    TRY(write_file_atomic(tmp + "/shared/app-compose.json", compose));
    TRY(write_file_atomic(tmp + "/shared/.instance_info", Json{{"app_id", app_id}}.dump()));
    if (!encrypted_env.empty()) TRY(write_file_atomic(tmp + "/shared/.encrypted-env", ByteView(encrypted_env), 0600));
    if (!user_config.empty()) TRY(write_file_atomic(tmp + "/shared/.user-config", user_config, 0600));
    if (::rename(tmp.c_str(), dir.c_str()) != 0) return make_error("creating " + dir + ": " + std::strerror(errno));
    return Status::Ok();
  };
  if (auto s = build(); !s) {
    std::error_code ec;
    fs::remove_all(tmp, ec);
    return s.error().wrap("creating VM " + m.name);
  }
  auto vm = std::make_shared<Vm>();
  vm->manifest = m;
  vm->dir = dir;
  vm->image_version = meta->value("version", std::string());
  {
    std::lock_guard lk(impl_->mu);
    impl_->vms[m.id] = vm;
    push_event(vm->events, cfg_.event_buffer_size, "vm.created", m.name);
  }
  spdlog::info("VM {} created: id {} image {} app_id {}", m.name, m.id, m.image, app_id);
  if (!stopped) {
    if (auto s = start_vm(m.id); !s) return s.error().wrap("VM " + m.id + " created but failed to start");
  }
  return m.id;
}

Result<std::string> VmManager::update_vm(const Json& req) {
  TRY_ASSIGN(std::string key, rpc::get_string(req, "id"));
  auto id = resolve(key);
  if (!id) return make_error("VM " + key + " not found");
  std::shared_ptr<Vm> vm;
  {
    std::lock_guard lk(impl_->mu);
    vm = impl_->vms[*id];
  }
  std::lock_guard create_lock(impl_->create_mu);
  VmManifest m;
  {
    std::lock_guard lk(impl_->mu);
    m = vm->manifest;
  }
  TRY_ASSIGN(std::string compose, rpc::get_string(req, "compose_file"));
  std::string new_app_id;
  if (!compose.empty()) {
    auto info = validate_app_compose(compose);
    if (!info) return info.error();
    TRY(check_registry(cfg_, info->images));
    new_app_id = app_id_of(compose);
  }
  TRY_ASSIGN(Bytes encrypted_env, rpc::get_hex(req, "encrypted_env"));
  TRY_ASSIGN(std::string user_config, rpc::get_string(req, "user_config"));
  TRY_ASSIGN(bool update_ports, rpc::get_bool(req, "update_ports"));
  if (update_ports) {
    m.port_map.clear();
    if (req.contains("ports") && req["ports"].is_array())
      for (const auto& p : req["ports"]) {
        TRY_ASSIGN(auto pm, port_from_rpc(p, cfg_.cvm.port_mapping.address));
        m.port_map.push_back(pm);
      }
    std::lock_guard lk(impl_->mu);
    TRY(check_ports(cfg_, m.port_map, impl_->vms, *id));
  }
  TRY_ASSIGN(bool update_kms, rpc::get_bool(req, "update_kms_urls"));
  if (update_kms) {
    TRY_ASSIGN(m.kms_urls, string_list(req, "kms_urls"));
  }
  TRY_ASSIGN(bool update_gw, rpc::get_bool(req, "update_gateway_urls"));
  if (update_gw) {
    TRY_ASSIGN(m.gateway_urls, string_list(req, "gateway_urls"));
  }
  TRY_ASSIGN(auto vcpu, opt_u64(req, "vcpu"));
  TRY_ASSIGN(auto memory, opt_u64(req, "memory"));
  TRY_ASSIGN(auto disk, opt_u64(req, "disk_size"));
  if (vcpu) {
    if (*vcpu == 0 || *vcpu > cfg_.cvm.max_allocable_vcpu) return make_error("vcpu out of range");
    m.vcpu = static_cast<uint32_t>(*vcpu);
  }
  if (memory) {
    if (*memory < 64 || *memory > cfg_.cvm.max_allocable_memory_in_mb) return make_error("memory out of range");
    m.memory = static_cast<uint32_t>(*memory);
  }
  if (disk) {
    if (*disk < m.disk_size) return make_error("disk cannot shrink (" + std::to_string(m.disk_size) + " GB now)");
    m.disk_size = static_cast<uint32_t>(*disk);
  }
  if (req.contains("image") && req["image"].is_string() && !req["image"].get<std::string>().empty()) {
    std::string image = req["image"].get<std::string>();
    auto meta = load_image_metadata(cfg_.image.path, image);
    if (!meta) return meta.error();
    m.image = image;
  }
  const std::string& dir = vm->dir;
  if (!compose.empty()) TRY(write_file_atomic(dir + "/shared/app-compose.json", compose));
  if (!encrypted_env.empty()) TRY(write_file_atomic(dir + "/shared/.encrypted-env", ByteView(encrypted_env), 0600));
  if (!user_config.empty()) TRY(write_file_atomic(dir + "/shared/.user-config", user_config, 0600));
  TRY(write_file_atomic(dir + "/vm-manifest.json", manifest_to_json(m).dump(4)));
  {
    std::lock_guard lk(impl_->mu);
    vm->manifest = m;
    push_event(vm->events, cfg_.event_buffer_size, "vm.updated", "takes effect at the next start");
  }
  return new_app_id;
}

// ---------------------------------------------------------------- queries

static Json vm_info_json(const VmmConfig& cfg, const VmManager::Vm& vm, bool brief) {
  Json j;
  const auto& m = vm.manifest;
  j["id"] = m.id;
  j["name"] = m.name;
  j["status"] = phase_name(vm.phase);
  uint64_t up = (vm.phase == Phase::Running || vm.phase == Phase::Stopping) && vm.started_at_ms
                    ? (now_ms() - vm.started_at_ms) / 1000 : 0;
  j["uptime"] = humantime(up);
  j["app_url"] = nullptr;
  j["app_id"] = m.app_id;
  j["instance_id"] = vm.instance_id.empty() ? Json(nullptr) : Json(vm.instance_id);
  j["exited_at"] = vm.exited_at_ms ? std::to_string(vm.exited_at_ms / 1000) : "";
  j["boot_progress"] = vm.boot_progress;
  j["boot_error"] = vm.boot_error;
  j["shutdown_progress"] = vm.shutdown_progress;
  j["image_version"] = vm.image_version;
  j["events"] = Json::array();
  for (const auto& e : vm.events) j["events"].push_back(e);
  j["interfaces"] = Json::array();
  if (brief) {
    j["configuration"] = nullptr;
    return j;
  }
  Json c;
  c["name"] = m.name;
  c["image"] = m.image;
  c["compose_file"] = read_file(vm.dir + "/shared/app-compose.json").value_or("");
  c["vcpu"] = m.vcpu;
  c["memory"] = m.memory;
  c["disk_size"] = m.disk_size;
  c["ports"] = Json::array();
  for (const auto& p : m.port_map) c["ports"].push_back(port_to_rpc(p));
  c["encrypted_env"] = "";  // never echoed back
  c["app_id"] = m.app_id;
  c["user_config"] = read_file(vm.dir + "/shared/.user-config").value_or("");
  c["hugepages"] = m.hugepages;
  c["pin_numa"] = m.pin_numa;
  c["gpus"] = nullptr;
  c["kms_urls"] = m.kms_urls;
  c["gateway_urls"] = m.gateway_urls;
  c["stopped"] = !vm.started;
  c["no_tee"] = m.no_tee;
  c["simulated_tee"] = m.simulated_tee ? Json(*m.simulated_tee) : Json(nullptr);
  j["configuration"] = c;
  (void)cfg;
  return j;
}

Result<Json> VmManager::status(const Json& req) const {
  TRY_ASSIGN(bool brief, rpc::get_bool(req, "brief"));
  TRY_ASSIGN(std::string keyword, rpc::get_string(req, "keyword"));
  TRY_ASSIGN(uint64_t page, rpc::get_u64(req, "page"));
  TRY_ASSIGN(uint64_t page_size, rpc::get_u64(req, "page_size"));
  TRY_ASSIGN(auto ids, string_list(req, "ids"));
  std::vector<std::shared_ptr<Vm>> list;
  {
    std::lock_guard lk(impl_->mu);
    for (const auto& [id, vm] : impl_->vms) {
      if (!ids.empty() && std::find(ids.begin(), ids.end(), id) == ids.end()) continue;
      if (!keyword.empty() && vm->manifest.name.find(keyword) == std::string::npos &&
          id.find(keyword) == std::string::npos && vm->manifest.app_id.find(keyword) == std::string::npos)
        continue;
      list.push_back(vm);
    }
  }
  std::sort(list.begin(), list.end(), [](const auto& a, const auto& b) {
    return a->manifest.created_at_ms != b->manifest.created_at_ms ? a->manifest.created_at_ms < b->manifest.created_at_ms
                                                                  : a->manifest.id < b->manifest.id;
  });
  Json out;
  out["total"] = list.size();
  out["port_mapping_enabled"] = cfg_.cvm.port_mapping.enabled;
  out["vms"] = Json::array();
  size_t begin = 0, end = list.size();
  if (page_size > 0) {
    begin = std::min<size_t>(list.size(), (page > 0 ? page - 1 : 0) * page_size);
    end = std::min<size_t>(list.size(), begin + page_size);
  }
  std::lock_guard lk(impl_->mu);
  for (size_t i = begin; i < end; ++i) out["vms"].push_back(vm_info_json(cfg_, *list[i], brief));
  return out;
}

Json VmManager::get_info(const std::string& key) const {
  auto id = resolve(key);
  std::lock_guard lk(impl_->mu);
  if (!id || !impl_->vms.count(*id)) return Json{{"found", false}, {"info", nullptr}};
  return Json{{"found", true}, {"info", vm_info_json(cfg_, *impl_->vms.at(*id), false)}};
}

Json VmManager::list_images() const {
  Json out{{"images", Json::array()}};
  std::error_code ec;
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(cfg_.image.path, ec))
    if (e.is_directory() && file_exists(e.path().string() + "/metadata.json")) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  for (const auto& n : names) {
    auto text = read_file(cfg_.image.path + "/" + n + "/metadata.json").value_or("{}");
    Json meta;
    try { meta = Json::parse(text); } catch (...) { continue; }
    out["images"].push_back(Json{{"name", n}, {"description", text},
                                 {"version", meta.value("version", std::string())},
                                 {"is_dev", meta.value("is_dev", false)}});
  }
  return out;
}

Json VmManager::get_meta() const {
  const auto& c = cfg_;
  return Json{
      {"kms", {{"url", c.cvm.kms_urls.empty() ? c.kms_url : c.cvm.kms_urls.front()}, {"urls", c.cvm.kms_urls}}},
      {"gateway", {{"url", c.cvm.gateway_urls.empty() ? "" : c.cvm.gateway_urls.front()},
                   {"base_domain", c.gateway.base_domain}, {"port", c.gateway.port},
                   {"agent_port", c.gateway.agent_port}, {"urls", c.cvm.gateway_urls}}},
      {"resources", {{"max_cvm_number", 0}, {"max_allocable_vcpu", c.cvm.max_allocable_vcpu},
                     {"max_allocable_memory_in_mb", c.cvm.max_allocable_memory_in_mb}}},
      {"networking", {{"supported_modes", {"user"}}, {"default_mode", "user"}, {"default_bridge", ""}}},
      {"backend", backend_->name()}};
}

}  // namespace dstack::vmm
