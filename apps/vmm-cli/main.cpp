// vmm-cli: command line client of dstack-vmm (spec §11.1; same subcommands and flags as upstream vmm-cli.py).
#include <CLI/CLI.hpp>

#include <netdb.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <cstdlib>
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <nlohmann/json.hpp>

#include "base/fs.h"
#include "crypto/ecdh.h"
#include "rpc/http.h"
#include "rpc/prpc.h"
#include "vmm/compose.h"
#include "vmm/envcrypt.h"
#include "vmm/manifest.h"
#include "vmm/qemu/doctor.h"

using dstack::Result;
using dstack::Status;
using Json = nlohmann::json;
namespace vmm = dstack::vmm;
namespace rpc = dstack::rpc;

namespace {

std::string g_url;

[[noreturn]] void die(const std::string& msg) {
  std::cerr << "Error: " << msg << "\n";
  std::exit(1);
}

std::string prpc_base() {
  if (g_url.rfind("unix:", 0) == 0 && g_url.find(':', 5) == std::string::npos) return g_url + ":/prpc";
  std::string u = g_url;
  while (!u.empty() && u.back() == '/') u.pop_back();
  return u + "/prpc";
}

std::string http_url(const std::string& path_and_query) {
  if (g_url.rfind("unix:", 0) == 0 && g_url.find(':', 5) == std::string::npos) return g_url + ":" + path_and_query;
  std::string u = g_url;
  while (!u.empty() && u.back() == '/') u.pop_back();
  return u + path_and_query;
}

Json call(const std::string& method, const Json& req = Json::object()) {
  rpc::ClientOptions opts;
  opts.timeout = std::chrono::seconds(60);
  auto r = rpc::prpc_call(prpc_base(), method, req, opts);
  if (!r) die(method + " failed: " + r.error().message + " (VMM at " + g_url + ")");
  return *r;
}

std::string read_or_die(const std::string& path, const char* what) {
  auto t = dstack::read_file(path);
  if (!t) die(std::string("cannot read ") + what + " " + path + ": " + t.error().message);
  return *t;
}

std::string url_encode(const std::string& s) {
  std::ostringstream o;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') o << c;
    else o << '%' << std::uppercase << std::hex << std::setw(2) << std::setfill('0') << int(c) << std::nouppercase << std::dec;
  }
  return o.str();
}

void print_table(const std::vector<std::string>& headers, const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> w(headers.size());
  for (size_t i = 0; i < headers.size(); ++i) w[i] = headers[i].size();
  for (const auto& r : rows)
    for (size_t i = 0; i < r.size() && i < w.size(); ++i) w[i] = std::max(w[i], r[i].size());
  auto sep = [&] {
    std::cout << "+";
    for (auto x : w) std::cout << std::string(x + 2, '-') << "+";
    std::cout << "\n";
  };
  auto line = [&](const std::vector<std::string>& r) {
    std::cout << "|";
    for (size_t i = 0; i < w.size(); ++i) std::cout << " " << std::left << std::setw(static_cast<int>(w[i])) << (i < r.size() ? r[i] : "") << " |";
    std::cout << "\n";
  };
  sep();
  line(headers);
  sep();
  for (const auto& r : rows) line(r);
  sep();
}

std::string jstr(const Json& j, const char* k) {
  if (!j.contains(k) || j[k].is_null()) return "";
  return j[k].is_string() ? j[k].get<std::string>() : j[k].dump();
}

// Trusted KMS signers: ~/.dstack-vmm/kms-whitelist.json {"trusted_signers":[hex33,...]}.
std::vector<std::string> kms_whitelist() {
  const char* home = std::getenv("HOME");
  std::vector<std::string> out;
  if (!home) return out;
  auto t = dstack::read_file(std::string(home) + "/.dstack-vmm/kms-whitelist.json");
  if (!t) return out;
  try {
    auto j = Json::parse(*t);
    for (const auto& s : j.value("trusted_signers", Json::array())) out.push_back(s.get<std::string>());
  } catch (...) {
  }
  return out;
}

// Fetches the KMS env pubkey (from the KMS directly when kms_url is given, else via the VMM), verifies the
// signature and encrypts the env (spec §11.1). Returns hex.
std::string encrypt_env(const vmm::EnvList& env, const std::string& app_id_hex, const std::string& kms_url) {
  auto app_id = dstack::from_hex(app_id_hex);
  if (!app_id || app_id->size() != 20) die("app id must be 20 bytes of hex, got \"" + app_id_hex + "\"");
  Json resp;
  if (!kms_url.empty()) {
    rpc::ClientOptions opts;
    opts.insecure_skip_verify = true;  // the key's authenticity comes from the KMS signature checked below
    opts.timeout = std::chrono::seconds(15);
    std::string base = kms_url;
    while (!base.empty() && base.back() == '/') base.pop_back();
    if (base.size() < 5 || base.substr(base.size() - 5) != "/prpc") base += "/prpc";
    auto r = rpc::prpc_call(base, "GetAppEnvEncryptPubKey", Json{{"app_id", app_id_hex}}, opts);
    if (!r) die("GetAppEnvEncryptPubKey from KMS " + kms_url + " failed: " + r.error().message);
    resp = *r;
  } else {
    resp = call("GetAppEnvEncryptPubKey", Json{{"app_id", app_id_hex}});
  }
  auto pub = rpc::get_hex(resp, "public_key");
  auto sig = rpc::get_hex(resp, "signature");
  auto sig1 = rpc::get_hex(resp, "signature_v1");
  auto ts = rpc::get_u64(resp, "timestamp");
  if (!pub || !sig || !sig1 || !ts) die("malformed GetAppEnvEncryptPubKey response: " + resp.dump());
  auto signer = vmm::recover_env_pubkey_signer(*app_id, *pub, *sig, *ts, *sig1);
  if (!signer) die(signer.error().message);
  std::string signer_hex = dstack::to_hex(*signer);
  auto wl = kms_whitelist();
  if (wl.empty()) {
    std::cerr << "Warning: no trusted KMS signers configured (~/.dstack-vmm/kms-whitelist.json); env key signed by "
              << signer_hex << "\n";
  } else if (std::find(wl.begin(), wl.end(), signer_hex) == wl.end()) {
    die("the env encryption key is signed by " + signer_hex + ", which is not in ~/.dstack-vmm/kms-whitelist.json");
  }
  auto blob = dstack::crypto::dstack_encrypt_env(*pub, dstack::as_view(vmm::env_to_json(env)));
  if (!blob) die("encrypting env: " + blob.error().message);
  return dstack::to_hex(*blob);
}


// Streams GET <url> (http://host:port/... or unix:/sock:/...) to stdout as bytes arrive, de-chunking the body.
// Local stand-in for rpc::http_stream, whose reader currently waits for 16 KiB before delivering (reported).
int follow_stream(const std::string& url) {
  std::string target, host = "localhost";
  int fd = -1;
  if (url.rfind("unix:", 0) == 0) {
    auto colon = url.find(':', 5);
    std::string sock = url.substr(5, colon - 5);
    target = colon == std::string::npos ? "/" : url.substr(colon + 1);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    if (sock.size() >= sizeof a.sun_path) die("socket path too long: " + sock);
    std::memcpy(a.sun_path, sock.c_str(), sock.size() + 1);
    fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) die("cannot connect to " + sock);
  } else {
    if (url.rfind("http://", 0) != 0) die("logs --follow supports http:// and unix: URLs");
    std::string rest = url.substr(7);
    auto slash = rest.find('/');
    host = rest.substr(0, slash);
    target = slash == std::string::npos ? "/" : rest.substr(slash);
    std::string h = host, port = "80";
    if (auto c = host.rfind(':'); c != std::string::npos) { h = host.substr(0, c); port = host.substr(c + 1); }
    addrinfo hints{}, *res = nullptr;
    hints.ai_socktype = SOCK_STREAM;
    if (::getaddrinfo(h.c_str(), port.c_str(), &hints, &res) != 0 || !res) die("cannot resolve " + h);
    fd = ::socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    timeval tv{10, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    int rc = fd < 0 ? -1 : ::connect(fd, res->ai_addr, res->ai_addrlen);
    ::freeaddrinfo(res);
    if (rc != 0) die("cannot connect to " + host + ": " + std::strerror(errno));
  }
  // No read timeout: the server sends a heartbeat every 60 s; a dead peer is noticed at the next one (120 s).
  timeval rtv{120, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &rtv, sizeof rtv);
  std::string req = "GET " + target + " HTTP/1.1\r\nHost: " + host + "\r\nConnection: close\r\n\r\n";
  if (::send(fd, req.data(), req.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(req.size())) die("sending request failed");
  std::string buf;
  char tmp[4096];
  bool head_done = false, chunked = false;
  for (;;) {
    ssize_t n = ::recv(fd, tmp, sizeof tmp, 0);
    if (n <= 0) break;
    buf.append(tmp, static_cast<size_t>(n));
    if (!head_done) {
      auto e = buf.find("\r\n\r\n");
      if (e == std::string::npos) continue;
      std::string head = buf.substr(0, e);
      buf.erase(0, e + 4);
      head_done = true;
      int status = std::atoi(head.substr(head.find(' ') + 1).c_str());
      std::string lower = head;
      for (auto& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      chunked = lower.find("transfer-encoding: chunked") != std::string::npos;
      if (status != 200) {
        while ((n = ::recv(fd, tmp, sizeof tmp, 0)) > 0) buf.append(tmp, static_cast<size_t>(n));
        std::string msg = buf;
        try { msg = Json::parse(buf.substr(buf.find('{'))).value("error", buf); } catch (...) {}
        die(msg);
      }
    }
    if (!chunked) { std::cout << buf << std::flush; buf.clear(); continue; }
    for (;;) {
      auto le = buf.find("\r\n");
      if (le == std::string::npos) break;
      size_t len = std::strtoul(buf.substr(0, le).c_str(), nullptr, 16);
      if (len == 0) { ::close(fd); return 0; }
      if (buf.size() < le + 2 + len + 2) break;
      std::cout << buf.substr(le + 2, len) << std::flush;
      buf.erase(0, le + 2 + len + 2);
    }
  }
  ::close(fd);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // `vmm-cli doctor ...`: local host check, same as `dstack-vmm doctor` (no VMM needed).
  if (argc >= 2 && std::strcmp(argv[1], "doctor") == 0) return dstack::vmm::qemu::doctor_main(argc - 2, argv + 2);
  CLI::App app{"vmm-cli: manage dstack CVMs on a dstack-vmm"};
  app.require_subcommand(1);
  app.add_subcommand("doctor",
                     "Check whether this host can run TDX guests with the QEMU backend "
                     "([--json] [--qemu PATH] [--bios FILE]... [--image-dir DIR]...; exit 0 ready, 2 not)")
      ->allow_extras();
  const char* env_url = std::getenv("DSTACK_VMM_URL");
  g_url = env_url && *env_url ? env_url : "http://127.0.0.1:9080";
  app.add_option("--url", g_url, "dstack-vmm URL (env DSTACK_VMM_URL; unix:/path.sock supported)");

  // lsvm / list
  bool ls_json = false, ls_verbose = false;
  auto* lsvm = app.add_subcommand("lsvm", "List VMs");
  lsvm->alias("list");
  lsvm->add_flag("--json", ls_json, "JSON output");
  lsvm->add_flag("-v,--verbose", ls_verbose, "More columns");

  std::string vm_id;
  bool info_json = false;
  auto* info = app.add_subcommand("info", "Show one VM");
  info->add_option("vm_id", vm_id, "VM id or name")->required();
  info->add_flag("--json", info_json, "JSON output");

  auto* start = app.add_subcommand("start", "Start a VM");
  start->add_option("vm_id", vm_id, "VM id or name")->required();
  bool force = false;
  auto* stop = app.add_subcommand("stop", "Stop a VM (graceful; -f forces)");
  stop->add_option("vm_id", vm_id, "VM id or name")->required();
  stop->add_flag("-f,--force", force, "Hard stop");
  auto* remove = app.add_subcommand("remove", "Remove a VM and its data");
  remove->alias("rm");
  remove->add_option("vm_id", vm_id, "VM id or name")->required();

  int log_lines = 20;
  bool follow = false;
  std::string log_id;
  auto* logs = app.add_subcommand("logs", "Show a VM's console log");
  logs->add_option("vm_id", vm_id, "VM id or name");
  logs->add_option("--id", log_id, "VM id or name");
  logs->add_option("-n,--lines", log_lines, "Number of lines (default 20)");
  logs->add_flag("-f,--follow", follow, "Follow the log");

  // compose
  vmm::ComposeOptions co;
  std::string docker_compose_file, output, prelaunch_file, env_file_c, swap_c, key_provider_c;
  int event_log_version = 0;
  auto* compose = app.add_subcommand("compose", "Create an app-compose.json");
  compose->add_option("--name", co.name, "App name")->required();
  compose->add_option("--docker-compose", docker_compose_file, "docker-compose.yaml")->required();
  compose->add_option("--output", output, "Output file (app-compose.json)")->required();
  compose->add_option("--prelaunch-script", prelaunch_file, "Pre-launch script");
  compose->add_flag("--kms", co.kms, "Enable KMS");
  compose->add_flag("--gateway", co.gateway, "Enable the gateway");
  compose->add_flag("--local-key-provider", co.local_key_provider, "Use the local (SGX) key provider");
  compose->add_option("--key-provider", key_provider_c, "none|kms|local|tpm");
  compose->add_option("--key-provider-id", co.key_provider_id, "Key provider id (hex)");
  compose->add_flag("--public-logs", co.public_logs, "Make logs public");
  compose->add_flag("--public-sysinfo", co.public_sysinfo, "Make sysinfo public");
  compose->add_option("--env-file", env_file_c, "Env file: its keys become allowed_envs (needs --kms)");
  compose->add_flag("--no-instance-id", co.no_instance_id, "No instance id");
  compose->add_flag("--secure-time", co.secure_time, "Wait for secure time sync at boot (default off)");
  compose->add_option("--swap", swap_c, "Swap size, e.g. 4G");
  compose->add_option("--event-log-version", event_log_version, "1 or 2");

  // deploy
  std::string d_name, d_image, d_compose, d_vcpu = "1", d_memory = "1024", d_disk = "20", d_env_file, d_user_config,
              d_app_id, d_kms_encrypt_url, d_simulated_tee;
  std::vector<std::string> d_ports, d_kms_urls, d_gateway_urls;
  bool d_stopped = false, d_no_tee = false, d_hugepages = false, d_pin_numa = false;
  auto* deploy = app.add_subcommand("deploy", "Deploy a CVM");
  deploy->add_option("--name", d_name, "VM name")->required();
  deploy->add_option("--image", d_image, "Guest image (see lsimage)")->required();
  deploy->add_option("--compose", d_compose, "app-compose.json")->required();
  deploy->add_option("--vcpu", d_vcpu, "vCPUs (default 1)");
  deploy->add_option("--memory", d_memory, "Memory, default unit MB (e.g. 4096, 4G)");
  deploy->add_option("--disk", d_disk, "Disk, default unit GB (e.g. 20, 20G)");
  deploy->add_option("--env-file", d_env_file,
                     "Env file to encrypt to the KMS (key from --kms-encrypt-url / --kms-url, else via the VMM)");
  deploy->add_option("--user-config", d_user_config, "User config file");
  deploy->add_option("--app-id", d_app_id, "App id (hex, 20 bytes)");
  deploy->add_option("--port", d_ports, "Port mapping proto[:host_addr]:host_port:vm_port (repeatable)");
  deploy->add_option("--kms-url", d_kms_urls, "KMS URL (repeatable)");
  deploy->add_option("--kms-encrypt-url", d_kms_encrypt_url, "KMS URL used to fetch the env encryption key");
  deploy->add_option("--gateway-url", d_gateway_urls, "Gateway URL (repeatable)");
  deploy->add_flag("--stopped", d_stopped, "Create without starting");
  deploy->add_flag("--no-tee", d_no_tee, "Run without TEE");
  deploy->add_flag("--hugepages", d_hugepages, "Use hugepages");
  deploy->add_flag("--pin-numa", d_pin_numa, "Pin to a NUMA node");
  deploy->add_option("--simulated-tee", d_simulated_tee, "Simulated TEE kind");

  bool img_json = false;
  auto* lsimage = app.add_subcommand("lsimage", "List guest images");
  lsimage->add_flag("--json", img_json, "JSON output");

  std::string upd_file;
  auto* upd_compose = app.add_subcommand("update-app-compose", "Replace a VM's app-compose.json (next start)");
  upd_compose->add_option("vm_id", vm_id, "VM id or name")->required();
  upd_compose->add_option("compose", upd_file, "app-compose.json")->required();
  std::vector<std::string> up_ports;
  auto* upd_ports = app.add_subcommand("update-ports", "Replace a VM's port mappings (next start)");
  upd_ports->add_option("vm_id", vm_id, "VM id or name")->required();
  upd_ports->add_option("--port", up_ports, "Port mapping (repeatable)");

  CLI11_PARSE(app, argc, argv);

  if (lsvm->parsed()) {
    Json st = call("Status", Json{{"brief", false}});
    if (ls_json) {
      std::cout << st["vms"].dump(2) << "\n";
      return 0;
    }
    std::vector<std::vector<std::string>> rows;
    for (const auto& v : st["vms"]) {
      std::vector<std::string> r{jstr(v, "id"), jstr(v, "app_id"), jstr(v, "name"), jstr(v, "status"), jstr(v, "uptime")};
      if (ls_verbose && v["configuration"].is_object()) {
        const auto& c = v["configuration"];
        std::string ports;
        for (const auto& p : c["ports"]) ports += (ports.empty() ? "" : ",") + p["protocol"].get<std::string>() + ":" +
                                                   p["host_address"].get<std::string>() + ":" + p["host_port"].dump() + ":" + p["vm_port"].dump();
        r.insert(r.end(), {c["vcpu"].dump(), c["memory"].dump() + "MB", c["disk_size"].dump() + "GB", jstr(c, "image"), ports});
      }
      rows.push_back(r);
    }
    std::vector<std::string> h{"VM ID", "App ID", "Name", "Status", "Uptime"};
    if (ls_verbose) h.insert(h.end(), {"vCPU", "Memory", "Disk", "Image", "Ports"});
    print_table(h, rows);
    return 0;
  }
  if (info->parsed()) {
    Json r = call("GetInfo", Json{{"id", vm_id}});
    if (!r.value("found", false)) die("VM " + vm_id + " not found");
    const auto& v = r["info"];
    if (info_json) {
      std::cout << v.dump(2) << "\n";
      return 0;
    }
    const auto& c = v["configuration"];
    std::cout << "ID:            " << jstr(v, "id") << "\nName:          " << jstr(v, "name")
              << "\nStatus:        " << jstr(v, "status") << "\nUptime:        " << jstr(v, "uptime")
              << "\nApp ID:        " << jstr(v, "app_id") << "\nInstance ID:   " << jstr(v, "instance_id")
              << "\nImage:         " << jstr(c, "image") << " (" << jstr(v, "image_version") << ")"
              << "\nvCPU:          " << jstr(c, "vcpu") << "\nMemory:        " << jstr(c, "memory") << " MB"
              << "\nDisk:          " << jstr(c, "disk_size") << " GB\nBoot progress: " << jstr(v, "boot_progress")
              << "\nBoot error:    " << jstr(v, "boot_error") << "\nPorts:\n";
    for (const auto& p : c["ports"])
      std::cout << "  " << jstr(p, "protocol") << ":" << jstr(p, "host_address") << ":" << jstr(p, "host_port") << " -> "
                << jstr(p, "vm_port") << "\n";
    return 0;
  }
  if (start->parsed()) {
    call("StartVm", Json{{"id", vm_id}});
    std::cout << "Started VM " << vm_id << "\n";
    return 0;
  }
  if (stop->parsed()) {
    call(force ? "StopVm" : "ShutdownVm", Json{{"id", vm_id}});
    std::cout << "Stopped VM " << vm_id << "\n";
    return 0;
  }
  if (remove->parsed()) {
    call("RemoveVm", Json{{"id", vm_id}});
    std::cout << "Removed VM " << vm_id << "\n";
    return 0;
  }
  if (logs->parsed()) {
    std::string id = !log_id.empty() ? log_id : vm_id;
    if (id.empty()) die("logs: give a VM id or name (positional or --id)");
    std::string url = http_url("/logs?id=" + url_encode(id) + "&follow=" + (follow ? "true" : "false") +
                               "&ansi=false&lines=" + std::to_string(log_lines));
    rpc::ClientOptions opts;
    if (follow) {
      return follow_stream(url);
    }
    opts.timeout = std::chrono::seconds(30);
    auto r = rpc::http_request("GET", url, "", opts);
    if (!r) die("fetching logs of " + id + ": " + r.error().message);
    if (r->status != 200) {
      std::string msg = r->body;
      try { msg = Json::parse(r->body).value("error", r->body); } catch (...) {}
      die(msg);
    }
    std::cout << r->body << std::flush;
    return 0;
  }
  if (compose->parsed()) {
    co.docker_compose = read_or_die(docker_compose_file, "docker compose file");
    if (!prelaunch_file.empty()) co.pre_launch_script = read_or_die(prelaunch_file, "pre-launch script");
    if (!key_provider_c.empty()) co.key_provider = key_provider_c;
    if (!env_file_c.empty()) {
      if (!co.kms) die("--env-file requires --kms (environment variables are encrypted to the KMS)");
      auto env = vmm::parse_env_file(read_or_die(env_file_c, "env file"));
      if (!env) die(env.error().message);
      for (const auto& [k, v] : *env) co.allowed_envs.push_back(k);
    }
    if (!swap_c.empty()) {
      auto mb = vmm::parse_memory_mb(swap_c);
      if (!mb) die("--swap: " + mb.error().message);
      co.swap_size = *mb * 1024 * 1024;
    }
    if (event_log_version) co.event_log_version = event_log_version;
    auto text = vmm::render_app_compose(co);
    if (!text) die(text.error().message);
    if (auto s = dstack::write_file_atomic(output, *text); !s) die("writing " + output + ": " + s.error().message);
    std::cout << "App compose file created at: " << output << "\n";
    std::cout << "Compose hash: " << vmm::compose_hash(*text) << "\n";
    return 0;
  }
  if (deploy->parsed()) {
    std::string compose_text = read_or_die(d_compose, "compose file");
    auto cinfo = vmm::validate_app_compose(compose_text);
    if (!cinfo) die(d_compose + ": " + cinfo.error().message);
    auto vcpu = vmm::parse_memory_mb(d_vcpu);  // plain integer
    auto mem = vmm::parse_memory_mb(d_memory);
    auto disk = vmm::parse_disk_gb(d_disk);
    if (!vcpu || *vcpu == 0) die("--vcpu must be a positive integer");
    if (!mem) die("--memory: " + mem.error().message);
    if (!disk) die("--disk: " + disk.error().message);
    Json req{{"name", d_name}, {"image", d_image}, {"compose_file", compose_text}, {"vcpu", *vcpu},
             {"memory", *mem}, {"disk_size", *disk}, {"ports", Json::array()}, {"stopped", d_stopped},
             {"no_tee", d_no_tee}, {"hugepages", d_hugepages}, {"pin_numa", d_pin_numa},
             {"kms_urls", d_kms_urls}, {"gateway_urls", d_gateway_urls}};
    for (const auto& p : d_ports) {
      auto pm = vmm::parse_port_spec(p);
      if (!pm) die(pm.error().message);
      req["ports"].push_back(vmm::port_to_rpc(*pm));
    }
    std::string app_id = d_app_id;
    if (app_id.rfind("0x", 0) == 0 || app_id.rfind("0X", 0) == 0) app_id = app_id.substr(2);
    for (auto& ch : app_id) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    if (!app_id.empty()) req["app_id"] = app_id;
    if (!d_user_config.empty()) req["user_config"] = read_or_die(d_user_config, "user config");
    if (!d_simulated_tee.empty()) req["simulated_tee"] = d_simulated_tee;
    if (!d_env_file.empty()) {
      if (cinfo->key_provider != "kms")
        die("--env-file needs a compose with kms_enabled (create it with `compose --kms --env-file ...`)");
      // KMS given on the command line: ask it directly; else the VMM proxies to its configured KMS.
      std::string kms = !d_kms_encrypt_url.empty() ? d_kms_encrypt_url : d_kms_urls.empty() ? "" : d_kms_urls.front();
      auto env = vmm::parse_env_file(read_or_die(d_env_file, "env file"));
      if (!env) die(env.error().message);
      req["encrypted_env"] = encrypt_env(*env, app_id.empty() ? vmm::app_id_of(compose_text) : app_id, kms);
    }
    Json r = call("CreateVm", req);
    std::cout << "Created VM with ID: " << jstr(r, "id") << "\n";
    return 0;
  }
  if (lsimage->parsed()) {
    Json r = call("ListImages");
    if (img_json) {
      std::cout << r["images"].dump(2) << "\n";
      return 0;
    }
    std::vector<std::vector<std::string>> rows;
    for (const auto& i : r["images"]) rows.push_back({jstr(i, "name"), jstr(i, "version"), i.value("is_dev", false) ? "yes" : "no"});
    print_table({"Name", "Version", "Dev"}, rows);
    return 0;
  }
  if (upd_compose->parsed()) {
    std::string text = read_or_die(upd_file, "compose file");
    call("UpgradeApp", Json{{"id", vm_id}, {"compose_file", text}});
    std::cout << "Updated app compose of " << vm_id << " (takes effect at the next start); compose hash "
              << vmm::compose_hash(text) << "\n";
    return 0;
  }
  if (upd_ports->parsed()) {
    Json ports = Json::array();
    for (const auto& p : up_ports) {
      auto pm = vmm::parse_port_spec(p);
      if (!pm) die(pm.error().message);
      ports.push_back(vmm::port_to_rpc(*pm));
    }
    call("UpgradeApp", Json{{"id", vm_id}, {"update_ports", true}, {"ports", ports}});
    std::cout << "Updated ports of " << vm_id << " (takes effect at the next start)\n";
    return 0;
  }
  return 0;
}
