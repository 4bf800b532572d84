#include "vmm/envcrypt.h"

#include <nlohmann/json.hpp>

#include <regex>

#include "crypto/k256.h"

namespace dstack::vmm {

Result<EnvList> parse_env_file(const std::string& text) {
  static const std::regex key_re("^[a-zA-Z_][a-zA-Z0-9_]*$");
  EnvList out;
  size_t lineno = 0, pos = 0;
  while (pos <= text.size()) {
    size_t nl = text.find('\n', pos);
    std::string line = text.substr(pos, nl == std::string::npos ? std::string::npos : nl - pos);
    pos = nl == std::string::npos ? text.size() + 1 : nl + 1;
    ++lineno;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    size_t b = line.find_first_not_of(" \t");
    if (b == std::string::npos || line[b] == '#') continue;
    line = line.substr(b);
    if (line.rfind("export ", 0) == 0) line = line.substr(7);
    auto eq = line.find('=');
    if (eq == std::string::npos)
      return make_error("env file line " + std::to_string(lineno) + ": expected KEY=VALUE");
    std::string key = line.substr(0, eq);
    while (!key.empty() && (key.back() == ' ' || key.back() == '\t')) key.pop_back();
    std::string value = line.substr(eq + 1);
    if (value.size() >= 2 && ((value.front() == '"' && value.back() == '"') || (value.front() == '\'' && value.back() == '\'')))
      value = value.substr(1, value.size() - 2);
    if (!std::regex_match(key, key_re))
      return make_error("env file line " + std::to_string(lineno) + ": invalid key \"" + key + "\"");
    out.emplace_back(key, value);
  }
  return out;
}

std::string env_to_json(const EnvList& env) {
  nlohmann::ordered_json j;
  j["env"] = nlohmann::ordered_json::array();
  for (const auto& [k, v] : env) j["env"].push_back({{"key", k}, {"value", v}});
  return j.dump();
}

Result<Bytes> recover_env_pubkey_signer(ByteView app_id, ByteView public_key, ByteView signature, uint64_t timestamp,
                                        ByteView signature_v1) {
  if (public_key.size() != 32) return make_error("KMS env public key must be 32 bytes, got " + std::to_string(public_key.size()));
  if (!signature_v1.empty()) {
    Bytes digest = crypto::dstack_message_digest_ts("dstack-env-encrypt-pubkey", app_id, timestamp, public_key);
    auto r = crypto::k256_recover(digest, signature_v1);
    if (!r) return r.error().wrap("invalid signature_v1 on the KMS env public key");
    return r;
  }
  if (signature.empty()) return make_error("the KMS env public key is not signed");
  Bytes digest = crypto::dstack_message_digest("dstack-env-encrypt-pubkey", app_id, public_key);
  auto r = crypto::k256_recover(digest, signature);
  if (!r) return r.error().wrap("invalid signature on the KMS env public key");
  return r;
}

namespace {
Result<uint64_t> parse_with_units(const std::string& s, const char* what, uint64_t per_m, uint64_t per_g, uint64_t per_t,
                                  uint64_t plain) {
  size_t i = 0;
  while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) ++i;
  if (i == 0 || i > 12) return make_error(std::string("invalid ") + what + " \"" + s + "\"");
  uint64_t n = std::stoull(s.substr(0, i));
  std::string u = s.substr(i);
  for (auto& c : u) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  if (u.empty()) return n * plain;
  if ((u == "M" || u == "MB") && per_m) return n / per_m;
  if (u == "G" || u == "GB") return n * per_g;
  if (u == "T" || u == "TB") return n * per_t;
  return make_error(std::string("invalid ") + what + " unit in \"" + s + "\"");
}
}  // namespace

Result<uint64_t> parse_memory_mb(const std::string& s) { return parse_with_units(s, "memory size", 1, 1024, 1024 * 1024, 1); }
Result<uint64_t> parse_disk_gb(const std::string& s) { return parse_with_units(s, "disk size", 0, 1, 1024, 1); }

}  // namespace dstack::vmm
