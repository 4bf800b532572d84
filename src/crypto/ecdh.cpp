#include "crypto/ecdh.h"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <sodium.h>

#include <cstdlib>
#include <memory>

#include "crypto/hash.h"
#include "crypto/ossl.h"

namespace dstack::crypto {
namespace {

using namespace detail;


Status check_size(ByteView v, size_t n, const char* what) {
  if (v.size() != n) {
    return make_error(std::string(what) + " must be " + std::to_string(n) + " bytes, got " + std::to_string(v.size()));
  }
  return Status::Ok();
}

Bytes raw_public(EVP_PKEY* pkey) {
  Bytes out(32);
  size_t len = out.size();
  if (EVP_PKEY_get_raw_public_key(pkey, out.data(), &len) != 1 || len != 32) return {};
  return out;
}

void ensure_sodium() {
  static const int rc = sodium_init();  // thread-safe one-time init (static local)
  if (rc < 0) std::abort();
}

constexpr size_t kTagLen = 16;

}  // namespace

Result<Bytes> x25519_public(ByteView secret32) {
  TRY(check_size(secret32, 32, "X25519 secret key"));
  PkeyPtr pkey(EVP_PKEY_new_raw_private_key(EVP_PKEY_X25519, nullptr, secret32.data(), 32));
  if (!pkey) return make_error("X25519: loading secret key failed: " + ossl_error());
  Bytes pub = raw_public(pkey.get());
  if (pub.empty()) return make_error("X25519: computing public key failed: " + ossl_error());
  return pub;
}

Result<Bytes> x25519_shared(ByteView secret32, ByteView peer_public32) {
  TRY(check_size(secret32, 32, "X25519 secret key"));
  TRY(check_size(peer_public32, 32, "X25519 peer public key"));
  PkeyPtr priv(EVP_PKEY_new_raw_private_key(EVP_PKEY_X25519, nullptr, secret32.data(), 32));
  PkeyPtr peer(EVP_PKEY_new_raw_public_key(EVP_PKEY_X25519, nullptr, peer_public32.data(), 32));
  if (!priv || !peer) return make_error("X25519: loading keys failed: " + ossl_error());
  EVP_PKEY_CTX* ctx = EVP_PKEY_CTX_new(priv.get(), nullptr);
  Bytes out(32);
  size_t len = out.size();
  bool ok = ctx != nullptr && EVP_PKEY_derive_init(ctx) == 1 && EVP_PKEY_derive_set_peer(ctx, peer.get()) == 1 &&
            EVP_PKEY_derive(ctx, out.data(), &len) == 1 && len == 32;
  EVP_PKEY_CTX_free(ctx);
  ERR_clear_error();
  static const uint8_t kZero[32] = {0};
  if (!ok || secure_equal(out, ByteView(kZero))) {
    secure_wipe(out);
    return make_error("X25519: key agreement failed (peer public key is a low-order point; all-zero shared secret)");
  }
  return out;
}

X25519KeyPair x25519_generate() {
  X25519KeyPair kp;
  kp.secret = random_bytes(32);
  kp.public_key = x25519_public(kp.secret).value();  // cannot fail for a 32-byte secret
  return kp;
}

Result<Bytes> ed25519_public(ByteView seed32) {
  TRY(check_size(seed32, 32, "Ed25519 seed"));
  PkeyPtr pkey(EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, nullptr, seed32.data(), 32));
  if (!pkey) return make_error("Ed25519: loading seed failed: " + ossl_error());
  Bytes pub = raw_public(pkey.get());
  if (pub.empty()) return make_error("Ed25519: computing public key failed: " + ossl_error());
  return pub;
}

Result<Bytes> ed25519_sign(ByteView seed32, ByteView msg) {
  TRY(check_size(seed32, 32, "Ed25519 seed"));
  PkeyPtr pkey(EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, nullptr, seed32.data(), 32));
  if (!pkey) return make_error("Ed25519: loading seed failed: " + ossl_error());
  EVP_MD_CTX* md = EVP_MD_CTX_new();
  Bytes sig(64);
  size_t len = sig.size();
  bool ok = md != nullptr && EVP_DigestSignInit(md, nullptr, nullptr, nullptr, pkey.get()) == 1 &&
            EVP_DigestSign(md, sig.data(), &len, msg.data(), msg.size()) == 1 && len == 64;
  EVP_MD_CTX_free(md);
  if (!ok) return make_error("Ed25519: signing failed: " + ossl_error());
  return sig;
}

bool ed25519_verify(ByteView public32, ByteView msg, ByteView sig64) {
  if (public32.size() != 32 || sig64.size() != 64) return false;
  PkeyPtr pkey(EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, nullptr, public32.data(), 32));
  if (!pkey) {
    ERR_clear_error();
    return false;
  }
  EVP_MD_CTX* md = EVP_MD_CTX_new();
  bool ok = md != nullptr && EVP_DigestVerifyInit(md, nullptr, nullptr, nullptr, pkey.get()) == 1 &&
            EVP_DigestVerify(md, sig64.data(), sig64.size(), msg.data(), msg.size()) == 1;
  EVP_MD_CTX_free(md);
  ERR_clear_error();
  return ok;
}

Result<Bytes> aes256gcm_encrypt(ByteView key32, ByteView iv12, ByteView plaintext, ByteView aad) {
  TRY(check_size(key32, 32, "AES-256-GCM key"));
  TRY(check_size(iv12, 12, "AES-256-GCM nonce"));
  CipherCtxPtr ctx(EVP_CIPHER_CTX_new());
  Bytes out(plaintext.size() + kTagLen);
  int len = 0;
  int total = 0;
  bool ok = ctx && EVP_EncryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, key32.data(), iv12.data()) == 1;
  if (ok && !aad.empty()) ok = EVP_EncryptUpdate(ctx.get(), nullptr, &len, aad.data(), static_cast<int>(aad.size())) == 1;
  if (ok && !plaintext.empty()) {
    ok = EVP_EncryptUpdate(ctx.get(), out.data(), &len, plaintext.data(), static_cast<int>(plaintext.size())) == 1;
    total = len;
  }
  ok = ok && EVP_EncryptFinal_ex(ctx.get(), out.data() + total, &len) == 1;
  total += len;
  ok = ok && EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_GET_TAG, kTagLen, out.data() + total) == 1;
  if (!ok) return make_error("AES-256-GCM: encryption failed: " + ossl_error());
  out.resize(static_cast<size_t>(total) + kTagLen);
  return out;
}

Result<Bytes> aes256gcm_decrypt(ByteView key32, ByteView iv12, ByteView ciphertext_and_tag, ByteView aad) {
  TRY(check_size(key32, 32, "AES-256-GCM key"));
  TRY(check_size(iv12, 12, "AES-256-GCM nonce"));
  if (ciphertext_and_tag.size() < kTagLen) {
    return make_error("AES-256-GCM: ciphertext shorter than the 16-byte tag (" +
                      std::to_string(ciphertext_and_tag.size()) + " bytes)");
  }
  size_t ct_len = ciphertext_and_tag.size() - kTagLen;
  Bytes tag(ciphertext_and_tag.begin() + static_cast<std::ptrdiff_t>(ct_len), ciphertext_and_tag.end());
  CipherCtxPtr ctx(EVP_CIPHER_CTX_new());
  Bytes out(ct_len + 16);
  int len = 0;
  int total = 0;
  bool ok = ctx && EVP_DecryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, key32.data(), iv12.data()) == 1;
  if (ok && !aad.empty()) ok = EVP_DecryptUpdate(ctx.get(), nullptr, &len, aad.data(), static_cast<int>(aad.size())) == 1;
  if (ok && ct_len > 0) {
    ok = EVP_DecryptUpdate(ctx.get(), out.data(), &len, ciphertext_and_tag.data(), static_cast<int>(ct_len)) == 1;
    total = len;
  }
  ok = ok && EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_TAG, kTagLen, tag.data()) == 1;
  if (!ok) return make_error("AES-256-GCM: decryption setup failed: " + ossl_error());
  if (EVP_DecryptFinal_ex(ctx.get(), out.data() + total, &len) != 1) {
    secure_wipe(out);
    ERR_clear_error();
    return make_error("AES-256-GCM: authentication failed (wrong key, corrupted ciphertext or tag)");
  }
  total += len;
  out.resize(static_cast<size_t>(total));
  return out;
}

Result<Bytes> dstack_encrypt_env(ByteView recipient_public32, ByteView plaintext) {
  TRY(check_size(recipient_public32, 32, "env encryption public key"));
  X25519KeyPair eph = x25519_generate();
  auto shared = x25519_shared(eph.secret, recipient_public32);
  secure_wipe(eph.secret);
  if (!shared.ok()) return shared.error().wrap("encrypting env");
  Bytes iv = random_bytes(12);
  auto ct = aes256gcm_encrypt(*shared, iv, plaintext);
  secure_wipe(*shared);
  if (!ct.ok()) return ct.error().wrap("encrypting env");
  return concat({eph.public_key, iv, *ct});
}

Result<Bytes> dstack_decrypt_env(ByteView secret32, ByteView blob) {
  if (blob.size() < 32 + 12 + kTagLen) {
    return make_error("decrypting env: encrypted env is too short (" + std::to_string(blob.size()) +
                      " bytes; expected ephemeral key(32) || iv(12) || ciphertext || tag(16))");
  }
  auto shared = x25519_shared(secret32, blob.subspan(0, 32));
  if (!shared.ok()) return shared.error().wrap("decrypting env");
  auto pt = aes256gcm_decrypt(*shared, blob.subspan(32, 12), blob.subspan(44));
  secure_wipe(*shared);
  if (!pt.ok()) return pt.error().wrap("decrypting env (is the env encrypted for this app's env key?)");
  return pt;
}

Result<Bytes> sealed_box_seal(ByteView recipient_public32, ByteView msg) {
  TRY(check_size(recipient_public32, crypto_box_PUBLICKEYBYTES, "sealed box recipient public key"));
  ensure_sodium();
  Bytes out(msg.size() + crypto_box_SEALBYTES);
  if (crypto_box_seal(out.data(), msg.data(), msg.size(), recipient_public32.data()) != 0) {
    return make_error("sealed box: encryption failed (invalid recipient public key?)");
  }
  return out;
}

Result<Bytes> sealed_box_open(ByteView recipient_public32, ByteView recipient_secret32, ByteView sealed) {
  TRY(check_size(recipient_public32, crypto_box_PUBLICKEYBYTES, "sealed box recipient public key"));
  TRY(check_size(recipient_secret32, crypto_box_SECRETKEYBYTES, "sealed box recipient secret key"));
  if (sealed.size() < crypto_box_SEALBYTES) {
    return make_error("sealed box: ciphertext too short (" + std::to_string(sealed.size()) + " bytes)");
  }
  ensure_sodium();
  Bytes out(sealed.size() - crypto_box_SEALBYTES);
  if (crypto_box_seal_open(out.data(), sealed.data(), sealed.size(), recipient_public32.data(),
                           recipient_secret32.data()) != 0) {
    secure_wipe(out);
    return make_error("sealed box: decryption failed (wrong key pair or corrupted ciphertext)");
  }
  return out;
}

}  // namespace dstack::crypto
