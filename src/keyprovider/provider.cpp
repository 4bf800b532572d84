#include "keyprovider/provider.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <spdlog/spdlog.h>
#include <toml++/toml.h>

#include "base/fs.h"
#include "crypto/ecdh.h"
#include "crypto/hash.h"
#include "keyprovider/protocol.h"

namespace dstack::keyprovider {

Bytes provider_mr_enclave() { return crypto::sha256(as_view(kMrEnclaveLabel)); }
Bytes provider_mr_signer() { return crypto::sha256(as_view(kMrSignerLabel)); }

Bytes derive_sealing_key(ByteView sealing_key, const attest::TdReport& td) {
  Bytes material = concat({sealing_key, td.mr_td, td.rtmr0, td.rtmr1, td.rtmr2, td.rtmr3});
  Bytes key = crypto::sha256(material);
  secure_wipe(material);
  return key;
}

Result<Bytes> load_or_create_sealing_key(const std::string& path) {
  if (path.empty()) return make_error("sealing_key_file is not set");
  struct stat st;
  if (::stat(path.c_str(), &st) == 0) {
    if (!S_ISREG(st.st_mode)) return make_error("sealing key " + path + " is not a regular file");
    if (st.st_mode & 077)
      return make_error("sealing key " + path + " is accessible by group/others (mode " +
                        std::to_string(st.st_mode & 0777) + " octal " + [&] {
                          char b[8];
                          std::snprintf(b, sizeof b, "%03o", st.st_mode & 0777);
                          return std::string(b);
                        }() + "); run chmod 600 on it");
    TRY_ASSIGN(Bytes key, read_file_bytes(path));
    if (key.size() != 32) {
      size_t n = key.size();
      secure_wipe(key);
      return make_error("sealing key " + path + " has " + std::to_string(n) +
                        " bytes, expected 32 (refusing to overwrite it: restore the right file)");
    }
    return key;
  }
  if (errno != ENOENT) return make_error("cannot stat sealing key " + path + ": " + std::strerror(errno));
  auto parent = std::filesystem::path(path).parent_path();
  if (!parent.empty()) TRY(make_dirs(parent.string(), 0700));
  Bytes key = crypto::random_bytes(32);
  TRY(write_file_atomic(path, ByteView(key), 0600));
  spdlog::info("created a new sealing key at {} (0600)", path);
  return key;
}

Result<std::pair<std::string, uint16_t>> parse_listen(const std::string& addr) {
  auto pos = addr.rfind(':');
  if (pos == std::string::npos || pos + 1 >= addr.size())
    return make_error("listen address '" + addr + "' must be host:port (e.g. 127.0.0.1:3443)");
  std::string host = addr.substr(0, pos);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  std::string ps = addr.substr(pos + 1);
  unsigned long port = 0;
  for (char c : ps) {
    if (c < '0' || c > '9') return make_error("listen address '" + addr + "': port is not a number");
    port = port * 10 + static_cast<unsigned long>(c - '0');
    if (port > 65535) return make_error("listen address '" + addr + "': port out of range");
  }
  if (host.empty()) host = "0.0.0.0";
  return std::make_pair(host, static_cast<uint16_t>(port));
}

Result<ProviderConfig> load_config(const std::string& path) {
  ProviderConfig c;
  TRY_ASSIGN(std::string text, read_file(path));
  toml::table t;
  try {
    t = toml::parse(text, path);
  } catch (const toml::parse_error& e) {
    return make_error("invalid TOML in " + path + ": " + std::string(e.description()));
  }
  auto str = [&](toml::node_view<toml::node> n, std::string& out) {
    if (auto v = n.value<std::string>()) out = *v;
  };
  auto boolean = [&](toml::node_view<toml::node> n, bool& out) {
    if (auto v = n.value<bool>()) out = *v;
  };
  str(t["listen"], c.listen);
  str(t["sealing_key_file"], c.sealing_key_file);
  str(t["sim_platform_dir"], c.sim_platform_dir);
  str(t["log_level"], c.log_level);
  if (auto v = t["max_connections"].value<int64_t>()) c.max_connections = static_cast<int>(*v);
  if (auto v = t["io_timeout_secs"].value<int64_t>()) c.io_timeout_ms = static_cast<int>(*v * 1000);
  str(t["trust"]["collateral"], c.collateral_file);
  boolean(t["trust"]["trust_sim_root"], c.trust_sim_root);
  boolean(t["trust"]["trust_intel_root"], c.trust_intel_root);
  boolean(t["trust"]["allow_debug"], c.allow_debug);
  if (auto* arr = t["trust"]["root_ca"].as_array()) {
    for (auto& e : *arr) {
      auto s = e.value<std::string>();
      if (!s) return make_error(path + ": trust.root_ca must be a list of PEM file paths");
      c.root_ca_files.push_back(*s);
    }
  }
  if (c.max_connections < 1 || c.max_connections > 1024)
    return make_error(path + ": max_connections must be 1..1024");
  if (c.io_timeout_ms < 1000) return make_error(path + ": io_timeout_secs must be >= 1");
  return c;
}

// ---------------------------------------------------------------------------------------------------------

Result<std::shared_ptr<KeyProvider>> KeyProvider::create(const ProviderConfig& cfg) {
  if (cfg.sim_platform_dir.empty())
    return make_error(
        "sim_platform_dir is not set: this key provider quotes itself with the simulated DCAP platform (SGX is not "
        "available here); set --sim-platform-dir / sim_platform_dir");
  auto platform = attest::sim::SimPlatform::load(cfg.sim_platform_dir);
  if (!platform) return platform.error().wrap("loading the simulated platform from " + cfg.sim_platform_dir);

  attest::TrustOptions trust;
  trust.trust_intel_root = cfg.trust_intel_root;
  trust.allow_debug = cfg.allow_debug;
  if (cfg.trust_sim_root) trust.extra_root_pems.push_back(platform->root_ca_pem());
  for (const auto& f : cfg.root_ca_files) {
    auto pem = read_file(f);
    if (!pem) return pem.error().wrap("reading trusted root CA");
    trust.extra_root_pems.push_back(*pem);
  }
  if (!trust.trust_intel_root && trust.extra_root_pems.empty())
    return make_error("no trusted root CA for TDX quotes: enable trust_intel_root, trust_sim_root or add root_ca");

  std::shared_ptr<KeyProvider> kp(new KeyProvider(std::move(*platform), trust));
  if (!cfg.collateral_file.empty()) {
    auto text = read_file(cfg.collateral_file);
    if (!text) return text.error().wrap("reading TDX collateral");
    auto col = attest::parse_collateral_json(*text);
    if (!col) return col.error().wrap("parsing TDX collateral " + cfg.collateral_file);
    kp->collateral_ = std::move(*col);
    kp->fixed_collateral_ = true;
  }
  auto key = load_or_create_sealing_key(cfg.sealing_key_file);
  if (!key) return key.error();
  kp->sealing_key_ = std::move(*key);

  // Our own quote with empty report data: its QE ID identifies the platform (spec §12 "same qeid").
  attest::sim::SgxQuoteInput in;
  in.mr_enclave = provider_mr_enclave();
  in.mr_signer = provider_mr_signer();
  auto own = kp->platform_.quote_sgx(in);
  if (!own) return own.error().wrap("producing the provider's own SGX quote");
  auto parsed = attest::parse_quote(*own);
  if (!parsed) return parsed.error().wrap("parsing the provider's own SGX quote");
  kp->qe_id_.assign(parsed->header.user_data.begin(), parsed->header.user_data.begin() + 16);
  spdlog::info("key provider ready: MRENCLAVE {} QE ID {} platform {}", to_hex(provider_mr_enclave()),
               to_hex(kp->qe_id_), cfg.sim_platform_dir);
  return kp;
}

Result<attest::Collateral> KeyProvider::tdx_collateral(int64_t now) {
  std::lock_guard<std::mutex> lk(mu_);
  if (fixed_collateral_) return collateral_;
  // Regenerate the simulated platform's collateral daily (its validity window is now-1d .. now+30d).
  if (collateral_made_ == 0 || now < collateral_made_ || now - collateral_made_ > 86400) {
    TRY_ASSIGN(std::string json, platform_.tdx_collateral_json(now));
    TRY_ASSIGN(collateral_, attest::parse_collateral_json(json));
    collateral_made_ = now;
  }
  return collateral_;
}

Result<SealingKeyResponse> KeyProvider::handle(ByteView tdx_quote, int64_t now_unix) {
  int64_t now = now_unix ? now_unix : static_cast<int64_t>(std::time(nullptr));
  TRY_ASSIGN(attest::Collateral col, tdx_collateral(now));
  auto verified = verifier_.verify(tdx_quote, col, now);
  if (!verified) return verified.error().wrap("TDX quote rejected");
  const attest::TdReport* td = verified->td_report();
  if (!td) return make_error("expected a TDX quote, got " + verified->quote.tee_type_name());
  ByteView qe(verified->quote.header.user_data.data(), 16);
  if (!std::equal(qe.begin(), qe.end(), qe_id_.begin(), qe_id_.end()))
    return make_error("TDX quote comes from another platform: QE ID " + to_hex(qe) + " != provider's " +
                      to_hex(qe_id_));

  Bytes derived = derive_sealing_key(sealing_key_, *td);
  ByteView pk(td->report_data.data(), 32);
  auto sealed = crypto::sealed_box_seal(pk, derived);
  secure_wipe(derived);
  if (!sealed) return sealed.error().wrap("sealing the key to report_data[0..32] (not a valid X25519 public key?)");

  attest::sim::SgxQuoteInput in;
  in.mr_enclave = provider_mr_enclave();
  in.mr_signer = provider_mr_signer();
  in.report_data = crypto::sha256(*sealed);
  in.report_data.resize(64, 0);
  auto pq = platform_.quote_sgx(in);
  if (!pq) return pq.error().wrap("producing the provider SGX quote");
  spdlog::info("sealing key issued: mr_td {}… rtmr3 {}… tcb {} pubkey {}", to_hex(ByteView(td->mr_td).first(8)),
               to_hex(ByteView(td->rtmr3).first(8)), verified->status, to_hex(pk));
  return SealingKeyResponse{std::move(*sealed), std::move(*pq)};
}

// ---------------------------------------------------------------------------------------------------------

Result<std::unique_ptr<Server>> Server::start(std::shared_ptr<KeyProvider> provider, const std::string& listen,
                                              int max_connections, int io_timeout_ms) {
  TRY_ASSIGN(auto hp, parse_listen(listen));
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV | AI_PASSIVE;
  addrinfo* res = nullptr;
  std::string service = std::to_string(hp.second);
  int rc = ::getaddrinfo(hp.first.c_str(), service.c_str(), &hints, &res);
  if (rc != 0) return make_error("cannot resolve listen address " + listen + ": " + ::gai_strerror(rc));
  int fd = ::socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    ::freeaddrinfo(res);
    return make_error(std::string("socket: ") + std::strerror(errno));
  }
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (::bind(fd, res->ai_addr, res->ai_addrlen) != 0 || ::listen(fd, 128) != 0) {
    std::string err = std::strerror(errno);
    ::freeaddrinfo(res);
    ::close(fd);
    return make_error("cannot listen on " + listen + ": " + err + " (another dstack-key-provider running?)");
  }
  ::freeaddrinfo(res);
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
  std::unique_ptr<Server> s(new Server());
  s->port_ = ntohs(ss.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port
                                            : reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
  if (::pipe2(s->wake_pipe_, O_CLOEXEC | O_NONBLOCK) != 0) {
    ::close(fd);
    return make_error(std::string("pipe: ") + std::strerror(errno));
  }
  s->provider_ = std::move(provider);
  s->listen_fd_ = fd;
  s->max_conn_ = max_connections;
  s->io_timeout_ms_ = io_timeout_ms;
  s->acceptor_ = std::thread([p = s.get()] { p->accept_loop(); });
  return s;
}

Server::~Server() { stop(); }

void Server::stop() {
  if (stopping_.exchange(true)) {
    if (acceptor_.joinable()) acceptor_.join();
    return;
  }
  if (wake_pipe_[1] >= 0) {
    char c = 1;
    [[maybe_unused]] auto n = ::write(wake_pipe_[1], &c, 1);
  }
  { std::lock_guard<std::mutex> lk(mu_); }  // no lost wakeup: the acceptor is either blocked or sees stopping_
  cv_.notify_all();
  if (acceptor_.joinable()) acceptor_.join();
  {
    std::unique_lock<std::mutex> lk(mu_);
    for (int fd : active_) ::shutdown(fd, SHUT_RDWR);
    cv_.wait(lk, [&] { return threads_ == 0; });
  }
  if (listen_fd_ >= 0) ::close(listen_fd_);
  for (int& p : wake_pipe_)
    if (p >= 0) ::close(p), p = -1;
  listen_fd_ = -1;
}

void Server::accept_loop() {
  while (!stopping_) {
    {
      std::unique_lock<std::mutex> lk(mu_);
      cv_.wait(lk, [&] { return stopping_ || threads_ < max_conn_; });
      if (stopping_) return;
    }
    pollfd p[2] = {{listen_fd_, POLLIN, 0}, {wake_pipe_[0], POLLIN, 0}};
    int r = ::poll(p, 2, -1);
    if (r < 0) {
      if (errno == EINTR) continue;
      spdlog::error("key provider: poll failed: {}", std::strerror(errno));
      return;
    }
    if (p[1].revents) return;
    if (!(p[0].revents & POLLIN)) continue;
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    int fd = ::accept4(listen_fd_, reinterpret_cast<sockaddr*>(&ss), &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno != EINTR && errno != EAGAIN && errno != ECONNABORTED)
        spdlog::warn("key provider: accept failed: {}", std::strerror(errno));
      if (errno == EMFILE || errno == ENFILE) std::this_thread::sleep_for(std::chrono::milliseconds(100));
      continue;
    }
    char host[INET6_ADDRSTRLEN + 8] = "?";
    char serv[16] = "?";
    ::getnameinfo(reinterpret_cast<sockaddr*>(&ss), len, host, sizeof host, serv, sizeof serv,
                  NI_NUMERICHOST | NI_NUMERICSERV);
    {
      std::lock_guard<std::mutex> lk(mu_);
      active_.insert(fd);
      ++threads_;
    }
    std::thread([this, fd, peer = std::string(host) + ":" + serv] { serve(fd, peer); }).detach();
  }
}

void Server::serve(int fd, std::string peer) {
  using detail::Clock;
  auto timeout = std::chrono::milliseconds(io_timeout_ms_);
  auto fail = [&](const std::string& msg) {
    spdlog::warn("key provider: request from {} refused: {}", peer, msg);
    // Best effort: tell the client why, then close.
    (void)detail::write_frame(fd, encode_error(msg), Clock::now() + std::min(timeout, std::chrono::milliseconds(5000)));
  };
  [&] {
    auto body = detail::read_frame(fd, Clock::now() + timeout);
    if (!body) return fail("reading request: " + body.error().message);
    auto quote = decode_request(*body);
    if (!quote) return fail(quote.error().message);
    auto resp = provider_->handle(*quote);
    if (!resp) return fail(resp.error().message);
    if (auto s = detail::write_frame(fd, encode_response(*resp), Clock::now() + timeout); !s)
      spdlog::warn("key provider: sending response to {} failed: {}", peer, s.error().message);
  }();
  {
    std::lock_guard<std::mutex> lk(mu_);
    active_.erase(fd);
    ::close(fd);
    --threads_;
    cv_.notify_all();  // under the lock: stop() may destroy *this as soon as threads_ reaches 0
  }
}

}  // namespace dstack::keyprovider
