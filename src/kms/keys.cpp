#include "kms/keys.h"

#include "crypto/ecdh.h"
#include "crypto/hash.h"

namespace dstack::kms {

Result<Bytes> derive_dh_secret(const crypto::P256Key& root, std::initializer_list<ByteView> ctx) {
  Bytes scalar = root.scalar();
  auto derived = crypto::P256Key::derive(scalar, ctx);
  secure_wipe(scalar);
  if (!derived.ok()) return derived.error().wrap("deriving P-256 key");
  Bytes der = derived->to_dstack_pkcs8_der();
  Bytes out = crypto::sha256(der);
  secure_wipe(der);
  return out;
}

Result<AppKeys> derive_app_keys(const crypto::P256Key& root_ca, const crypto::K256Key& root_k256, ByteView app_id,
                                ByteView instance_id) {
  if (app_id.size() != 20) return make_error("app_id must be 20 bytes, got " + std::to_string(app_id.size()));
  if (!instance_id.empty() && instance_id.size() != 20)
    return make_error("instance_id must be 20 bytes or empty, got " + std::to_string(instance_id.size()));
  AppKeys k;
  TRY_ASSIGN(k.disk_crypt_key, derive_dh_secret(root_ca, {app_id, instance_id, as_view("app-disk-crypt-key")}));
  TRY_ASSIGN(k.env_crypt_key, derive_dh_secret(root_ca, {app_id, as_view("env-encrypt-key")}));
  TRY_ASSIGN(k.k256_key, crypto::derive_key(root_k256.secret(), {app_id, as_view("app-key")}, 32));
  TRY_ASSIGN(auto app_k256, crypto::K256Key::from_secret(k.k256_key));
  Bytes digest = crypto::dstack_message_digest("dstack-kms-issued", app_id, app_k256.public_compressed());
  TRY_ASSIGN(k.k256_signature, root_k256.sign_recoverable(digest));
  return k;
}

Result<EnvPubKey> app_env_pubkey(const crypto::P256Key& root_ca, const crypto::K256Key& root_k256, ByteView app_id,
                                 uint64_t timestamp) {
  if (app_id.size() != 20) return make_error("app_id must be 20 bytes, got " + std::to_string(app_id.size()));
  TRY_ASSIGN(Bytes secret, derive_dh_secret(root_ca, {app_id, as_view("env-encrypt-key")}));
  EnvPubKey out;
  auto pub = crypto::x25519_public(secret);
  secure_wipe(secret);
  if (!pub.ok()) return pub.error();
  out.public_key = std::move(pub).value();
  out.timestamp = timestamp;
  TRY_ASSIGN(out.signature, root_k256.sign_recoverable(
                                crypto::dstack_message_digest("dstack-env-encrypt-pubkey", app_id, out.public_key)));
  TRY_ASSIGN(out.signature_v1, root_k256.sign_recoverable(crypto::dstack_message_digest_ts(
                                   "dstack-env-encrypt-pubkey", app_id, timestamp, out.public_key)));
  return out;
}

Result<crypto::P256Key> derive_app_ca_key(const crypto::P256Key& root_ca, ByteView app_id) {
  Bytes scalar = root_ca.scalar();
  auto k = crypto::P256Key::derive(scalar, {app_id, as_view("app-ca")});
  secure_wipe(scalar);
  return k;
}

Bytes bootstrap_report_data(ByteView ca_pubkey_spki, ByteView k256_pubkey_compressed) {
  std::string msg = "dstack-kms-genereted-keys-v1:" + to_hex(ca_pubkey_spki) + ";" + to_hex(k256_pubkey_compressed) + ";";
  Bytes rd = crypto::keccak256(as_view(msg));
  rd.resize(64, 0);
  return rd;
}

static Result<crypto::Certificate> self_signed_ca(const crypto::P256Key& key, const char* common_name, int path_len) {
  crypto::CertSpec s;
  s.org_name = "Dstack";
  s.common_name = common_name;
  s.is_ca = true;
  s.ca_path_len = path_len;
  return crypto::issue_certificate(s, key, key, nullptr);
}

Result<crypto::Certificate> make_root_ca_cert(const crypto::P256Key& key) {
  return self_signed_ca(key, "Dstack KMS CA", 1);
}

Result<crypto::Certificate> make_tmp_ca_cert(const crypto::P256Key& key) {
  return self_signed_ca(key, "Dstack Client Temp CA", 0);
}

Result<crypto::Certificate> make_rpc_cert(const crypto::P256Key& rpc_key, const std::string& domain,
                                          const crypto::P256Key& ca_key, const crypto::Certificate& ca_cert,
                                          const std::optional<Bytes>& attestation) {
  crypto::CertSpec s;
  s.common_name = domain;
  s.alt_names = {domain};
  s.extensions[kOidSpecialUsage] = to_bytes("kms:rpc");
  if (attestation) s.extensions[kOidAttestation] = *attestation;
  return crypto::issue_certificate(s, rpc_key, ca_key, &ca_cert);
}

}  // namespace dstack::kms
