#include "crypto/k256.h"

#include <secp256k1.h>
#include <secp256k1_recovery.h>

#include <cstdlib>
#include <mutex>

#include "crypto/hash.h"

namespace dstack::crypto {
namespace {

// One randomized signing context for the process (libsecp256k1 contexts are thread-safe for
// signing/verification once created).
const secp256k1_context* ctx() {
  static secp256k1_context* c = [] {
    secp256k1_context* created = secp256k1_context_create(SECP256K1_CONTEXT_NONE);
    Bytes seed = random_bytes(32);
    if (secp256k1_context_randomize(created, seed.data()) != 1) std::abort();
    secure_wipe(seed);
    return created;
  }();
  return c;
}

Result<secp256k1_pubkey> parse_pubkey(ByteView pubkey) {
  secp256k1_pubkey pk;
  if (pubkey.size() != 33 && pubkey.size() != 65) {
    return make_error("secp256k1: public key must be 33 (compressed) or 65 (uncompressed) bytes, got " +
                      std::to_string(pubkey.size()));
  }
  if (secp256k1_ec_pubkey_parse(ctx(), &pk, pubkey.data(), pubkey.size()) != 1) {
    return make_error("secp256k1: invalid public key encoding or point not on curve");
  }
  return pk;
}

Bytes serialize(const secp256k1_pubkey& pk, bool compressed) {
  Bytes out(compressed ? 33 : 65);
  size_t len = out.size();
  secp256k1_ec_pubkey_serialize(ctx(), out.data(), &len, &pk,
                                compressed ? SECP256K1_EC_COMPRESSED : SECP256K1_EC_UNCOMPRESSED);
  return out;
}

Status check_digest(ByteView digest32) {
  if (digest32.size() != 32) {
    return make_error("secp256k1: message digest must be 32 bytes, got " + std::to_string(digest32.size()));
  }
  return Status::Ok();
}

}  // namespace

K256Key K256Key::generate() {
  for (;;) {
    Bytes s = random_bytes(32);
    if (secp256k1_ec_seckey_verify(ctx(), s.data()) == 1) return K256Key(std::move(s));
    secure_wipe(s);
  }
}

Result<K256Key> K256Key::from_secret(ByteView secret32) {
  if (secret32.size() != 32) {
    return make_error("secp256k1: secret key must be 32 bytes, got " + std::to_string(secret32.size()));
  }
  if (secp256k1_ec_seckey_verify(ctx(), secret32.data()) != 1) {
    return make_error("secp256k1: secret key is zero or not below the curve order");
  }
  return K256Key(Bytes(secret32.begin(), secret32.end()));
}

K256Key::~K256Key() { secure_wipe(secret_); }

Bytes K256Key::public_compressed() const {
  secp256k1_pubkey pk;
  if (secp256k1_ec_pubkey_create(ctx(), &pk, secret_.data()) != 1) return {};
  return serialize(pk, true);
}

Bytes K256Key::public_uncompressed() const {
  secp256k1_pubkey pk;
  if (secp256k1_ec_pubkey_create(ctx(), &pk, secret_.data()) != 1) return {};
  return serialize(pk, false);
}

Result<Bytes> K256Key::sign_recoverable(ByteView digest32) const {
  TRY(check_digest(digest32));
  secp256k1_ecdsa_recoverable_signature sig;
  if (secp256k1_ecdsa_sign_recoverable(ctx(), &sig, digest32.data(), secret_.data(), nullptr, nullptr) != 1) {
    return make_error("secp256k1: recoverable signing failed");
  }
  Bytes out(65);
  int recid = 0;
  secp256k1_ecdsa_recoverable_signature_serialize_compact(ctx(), out.data(), &recid, &sig);
  out[64] = static_cast<uint8_t>(recid);
  return out;
}

Result<Bytes> K256Key::sign(ByteView digest32) const {
  TRY(check_digest(digest32));
  secp256k1_ecdsa_signature sig;
  if (secp256k1_ecdsa_sign(ctx(), &sig, digest32.data(), secret_.data(), nullptr, nullptr) != 1) {
    return make_error("secp256k1: signing failed");
  }
  Bytes out(64);
  secp256k1_ecdsa_signature_serialize_compact(ctx(), out.data(), &sig);
  return out;
}

Bytes K256Key::eth_address() const {
  Bytes pub = public_uncompressed();
  if (pub.size() != 65) return {};
  Bytes h = keccak256(ByteView(pub).subspan(1));
  return Bytes(h.begin() + 12, h.end());
}

Result<Bytes> k256_recover(ByteView digest32, ByteView sig65) {
  TRY(check_digest(digest32));
  if (sig65.size() != 65) {
    return make_error("secp256k1: recoverable signature must be 65 bytes r||s||v, got " + std::to_string(sig65.size()));
  }
  int v = sig65[64];
  if (v == 27 || v == 28) v -= 27;
  if (v != 0 && v != 1) return make_error("secp256k1: recovery id v must be 0, 1, 27 or 28, got " + std::to_string(sig65[64]));
  secp256k1_ecdsa_recoverable_signature sig;
  if (secp256k1_ecdsa_recoverable_signature_parse_compact(ctx(), &sig, sig65.data(), v) != 1) {
    return make_error("secp256k1: malformed signature (r or s out of range)");
  }
  secp256k1_pubkey pk;
  if (secp256k1_ecdsa_recover(ctx(), &pk, &sig, digest32.data()) != 1) {
    return make_error("secp256k1: public key recovery failed (signature does not match digest)");
  }
  return serialize(pk, true);
}

bool k256_verify(ByteView pubkey, ByteView digest32, ByteView sig) {
  if (digest32.size() != 32 || (sig.size() != 64 && sig.size() != 65)) return false;
  auto pk = parse_pubkey(pubkey);
  if (!pk.ok()) return false;
  secp256k1_ecdsa_signature s;
  if (secp256k1_ecdsa_signature_parse_compact(ctx(), &s, sig.data()) != 1) return false;
  // Accept high-s encodings too (standard ECDSA semantics); libsecp256k1 verifies only low-s.
  secp256k1_ecdsa_signature_normalize(ctx(), &s, &s);
  return secp256k1_ecdsa_verify(ctx(), &s, digest32.data(), &*pk) == 1;
}

Result<Bytes> k256_compress(ByteView pubkey) {
  TRY_ASSIGN(secp256k1_pubkey pk, parse_pubkey(pubkey));
  return serialize(pk, true);
}

Bytes dstack_message_digest(std::string_view prefix, ByteView app_id, ByteView msg) {
  return keccak256(concat({as_view(prefix), as_view(":"), app_id, msg}));
}

Bytes dstack_message_digest_ts(std::string_view prefix, ByteView app_id, uint64_t timestamp, ByteView msg) {
  uint8_t ts[8];
  for (int i = 0; i < 8; ++i) ts[i] = static_cast<uint8_t>(timestamp >> (56 - 8 * i));
  return keccak256(concat({as_view(prefix), as_view(":"), app_id, ByteView(ts), msg}));
}

}  // namespace dstack::crypto
