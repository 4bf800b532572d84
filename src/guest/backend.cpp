#include "guest/backend.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <thread>

#include "attest/sim/platform.h"
#include "base/fs.h"
#include "crypto/hash.h"

namespace dstack::guest {

namespace {

Bytes default_mr_td() { return crypto::sha384(as_view("dstack-cpp simulated MRTD")); }

Status check48(const Bytes& b, const char* what) {
  if (!b.empty() && b.size() != 48) return make_error(std::string(what) + " must be 48 bytes (96 hex digits)");
  return Status::Ok();
}

class SimBackend : public TdxBackend {
 public:
  SimBackend(attest::sim::SimPlatform p, SimBackendConfig cfg) : platform_(std::move(p)), cfg_(std::move(cfg)) {}

  Status init() {
    TRY(check48(cfg_.mr_td, "simulator mrtd"));
    TRY(check48(cfg_.mr_config_id, "simulator mr_config_id"));
    // Synthetic boot events: one per RTMR0..2 that has no explicit value.
    std::optional<Bytes>* rt[3] = {&cfg_.rtmr0, &cfg_.rtmr1, &cfg_.rtmr2};
    for (uint32_t i = 0; i < 3; ++i) {
      if (rt[i]->has_value()) {
        TRY(check48(**rt[i], "simulator rtmr"));
        rtmr_[i] = **rt[i];
        continue;
      }
      attest::TdxEvent ev;
      ev.imr = i;
      ev.event_type = attest::kEvEventTag;
      ev.event = "sim-boot-rtmr" + std::to_string(i);
      ev.event_payload = to_bytes("dstack-cpp simulated boot measurement of RTMR" + std::to_string(i));
      ev.digest = crypto::sha384(ev.event_payload);
      rtmr_[i] = attest::replay_digests({ev.digest});
      boot_events_.push_back(std::move(ev));
    }
    rtmr3_ = Bytes(48, 0);
    if (file_exists(cfg_.state_file)) {
      TRY_ASSIGN(std::string s, read_file(cfg_.state_file));
      while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
      auto b = from_hex(s);
      if (!b.ok() || b->size() != 48) {
        return make_error("simulator RTMR3 state file " + cfg_.state_file + " is corrupt (expected 96 hex digits)");
      }
      rtmr3_ = *b;
    }
    return Status::Ok();
  }

  std::string name() const override { return "simulator"; }

  Result<Bytes> get_quote(ByteView rd) override {
    attest::sim::TdQuoteInput in;
    in.report_data.assign(rd.begin(), rd.end());
    in.mr_td = cfg_.mr_td.empty() ? default_mr_td() : cfg_.mr_td;
    in.mr_config_id = cfg_.mr_config_id;
    in.mr_owner = cfg_.mr_owner;
    in.mr_owner_config = cfg_.mr_owner_config;
    in.rtmr0 = rtmr_[0];
    in.rtmr1 = rtmr_[1];
    in.rtmr2 = rtmr_[2];
    {
      std::lock_guard<std::mutex> lk(mu_);
      in.rtmr3 = rtmr3_;
    }
    return platform_.quote_tdx(in);
  }

  Status extend_rtmr3(ByteView digest) override {
    if (digest.size() != 48) return make_error("RTMR3 extension needs a 48-byte SHA-384 digest");
    std::lock_guard<std::mutex> lk(mu_);
    Bytes next = attest::rtmr_extend(rtmr3_, digest);
    TRY(write_file_atomic(cfg_.state_file, to_hex(next) + "\n", 0600));
    rtmr3_ = std::move(next);
    return Status::Ok();
  }

  Result<std::vector<attest::TdxEvent>> boot_event_log() override { return boot_events_; }
  Bytes ppid() const override { return platform_.ppid(); }

 private:
  attest::sim::SimPlatform platform_;
  SimBackendConfig cfg_;
  Bytes rtmr_[3];
  std::vector<attest::TdxEvent> boot_events_;
  std::mutex mu_;
  Bytes rtmr3_;
};

Result<std::string> read_small(const std::string& path) {
  auto r = read_file(path);
  if (!r.ok()) return r.error();
  std::string s = *r;
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

Status write_all(const std::string& path, ByteView data) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return make_error("cannot open " + path + " for writing: " + std::strerror(errno));
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = ::write(fd, data.data() + off, data.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      ::close(fd);
      return make_error("writing " + path + " failed: " + std::strerror(e));
    }
    off += static_cast<size_t>(n);
  }
  if (::close(fd) != 0) return make_error("closing " + path + " failed: " + std::strerror(errno));
  return Status::Ok();
}

class RealBackend : public TdxBackend {
 public:
  explicit RealBackend(RealBackendConfig cfg) : cfg_(std::move(cfg)) {}
  std::string name() const override { return "tdx"; }

  Result<Bytes> get_quote(ByteView rd) override {
    std::lock_guard<std::mutex> lk(mu_);
    std::string entry = cfg_.tsm_report_dir + "/dstack-" + std::to_string(::getpid()) + "-" +
                        std::to_string(counter_++);
    if (::mkdir(entry.c_str(), 0700) != 0 && errno != EEXIST) {
      return make_error("configfs-tsm: cannot create report entry " + entry + ": " + std::strerror(errno) +
                        " (is the tdx_guest driver loaded and configfs mounted?)");
    }
    struct Cleanup {
      std::string p;
      ~Cleanup() { ::rmdir(p.c_str()); }
    } cleanup{entry};
    auto gen_before = read_generation(entry);
    TRY(write_all(entry + "/inblob", rd));
    // Read outblob (the kernel generates the quote on read; a fake tree may create it asynchronously).
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(cfg_.quote_timeout_ms);
    Bytes quote;
    while (true) {
      auto r = read_file_bytes(entry + "/outblob");
      if (r.ok() && !r->empty()) {
        quote = std::move(*r);
        break;
      }
      if (std::chrono::steady_clock::now() > deadline) {
        return make_error("configfs-tsm: no quote in " + entry + "/outblob within " +
                          std::to_string(cfg_.quote_timeout_ms) + " ms (check the QGS on the host, vsock port 4050)");
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    auto gen_after = read_generation(entry);
    if (gen_after.ok()) {
      uint64_t expect = (gen_before.ok() ? *gen_before : 0) + 1;
      if (*gen_after != expect) {
        return make_error("configfs-tsm: report generation changed concurrently (expected " +
                          std::to_string(expect) + ", got " + std::to_string(*gen_after) +
                          "); another writer used entry " + entry);
      }
    }
    return quote;
  }

  Status extend_rtmr3(ByteView digest) override {
    if (digest.size() != 48) return make_error("RTMR3 extension needs a 48-byte SHA-384 digest");
    auto st = write_all(cfg_.rtmr3_file, digest);
    if (!st.ok()) return st.error().wrap("extending RTMR3 via " + cfg_.rtmr3_file);
    return Status::Ok();
  }

  Result<std::vector<attest::TdxEvent>> boot_event_log() override {
    // CCEL parsing is not implemented: boot-time events are not reported on the real backend.
    return std::vector<attest::TdxEvent>{};
  }

 private:
  Result<uint64_t> read_generation(const std::string& entry) {
    auto s = read_small(entry + "/generation");
    if (!s.ok()) return s.error();
    try {
      return static_cast<uint64_t>(std::stoull(*s));
    } catch (...) {
      return make_error("configfs-tsm: generation is not a number");
    }
  }

  RealBackendConfig cfg_;
  std::mutex mu_;
  uint64_t counter_ = 0;
};

}  // namespace

Result<std::unique_ptr<TdxBackend>> make_sim_backend(const SimBackendConfig& cfg) {
  auto p = attest::sim::SimPlatform::load_or_create(cfg.platform_dir);
  if (!p.ok()) return p.error().wrap("loading the simulated TDX platform from " + cfg.platform_dir);
  auto b = std::make_unique<SimBackend>(std::move(*p), cfg);
  TRY(b->init());
  return std::unique_ptr<TdxBackend>(std::move(b));
}

Result<std::unique_ptr<TdxBackend>> make_real_backend(const RealBackendConfig& cfg) {
  struct stat st{};
  if (::stat(cfg.tsm_report_dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return make_error("TDX backend: " + cfg.tsm_report_dir +
                      " does not exist (no configfs-tsm: not a TDX guest, or configfs not mounted)");
  }
  return std::unique_ptr<TdxBackend>(std::make_unique<RealBackend>(cfg));
}

}  // namespace dstack::guest
