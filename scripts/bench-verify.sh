#!/usr/bin/env bash
# Quote-verification benchmark: our verifier (Google Benchmark, with and without collateral caching) and the
# peers @phala/dcap-qvl (pure JS) and @phala/dcap-qvl-web (Rust->wasm) on the same quote, same machine, same
# run. Prints a table of quotes/s on one core.
# Usage: scripts/bench-verify.sh [PEER_SECONDS]   (env: DSTACK_BENCH_BUILD_DIR, DSTACK_SHARED_DIR)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SHARED="${DSTACK_SHARED_DIR:-$ROOT/../shared}"
BUILD="${DSTACK_BENCH_BUILD_DIR:-$ROOT/build-bench}"
PEER_SECS="${1:-10}"
D="$SHARED/testdata/dcap"
T=1750331763

if [ -f "$BUILD/CMakeCache.txt" ]; then  # reuse an existing build dir as configured (e.g. build-<name>)
  cmake -S "$ROOT" -B "$BUILD" -DDSTACK_BENCH=ON >/dev/null
else
  cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DDSTACK_BENCH=ON \
    -DDSTACK_SHARED_DIR="$SHARED" >/dev/null
fi
cmake --build "$BUILD" --target bench_verify >/dev/null

OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
# One core: pin to CPU 0 when taskset is available.
PIN=""
command -v taskset >/dev/null && PIN="taskset -c 0"
$PIN "$BUILD/bin/bench_verify" --benchmark_min_time=2 --benchmark_out="$OUT/ours.json" \
  --benchmark_out_format=json >/dev/null
$PIN node "$ROOT/bench/peers/dcap-qvl-bench.js" "$D/tdx_quote" "$D/tdx_quote_collateral.json" "$T" "$PEER_SECS" \
  > "$OUT/peers.jsonl"

node - "$OUT/ours.json" "$OUT/peers.jsonl" <<'JS'
const fs = require('fs');
const ours = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const peers = fs.readFileSync(process.argv[3], 'utf8').trim().split('\n').map((l) => JSON.parse(l));
const names = {
  BM_VerifyTdx_CachedCollateral: 'dstack-cpp verify (collateral cached)',
  BM_VerifyTdx_NoCache: 'dstack-cpp verify (no cache)',
  BM_P256VerifyFloor: 'floor: 1 OpenSSL P-256 verify',
  BM_ParseQuote: 'dstack-cpp parse only',
};
const rows = [];
const scale = { ns: 1e9, us: 1e6, ms: 1e3, s: 1 };
for (const b of ours.benchmarks) {
  if (!names[b.name]) continue;
  const u = scale[b.time_unit];
  rows.push([names[b.name], u / b.real_time, u / b.cpu_time]);
}
for (const p of peers) rows.push([p.peer, p.quotes_per_sec, p.quotes_per_cpu_sec]);
const os = require('os');
const w = Math.max(...rows.map((r) => r[0].length));
console.log(`host: ${os.cpus()[0].model}, ${os.cpus().length} cpus, load ${os.loadavg()[0].toFixed(2)}, ` +
            `${ours.context.date}`);
console.log(`${'verifier (tdx_quote, one thread)'.padEnd(w)} | quotes/s wall | quotes/s CPU`);
console.log(`${'-'.repeat(w)}-|---------------|-------------`);
for (const [n, wall, cpu] of rows) {
  console.log(`${n.padEnd(w)} | ${wall.toFixed(1).padStart(13)} | ${cpu.toFixed(1).padStart(12)}`);
}
JS
