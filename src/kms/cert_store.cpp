#include "kms/cert_store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "base/fs.h"

namespace fs = std::filesystem;

namespace dstack::kms {

namespace {
const char* kCommitMarker = "COMMIT";

// Publish order: private keys, then certificates, then the domain, then bootstrap-info.json.
const std::vector<std::string> kPublishOrder = {"root-ca.key", "tmp-ca.key", "rpc.key",  "root-k256.key",
                                                "root-ca.crt", "tmp-ca.crt", "rpc.crt",  "rpc-domain",
                                                "bootstrap-info.json"};

void fsync_dir(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

Status call(const WriteHook& hook, const std::string& step) { return hook ? hook(step) : Status::Ok(); }

size_t order_of(const std::string& name) {
  auto it = std::find(kPublishOrder.begin(), kPublishOrder.end(), name);
  return static_cast<size_t>(it - kPublishOrder.begin());
}
}  // namespace

const std::vector<std::string>& key_files() {
  static const std::vector<std::string> k = {"root-ca.key", "tmp-ca.key", "rpc.key",   "root-k256.key",
                                             "root-ca.crt", "tmp-ca.crt", "rpc.crt"};
  return k;
}

Status CertStore::recover(const WriteHook& hook) {
  std::error_code ec;
  if (!fs::exists(dir_, ec)) return Status::Ok();
  // Stray temp files of write_file_atomic ("<artifact>.tmp.<pid>") from a crash mid-write.
  for (const auto& e : fs::directory_iterator(dir_, ec)) {
    std::string n = e.path().filename().string();
    for (const auto& a : kPublishOrder)
      if (n.rfind(a + ".tmp.", 0) == 0) {
        spdlog::warn("removing leftover temp file {}", e.path().string());
        fs::remove(e.path(), ec);
      }
  }
  std::string staging = path(kStagingDir);
  if (!fs::exists(staging, ec)) return Status::Ok();
  if (fs::exists(staging + "/" + kCommitMarker, ec)) {
    spdlog::warn("resuming an interrupted bootstrap commit from {}", staging);
    for (const auto& name : kPublishOrder) {
      std::string src = staging + "/" + name;
      if (!fs::exists(src, ec)) continue;  // already published (or not part of this set)
      if (::rename(src.c_str(), path(name).c_str()) != 0)
        return make_error("cannot move " + src + " to " + path(name) + ": " + std::strerror(errno) +
                          " (check permissions of " + dir_ + ")");
      fsync_dir(dir_);
      TRY(call(hook, "commit:" + name));
    }
    if (::unlink((staging + "/" + kCommitMarker).c_str()) != 0 && errno != ENOENT)
      return make_error("cannot remove " + staging + "/" + kCommitMarker + ": " + std::strerror(errno));
    TRY(call(hook, "commit:marker-removed"));
  } else {
    spdlog::warn("discarding incomplete bootstrap staging directory {} (nothing was published)", staging);
  }
  fs::remove_all(staging, ec);
  if (ec) return make_error("cannot remove " + staging + ": " + ec.message() + "; remove it by hand");
  fsync_dir(dir_);
  return Status::Ok();
}

Result<CertDirState> CertStore::inspect() const {
  std::error_code ec;
  if (fs::exists(path(kStagingDir), ec))
    return make_error("cert_dir " + dir_ + " holds an interrupted bootstrap in " + path(kStagingDir) +
                      "; restart to let the KMS recover it, or remove that directory");
  std::vector<std::string> present, missing;
  for (const auto& k : key_files()) (file_exists(path(k)) ? present : missing).push_back(k);
  bool info = file_exists(path("bootstrap-info.json"));
  if (missing.empty()) return CertDirState::KeysExist;
  if (present.empty() && !info) return CertDirState::Empty;
  auto join = [](const std::vector<std::string>& v) {
    std::string s;
    for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
    return s;
  };
  if (info) present.push_back("bootstrap-info.json");
  std::string rm;
  for (const auto& p : present) rm += " " + path(p);
  return make_error("cert_dir " + dir_ + " is half-bootstrapped: present [" + join(present) + "], missing [" +
                    join(missing) + "]. Restore the missing files from a backup, or remove the present ones (rm" +
                    rm + ") so that the KMS bootstraps new keys.");
}

Status CertStore::commit(const std::vector<Artifact>& artifacts, const WriteHook& hook) {
  TRY(make_dirs(dir_, 0755));
  TRY_ASSIGN(CertDirState st, inspect());
  if (st != CertDirState::Empty) return make_error("cert_dir " + dir_ + " already holds keys; refusing to overwrite");
  for (const auto& a : artifacts)
    if (file_exists(path(a.name)))
      return make_error("cert_dir " + dir_ + " already holds " + a.name + "; remove it before bootstrapping");
  std::string staging = path(kStagingDir);
  std::error_code ec;
  fs::remove_all(staging, ec);
  if (::mkdir(staging.c_str(), 0700) != 0) return make_error("cannot create " + staging + ": " + std::strerror(errno));
  fsync_dir(dir_);
  std::vector<Artifact> sorted = artifacts;
  std::stable_sort(sorted.begin(), sorted.end(),
                   [](const Artifact& a, const Artifact& b) { return order_of(a.name) < order_of(b.name); });
  for (const auto& a : sorted) {
    if (order_of(a.name) >= kPublishOrder.size()) return make_error("unknown cert_dir artifact " + a.name);
    TRY(write_file_atomic(staging + "/" + a.name, a.content, a.mode));
    TRY(call(hook, "stage:" + a.name));
  }
  TRY(write_file_atomic(staging + "/" + kCommitMarker, std::string_view("complete\n"), 0600));
  TRY(call(hook, "stage:" + std::string(kCommitMarker)));
  return recover(hook);
}

Result<RootKeys> CertStore::load() const {
  auto rd = [&](const std::string& n) -> Result<std::string> {
    auto r = read_file(path(n));
    if (!r.ok()) return r.error().wrap("loading KMS keys");
    return r;
  };
  auto key = [&](const std::string& n) -> Result<crypto::P256Key> {
    TRY_ASSIGN(std::string pem, rd(n));
    auto k = crypto::P256Key::from_pem(pem);
    if (!k.ok()) return k.error().wrap(path(n) + " is not a P-256 private key PEM");
    return k;
  };
  auto cert = [&](const std::string& n, const crypto::P256Key& k) -> Result<crypto::Certificate> {
    TRY_ASSIGN(std::string pem, rd(n));
    auto c = crypto::Certificate::from_pem(pem);
    if (!c.ok()) return c.error().wrap(path(n) + " is not a PEM certificate");
    if (c->spki_der() != k.spki_der())
      return make_error(path(n) + " does not match its private key; remove it to have it reissued");
    return c;
  };
  TRY_ASSIGN(auto ca_key, key("root-ca.key"));
  TRY_ASSIGN(auto ca_cert, cert("root-ca.crt", ca_key));
  TRY_ASSIGN(auto tmp_key, key("tmp-ca.key"));
  TRY_ASSIGN(auto tmp_cert, cert("tmp-ca.crt", tmp_key));
  TRY_ASSIGN(auto rpc_key, key("rpc.key"));
  TRY_ASSIGN(std::string k256_raw, rd("root-k256.key"));
  if (k256_raw.size() != 32)
    return make_error(path("root-k256.key") + " must hold exactly 32 raw bytes, has " +
                      std::to_string(k256_raw.size()));
  auto k256 = crypto::K256Key::from_secret(as_view(k256_raw));
  if (!k256.ok()) return k256.error().wrap(path("root-k256.key"));
  return RootKeys{ca_key, ca_cert, tmp_key, tmp_cert, rpc_key, *k256};
}

Result<std::string> CertStore::read_domain() const {
  TRY_ASSIGN(std::string d, read_file(path("rpc-domain")));
  while (!d.empty() && (d.back() == '\n' || d.back() == '\r' || d.back() == ' ')) d.pop_back();
  return d;
}

std::string bootstrap_info_json(const BootstrapInfo& b) {
  return nlohmann::json{{"ca_pubkey", to_hex(b.ca_pubkey)},
                        {"k256_pubkey", to_hex(b.k256_pubkey)},
                        {"attestation", to_hex(b.attestation)}}
      .dump();
}

Result<BootstrapInfo> parse_bootstrap_info(const std::string& text) {
  auto j = nlohmann::json::parse(text, nullptr, false);
  if (!j.is_object()) return make_error("bootstrap-info.json is not a JSON object");
  BootstrapInfo b;
  auto field = [&](const char* k, Bytes& out) -> Status {
    if (!j.contains(k) || !j[k].is_string()) return make_error(std::string("bootstrap-info.json lacks ") + k);
    auto r = from_hex(j[k].get<std::string>());
    if (!r.ok()) return r.error().wrap(std::string("bootstrap-info.json ") + k);
    out = std::move(r).value();
    return Status::Ok();
  };
  TRY(field("ca_pubkey", b.ca_pubkey));
  TRY(field("k256_pubkey", b.k256_pubkey));
  TRY(field("attestation", b.attestation));
  return b;
}

Result<std::vector<Artifact>> make_artifacts(const RootKeys& k, const std::string& domain,
                                             const std::optional<BootstrapInfo>& info) {
  TRY_ASSIGN(auto rpc_cert, make_rpc_cert(k.rpc_key, domain, k.ca_key, k.ca_cert, std::nullopt));
  std::vector<Artifact> a = {
      {"root-ca.key", k.ca_key.to_pkcs8_pem(), 0600},
      {"tmp-ca.key", k.tmp_ca_key.to_pkcs8_pem(), 0600},
      {"rpc.key", k.rpc_key.to_pkcs8_pem(), 0600},
      {"root-k256.key", to_string(k.k256.secret()), 0600},
      {"root-ca.crt", k.ca_cert.to_pem(), 0644},
      {"tmp-ca.crt", k.tmp_ca_cert.to_pem(), 0644},
      {"rpc.crt", rpc_cert.to_pem(), 0644},
      {"rpc-domain", domain, 0644},
  };
  if (info) a.push_back({"bootstrap-info.json", bootstrap_info_json(*info), 0644});
  return a;
}

}  // namespace dstack::kms
