// Hash functions and HKDF (OpenSSL 3), Keccak-256 (Crypto++: OpenSSL 3.0 has none).
#pragma once

#include "base/bytes.h"

namespace dstack::crypto {

Bytes sha256(ByteView data);
Bytes sha384(ByteView data);
Bytes sha512(ByteView data);
Bytes sha3_256(ByteView data);
Bytes sha3_384(ByteView data);
Bytes sha3_512(ByteView data);
Bytes keccak256(ByteView data);  // Ethereum Keccak-256 (original padding, not SHA3-256)
Bytes keccak384(ByteView data);
Bytes keccak512(ByteView data);

// HKDF-SHA256 (RFC 5869) extract+expand.
Result<Bytes> hkdf_sha256(ByteView ikm, ByteView salt, ByteView info, size_t length);

// dstack KDF (spec §5.1): HKDF-SHA256, salt "RATLS", info = concatenation of ctx parts.
Result<Bytes> derive_key(ByteView ikm, std::initializer_list<ByteView> ctx, size_t length);

Bytes random_bytes(size_t n);

}  // namespace dstack::crypto
