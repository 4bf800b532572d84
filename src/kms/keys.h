// KMS key material and the derivations of spec §5 (byte-exact with upstream dstack).
#pragma once

#include <optional>
#include <string>

#include "base/bytes.h"
#include "crypto/k256.h"
#include "crypto/p256.h"
#include "crypto/x509.h"
#include "ratls/ratls.h"

namespace dstack::kms {

// Custom X.509 extension OIDs (spec §3.2); defined once in ratls.
using ratls::kOidAppId;
using ratls::kOidAttestation;
using ratls::kOidSpecialUsage;

struct RootKeys {
  crypto::P256Key ca_key;
  crypto::Certificate ca_cert;
  crypto::P256Key tmp_ca_key;
  crypto::Certificate tmp_ca_cert;
  crypto::P256Key rpc_key;
  crypto::K256Key k256;
};

// derive_dh_secret (§5.1): SHA-256 of the 138-byte PKCS#8 DER of the P-256 key derived from root's scalar.
Result<Bytes> derive_dh_secret(const crypto::P256Key& root, std::initializer_list<ByteView> ctx);

struct AppKeys {
  Bytes disk_crypt_key;   // 32
  Bytes env_crypt_key;    // 32
  Bytes k256_key;         // 32
  Bytes k256_signature;   // 65
};
// §5.2. app_id must be 20 bytes; instance_id 20 bytes or empty.
Result<AppKeys> derive_app_keys(const crypto::P256Key& root_ca, const crypto::K256Key& root_k256, ByteView app_id,
                                ByteView instance_id);

struct EnvPubKey {
  Bytes public_key;     // X25519, 32
  Bytes signature;      // 65
  Bytes signature_v1;   // 65 (timestamped)
  uint64_t timestamp = 0;
};
// GetAppEnvEncryptPubKey (§5.3).
Result<EnvPubKey> app_env_pubkey(const crypto::P256Key& root_ca, const crypto::K256Key& root_k256, ByteView app_id,
                                 uint64_t timestamp);

// App CA key for SignCert (§5.2).
Result<crypto::P256Key> derive_app_ca_key(const crypto::P256Key& root_ca, ByteView app_id);

// KMS bootstrap binding (§3.3): keccak256("dstack-kms-genereted-keys-v1:" hex(ca_spki) ";" hex(k256) ";") || 0^32.
Bytes bootstrap_report_data(ByteView ca_pubkey_spki, ByteView k256_pubkey_compressed);
// RA-TLS binding: SHA-512("ratls-cert:" || spki).
using ratls::ratls_report_data;

// Certificates of spec §3.2.
Result<crypto::Certificate> make_root_ca_cert(const crypto::P256Key& key);
Result<crypto::Certificate> make_tmp_ca_cert(const crypto::P256Key& key);
// attestation: VersionedAttestation bytes for the `.8` extension (nullopt => no extension).
Result<crypto::Certificate> make_rpc_cert(const crypto::P256Key& rpc_key, const std::string& domain,
                                          const crypto::P256Key& ca_key, const crypto::Certificate& ca_cert,
                                          const std::optional<Bytes>& attestation);

}  // namespace dstack::kms
