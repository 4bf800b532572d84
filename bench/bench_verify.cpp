// DCAP quote verification throughput on one core (real tdx_quote + its collateral at a time inside the
// collateral's validity window). Items/s == quotes verified per second.
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <string>

#include "attest/collateral.h"
#include "attest/quote.h"
#include "attest/verify.h"
#include "base/fs.h"
#include "attest/dcap_pki.h"

namespace {

constexpr int64_t kTime = 1750331763;

struct Sample {
  dstack::Bytes quote;
  dstack::attest::Collateral collateral;
};

const Sample& sample() {
  static const Sample s = [] {
    std::string dir = std::string(DSTACK_SHARED_DIR) + "/testdata/dcap/";
    auto q = dstack::read_file_bytes(dir + "tdx_quote");
    auto t = dstack::read_file(dir + "tdx_quote_collateral.json");
    if (!q.ok() || !t.ok()) std::abort();
    auto c = dstack::attest::parse_collateral_json(*t);
    if (!c.ok()) std::abort();
    return Sample{*q, *c};
  }();
  return s;
}

void BM_VerifyTdx_NoCache(benchmark::State& state) {
  const auto& s = sample();
  for (auto _ : state) {
    auto r = dstack::attest::verify_quote(s.quote, s.collateral, kTime);
    if (!r.ok() || r->status != "UpToDate") state.SkipWithError("verification failed");
    benchmark::DoNotOptimize(r);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_VerifyTdx_NoCache)->Unit(benchmark::kMicrosecond);

void BM_VerifyTdx_CachedCollateral(benchmark::State& state) {
  const auto& s = sample();
  dstack::attest::QuoteVerifier v;
  if (!v.verify(s.quote, s.collateral, kTime).ok()) state.SkipWithError("warm-up failed");
  for (auto _ : state) {
    auto r = v.verify(s.quote, s.collateral, kTime);
    if (!r.ok() || r->status != "UpToDate") state.SkipWithError("verification failed");
    benchmark::DoNotOptimize(r);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_VerifyTdx_CachedCollateral)->Unit(benchmark::kMicrosecond);

void BM_ParseQuote(benchmark::State& state) {
  const auto& s = sample();
  for (auto _ : state) {
    auto q = dstack::attest::parse_quote(s.quote);
    benchmark::DoNotOptimize(q);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_ParseQuote)->Unit(benchmark::kMicrosecond);

// The floor: one OpenSSL ECDSA P-256 verification of the quote signature (header || body, 632 bytes) with a
// prepared public key.
void BM_P256VerifyFloor(benchmark::State& state) {
  const auto& s = sample();
  auto q = dstack::attest::parse_quote(s.quote);
  if (!q.ok()) std::abort();
  auto key = dstack::attest::pki::pkey_from_xy(dstack::ByteView(q->signature.ecdsa_attestation_key.data(), 64));
  if (!key.ok()) std::abort();
  dstack::ByteView sig(q->signature.ecdsa_signature.data(), 64);
  dstack::ByteView msg(s.quote.data(), q->signed_length);
  for (auto _ : state) {
    bool ok = dstack::attest::pki::verify_raw_sig(key->get(), msg, sig);
    if (!ok) state.SkipWithError("signature check failed");
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_P256VerifyFloor)->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
