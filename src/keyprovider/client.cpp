#include "keyprovider/client.h"

#include <unistd.h>

#include <ctime>

#include "attest/quote.h"
#include "crypto/ecdh.h"
#include "crypto/hash.h"
#include "keyprovider/protocol.h"

namespace dstack::keyprovider {

Result<SealingKeyResponse> request_sealing_key(const std::string& host, uint16_t port, ByteView quote,
                                               std::chrono::milliseconds timeout) {
  if (quote.empty()) return make_error("GetSealingKey: the TDX quote is empty");
  if (quote.size() > kMaxQuoteLen)
    return make_error("GetSealingKey: the TDX quote has " + std::to_string(quote.size()) + " bytes, limit " +
                      std::to_string(kMaxQuoteLen));
  auto deadline = detail::Clock::now() + timeout;
  TRY_ASSIGN(int fd, detail::connect_tcp(host, port, deadline));
  auto exchange = [&]() -> Result<SealingKeyResponse> {
    TRY(detail::write_frame(fd, encode_request(quote), deadline));
    TRY_ASSIGN(std::string body, detail::read_frame(fd, deadline));
    return decode_response(body);
  };
  auto r = exchange();
  ::close(fd);
  if (!r) return r.error().wrap("key provider " + host + ":" + std::to_string(port));
  return r;
}

Result<OpenedSealingKey> open_sealing_key(const SealingKeyResponse& response, ByteView x25519_secret,
                                          const OpenOptions& options) {
  if (x25519_secret.size() != 32) return make_error("open_sealing_key: the X25519 secret must be 32 bytes");
  int64_t now = options.now_unix ? options.now_unix : static_cast<int64_t>(std::time(nullptr));
  auto verified = attest::verify_quote(response.provider_quote, options.collateral, now, options.trust);
  if (!verified) return verified.error().wrap("key provider quote (SGX) does not verify");
  const attest::EnclaveReport* rep = verified->sgx_report();
  if (!rep) return make_error("key provider quote is a " + verified->quote.tee_type_name() + " quote, expected SGX");

  Bytes expect = crypto::sha256(response.encrypted_key);
  expect.resize(64, 0);
  if (!std::equal(expect.begin(), expect.end(), rep->report_data.begin()))
    return make_error(
        "key provider quote does not bind the encrypted key: report_data must be SHA256(encrypted_key) || 32 zero "
        "bytes");
  Bytes mr_enclave(rep->mr_enclave.begin(), rep->mr_enclave.end());
  if (options.expected_mr_enclave && *options.expected_mr_enclave != mr_enclave)
    return make_error("key provider MRENCLAVE " + to_hex(mr_enclave) + " does not match the pinned key_provider_id " +
                      to_hex(*options.expected_mr_enclave));

  TRY_ASSIGN(Bytes pk, crypto::x25519_public(x25519_secret));
  auto key = crypto::sealed_box_open(pk, x25519_secret, response.encrypted_key);
  if (!key)
    return key.error().wrap("cannot open the sealed sealing key (was the TDX quote's report_data[0..32] our X25519 "
                            "public key?)");
  if (key->size() != 32) {
    secure_wipe(*key);
    return make_error("sealed sealing key has " + std::to_string(key->size()) + " bytes, expected 32");
  }
  OpenedSealingKey out;
  out.key = std::move(*key);
  out.mr_enclave = std::move(mr_enclave);
  out.tcb_status = verified->status;
  return out;
}

}  // namespace dstack::keyprovider
