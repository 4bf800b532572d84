// secp256k1 (libsecp256k1): keys, recoverable ECDSA (RFC 6979), public key recovery.
#pragma once

#include "base/bytes.h"

namespace dstack::crypto {

class K256Key {
 public:
  static K256Key generate();
  static Result<K256Key> from_secret(ByteView secret32);

  const Bytes& secret() const { return secret_; }
  Bytes public_compressed() const;    // 33 bytes
  Bytes public_uncompressed() const;  // 65 bytes
  // Recoverable signature over a 32-byte digest: r(32)||s(32)||v(1), v in {0,1}.
  Result<Bytes> sign_recoverable(ByteView digest32) const;
  // Non-recoverable r||s (64 bytes, low-s) over a 32-byte digest.
  Result<Bytes> sign(ByteView digest32) const;
  // Ethereum address (20 bytes) = keccak256(uncompressed[1..])[12..].
  Bytes eth_address() const;

  ~K256Key();
  K256Key(const K256Key&) = default;
  K256Key& operator=(const K256Key&) = default;

 private:
  explicit K256Key(Bytes secret) : secret_(std::move(secret)) {}
  Bytes secret_;
};

// Recovers the compressed (33 B) public key from a 65-byte r||s||v signature (v in {0,1} or {27,28}).
Result<Bytes> k256_recover(ByteView digest32, ByteView sig65);
// Verifies r||s (64 B) or r||s||v (65 B) with a compressed/uncompressed public key.
bool k256_verify(ByteView pubkey, ByteView digest32, ByteView sig);
Result<Bytes> k256_compress(ByteView pubkey);  // 33 or 65 bytes in, 33 out

// dstack signing helpers (spec §5.3): digest = keccak256(prefix || ":" || app_id || msg).
Bytes dstack_message_digest(std::string_view prefix, ByteView app_id, ByteView msg);
Bytes dstack_message_digest_ts(std::string_view prefix, ByteView app_id, uint64_t timestamp, ByteView msg);

}  // namespace dstack::crypto
