// The KMS cert_dir (spec §3.1) and its crash-safe bootstrap writer.
//
// Crash-safety design: a bootstrap (or onboard) never writes into cert_dir directly. It
//   1. writes every artifact into <cert_dir>/.bootstrap-staging/ (each file atomically, private keys 0600),
//   2. writes the marker .bootstrap-staging/COMMIT (the staging set is complete and self-consistent),
//   3. renames the files into cert_dir one by one, private keys first, certificates next, bootstrap-info.json last,
//   4. removes COMMIT and the staging directory.
// On the next start recover() finishes step 3 if COMMIT exists (roll forward) or deletes an incomplete staging
// directory (nothing was published yet). A cert_dir holding only some artifacts without a staging dir was not
// produced by this writer; inspect() then refuses and names the files to remove. Because bootstrap-info.json
// and the certificates are published after every private key, public keys never appear without their keys.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "base/result.h"
#include "kms/keys.h"

namespace dstack::kms {

inline constexpr const char* kStagingDir = ".bootstrap-staging";

// Test hook called after every single write/rename (name like "stage:root-ca.key", "commit:rpc.crt");
// returning an error aborts the writer there, as a crash would.
using WriteHook = std::function<Status(const std::string& step)>;

struct Artifact {
  std::string name;
  std::string content;
  mode_t mode;
};

enum class CertDirState { Empty, KeysExist };

class CertStore {
 public:
  explicit CertStore(std::string dir) : dir_(std::move(dir)) {}
  const std::string& dir() const { return dir_; }
  std::string path(const std::string& name) const { return dir_ + "/" + name; }

  // Finishes or discards an interrupted bootstrap, removes stray temp files. Idempotent.
  Status recover(const WriteHook& hook = nullptr);
  // Empty or KeysExist; Error (naming files to remove) for any half state.
  Result<CertDirState> inspect() const;
  // Publishes artifacts with the staging protocol above. cert_dir must be Empty.
  Status commit(const std::vector<Artifact>& artifacts, const WriteHook& hook = nullptr);

  Result<RootKeys> load() const;
  Result<std::string> read_domain() const;

 private:
  std::string dir_;
};

// The seven files whose presence means "keys exist" (spec §3.1), in publish order (private keys first).
const std::vector<std::string>& key_files();

struct BootstrapInfo {
  Bytes ca_pubkey;     // DER SPKI
  Bytes k256_pubkey;   // 33 B
  Bytes attestation;   // VersionedAttestation or empty
};
std::string bootstrap_info_json(const BootstrapInfo& b);
Result<BootstrapInfo> parse_bootstrap_info(const std::string& json_text);

// Serializes keys into the artifacts (rpc.crt without attestation; it is reissued at every start).
Result<std::vector<Artifact>> make_artifacts(const RootKeys& keys, const std::string& domain,
                                             const std::optional<BootstrapInfo>& info);

}  // namespace dstack::kms
