// Client-side helpers of vmm-cli deploy/update-env (spec §11.1, §5.3, §9 step 7).
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "base/bytes.h"
#include "base/result.h"

namespace dstack::vmm {

using EnvList = std::vector<std::pair<std::string, std::string>>;

// KEY=VALUE lines; blank lines and '#' comments skipped; optional surrounding quotes removed; keys checked
// against ^[a-zA-Z_][a-zA-Z0-9_]*$.
Result<EnvList> parse_env_file(const std::string& text);

// {"env":[{"key":K,"value":V},...]} (compact JSON, the guest's plaintext format).
std::string env_to_json(const EnvList& env);

// Verifies a GetAppEnvEncryptPubKey answer and returns the signer's compressed k256 public key (33 B).
// Uses signature_v1 (timestamped) when present, else the legacy signature. A signature that does not
// recover is an error.
Result<Bytes> recover_env_pubkey_signer(ByteView app_id, ByteView public_key, ByteView signature,
                                        uint64_t timestamp, ByteView signature_v1);

// "1024", "512M", "4G", "1T" -> MB (default unit MB).
Result<uint64_t> parse_memory_mb(const std::string& s);
// "20", "20G", "1T" -> GB (default unit GB).
Result<uint64_t> parse_disk_gb(const std::string& s);

}  // namespace dstack::vmm
