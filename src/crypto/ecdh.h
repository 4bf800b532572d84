// X25519, Ed25519, AES-256-GCM (OpenSSL 3) and libsodium sealed boxes.
#pragma once

#include "base/bytes.h"

namespace dstack::crypto {

// X25519 (RFC 7748; the scalar is clamped as usual).
Result<Bytes> x25519_public(ByteView secret32);
Result<Bytes> x25519_shared(ByteView secret32, ByteView peer_public32);  // rejects all-zero output
struct X25519KeyPair { Bytes secret; Bytes public_key; };
X25519KeyPair x25519_generate();

// Ed25519 from a 32-byte seed.
Result<Bytes> ed25519_public(ByteView seed32);
Result<Bytes> ed25519_sign(ByteView seed32, ByteView msg);
bool ed25519_verify(ByteView public32, ByteView msg, ByteView sig64);

// AES-256-GCM: output ciphertext||tag(16).
Result<Bytes> aes256gcm_encrypt(ByteView key32, ByteView iv12, ByteView plaintext, ByteView aad = {});
Result<Bytes> aes256gcm_decrypt(ByteView key32, ByteView iv12, ByteView ciphertext_and_tag, ByteView aad = {});

// dstack env encryption (spec §9 step 7 / §11.1): eph_pub(32)||iv(12)||ct||tag.
Result<Bytes> dstack_encrypt_env(ByteView recipient_public32, ByteView plaintext);
Result<Bytes> dstack_decrypt_env(ByteView secret32, ByteView blob);

// libsodium crypto_box_seal / crypto_box_seal_open (X25519 keys).
Result<Bytes> sealed_box_seal(ByteView recipient_public32, ByteView msg);
Result<Bytes> sealed_box_open(ByteView recipient_public32, ByteView recipient_secret32, ByteView sealed);

}  // namespace dstack::crypto
