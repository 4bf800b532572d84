// Client side of the local key provider (spec §12).
//
//  * request_sealing_key(): what the VMM does when it relays a guest's GetSealingKey — one TCP connection,
//    u32_be(len) || {"quote":[u8...]}  ->  u32_be(len) || {"encrypted_key":[...],"provider_quote":[...]}.
//  * open_sealing_key(): what the guest does with the answer — verify the provider's SGX quote (DCAP against
//    the given collateral and trust roots), check report_data[0..32] == SHA256(encrypted_key), optionally pin
//    MRENCLAVE, open the libsodium sealed box with the guest's X25519 secret -> 32-byte sealing key.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>

#include "attest/collateral.h"
#include "attest/verify.h"
#include "base/bytes.h"
#include "base/result.h"

namespace dstack::keyprovider {

inline constexpr uint16_t kDefaultPort = 3443;

struct SealingKeyResponse {
  Bytes encrypted_key;   // libsodium sealed box (48 + 32 bytes)
  Bytes provider_quote;  // SGX quote v3 of the provider, report_data = SHA256(encrypted_key) || 32 zeros
};

// Connects to host:port, sends the TDX quote, reads the answer. `timeout` bounds the whole exchange
// (connect + send + receive). An error frame from the provider ({"error":"..."}) becomes an Error carrying
// the provider's message.
Result<SealingKeyResponse> request_sealing_key(const std::string& host, uint16_t port, ByteView quote,
                                               std::chrono::milliseconds timeout);

struct OpenOptions {
  // Collateral for the provider's SGX quote (SGX TCB info + QE identity), e.g. from
  // SimPlatform::sgx_collateral_json() or from a PCCS.
  attest::Collateral collateral;
  // Trust roots. For a simulated platform the caller must opt in explicitly (extra_root_pems = its root CA).
  attest::TrustOptions trust;
  // Verification time (unix seconds); 0 = now.
  int64_t now_unix = 0;
  // If set, the provider's MRENCLAVE must equal this (32 bytes) — the compose `key_provider_id` pin.
  std::optional<Bytes> expected_mr_enclave;
};

struct OpenedSealingKey {
  Bytes key;             // 32-byte sealing key (seed for the app keys). Secret: never log it.
  Bytes mr_enclave;      // 32-byte provider MRENCLAVE = key provider id (`local-sgx`)
  std::string tcb_status;  // TCB status of the provider quote (UpToDate, ...)
};

// x25519_secret: the 32-byte secret whose public key the guest put in report_data[0..32] of its TDX quote.
Result<OpenedSealingKey> open_sealing_key(const SealingKeyResponse& response, ByteView x25519_secret,
                                          const OpenOptions& options);

}  // namespace dstack::keyprovider
