#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>

#include "base/fs.h"
#include "kms/bootstrap.h"
#include "kms/cert_store.h"

using namespace dstack;
using namespace dstack::kms;
namespace fs = std::filesystem;

static std::string tmpdir() {
  char t[] = "/tmp/kmsstoreXXXXXX";
  return mkdtemp(t);
}

class FakeAttester : public Attester {
 public:
  Result<Bytes> attest(ByteView rd) override {
    calls++;
    Bytes b = {0xee};
    b.insert(b.end(), rd.begin(), rd.end());
    return b;
  }
  Result<std::string> vm_config() override { return std::string("{}"); }
  int calls = 0;
};

static mode_t mode_of(const std::string& p) {
  struct stat st;
  EXPECT_EQ(::stat(p.c_str(), &st), 0) << p;
  return st.st_mode & 0777;
}

TEST(CertStore, BootstrapWritesAllArtifacts) {
  std::string dir = tmpdir();
  CertStore store(dir);
  FakeAttester att;
  auto info = bootstrap_keys(store, "kms.example.com", &att);
  ASSERT_TRUE(info.ok()) << info.error().message;
  for (const char* f : {"root-ca.crt", "root-ca.key", "rpc.crt", "rpc.key", "tmp-ca.crt", "tmp-ca.key",
                        "root-k256.key", "bootstrap-info.json", "rpc-domain"})
    EXPECT_TRUE(file_exists(dir + "/" + f)) << f;
  for (const char* f : {"root-ca.key", "rpc.key", "tmp-ca.key", "root-k256.key"}) EXPECT_EQ(mode_of(dir + "/" + f), 0600u) << f;
  EXPECT_FALSE(fs::exists(dir + "/" + kStagingDir));
  EXPECT_EQ(read_file_bytes(dir + "/root-k256.key")->size(), 32u);
  EXPECT_EQ(*read_file(dir + "/rpc-domain"), "kms.example.com");
  EXPECT_EQ(read_file(dir + "/root-ca.key")->rfind("-----BEGIN PRIVATE KEY-----", 0), 0u);
  auto keys = store.load();
  ASSERT_TRUE(keys.ok()) << keys.error().message;
  auto bi = parse_bootstrap_info(*read_file(dir + "/bootstrap-info.json")).value();
  EXPECT_EQ(bi.ca_pubkey, keys->ca_key.spki_der());
  EXPECT_EQ(bi.ca_pubkey.size(), 91u);
  EXPECT_EQ(bi.k256_pubkey, keys->k256.public_compressed());
  Bytes want = {0xee};
  Bytes rd = bootstrap_report_data(bi.ca_pubkey, bi.k256_pubkey);
  want.insert(want.end(), rd.begin(), rd.end());
  EXPECT_EQ(bi.attestation, want);
  EXPECT_EQ(*store.inspect(), CertDirState::KeysExist);
  // A second bootstrap is refused and changes nothing.
  auto again = bootstrap_keys(store, "kms.example.com", &att);
  EXPECT_FALSE(again.ok());
  EXPECT_EQ(store.load()->k256.secret(), keys->k256.secret());
}

// Crash injection: abort after every single write/rename, then "restart" (recover + inspect) and check that
// the directory either completes to a consistent key set or is empty again, never serving half a set, and that
// public keys (certs, bootstrap-info.json) never exist without all private keys.
TEST(CertStore, CrashAfterEveryWriteIsRecoverable) {
  // Count the steps of a clean run.
  std::vector<std::string> steps;
  {
    std::string dir = tmpdir();
    CertStore s(dir);
    FakeAttester att;
    ASSERT_TRUE(bootstrap_keys(s, "kms.example.com", &att, [&](const std::string& st) {
                  steps.push_back(st);
                  return Status::Ok();
                }).ok());
  }
  ASSERT_GE(steps.size(), 19u);  // 9 staged files + marker + 9 renames + marker removal
  int completed = 0, discarded = 0;
  for (size_t crash_at = 0; crash_at < steps.size(); ++crash_at) {
    SCOPED_TRACE("crash after step " + steps[crash_at]);
    std::string dir = tmpdir();
    CertStore s(dir);
    FakeAttester att;
    size_t n = 0;
    auto r = bootstrap_keys(s, "kms.example.com", &att, [&](const std::string&) -> Status {
      if (n++ == crash_at) return make_error("injected crash");
      return Status::Ok();
    });
    ASSERT_FALSE(r.ok());
    // Invariant right after the crash: no public artifact without every private key.
    bool all_priv = true;
    for (const char* k : {"root-ca.key", "tmp-ca.key", "rpc.key", "root-k256.key"})
      all_priv = all_priv && file_exists(dir + "/" + k);
    for (const char* pub : {"root-ca.crt", "tmp-ca.crt", "rpc.crt", "bootstrap-info.json"})
      if (file_exists(dir + "/" + std::string(pub))) {
        EXPECT_TRUE(all_priv) << pub << " published before keys";
      }
    // A crashed dir never looks like a complete key set unless the staging marker was written.
    auto before = s.inspect();
    EXPECT_FALSE(before.ok() && *before == CertDirState::KeysExist && fs::exists(dir + "/" + kStagingDir));

    // Next start.
    CertStore s2(dir);
    ASSERT_TRUE(s2.recover().ok());
    auto st = s2.inspect();
    ASSERT_TRUE(st.ok()) << st.error().message;
    if (*st == CertDirState::KeysExist) {
      completed++;
      auto keys = s2.load();
      ASSERT_TRUE(keys.ok()) << keys.error().message;
      auto bi = parse_bootstrap_info(*read_file(dir + "/bootstrap-info.json"));
      ASSERT_TRUE(bi.ok());
      EXPECT_EQ(bi->ca_pubkey, keys->ca_key.spki_der());
      EXPECT_EQ(bi->k256_pubkey, keys->k256.public_compressed());
      EXPECT_EQ(*read_file(dir + "/rpc-domain"), "kms.example.com");
    } else {
      discarded++;
      for (const auto& e : fs::directory_iterator(dir)) ADD_FAILURE() << "left behind: " << e.path();
      FakeAttester att2;
      ASSERT_TRUE(bootstrap_keys(s2, "kms.example.com", &att2).ok());
      ASSERT_EQ(*s2.inspect(), CertDirState::KeysExist);
    }
    EXPECT_FALSE(fs::exists(dir + "/" + kStagingDir));
  }
  EXPECT_GT(completed, 0);
  EXPECT_GT(discarded, 0);
}

TEST(CertStore, ForeignHalfStateIsRefusedNamingFiles) {
  std::string dir = tmpdir();
  CertStore store(dir);
  FakeAttester att;
  ASSERT_TRUE(bootstrap_keys(store, "kms.example.com", &att).ok());
  fs::remove(dir + "/root-k256.key");
  ASSERT_TRUE(store.recover().ok());
  auto st = store.inspect();
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.error().message.find("root-k256.key"), std::string::npos) << st.error().message;
  EXPECT_NE(st.error().message.find(dir + "/root-ca.key"), std::string::npos) << st.error().message;
  // Only bootstrap-info.json present: refused too (pubkeys without keys).
  std::string d2 = tmpdir();
  ASSERT_TRUE(write_file_atomic(d2 + "/bootstrap-info.json", std::string_view("{}")).ok());
  auto st2 = CertStore(d2).inspect();
  ASSERT_FALSE(st2.ok());
  EXPECT_NE(st2.error().message.find("bootstrap-info.json"), std::string::npos);
}

TEST(CertStore, StrayTempFilesAreRemoved) {
  std::string dir = tmpdir();
  ASSERT_TRUE(write_file_atomic(dir + "/root-ca.key.tmp.12345", std::string_view("x"), 0600).ok());
  CertStore s(dir);
  ASSERT_TRUE(s.recover().ok());
  EXPECT_FALSE(file_exists(dir + "/root-ca.key.tmp.12345"));
  EXPECT_EQ(*s.inspect(), CertDirState::Empty);
}
