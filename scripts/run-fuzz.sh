#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, ASan+UBSan) in build-fuzz/ and runs each for N seconds (default 60)
# with the real DCAP samples as seed corpus. Usage: scripts/run-fuzz.sh [SECONDS]
set -euo pipefail
SECS="${1:-60}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SHARED="${DSTACK_SHARED_DIR:-$ROOT/../shared}"
BUILD="${DSTACK_FUZZ_BUILD_DIR:-$ROOT/build-fuzz}"
SAN="-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"

cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
  -DCMAKE_C_FLAGS="$SAN" -DCMAKE_CXX_FLAGS="$SAN" \
  -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" \
  -DDSTACK_FUZZ=ON -DDSTACK_BENCH=OFF -DDSTACK_SHARED_DIR="$SHARED" >/dev/null
cmake --build "$BUILD" --target fuzz_quote fuzz_collateral

WORK="$BUILD/fuzz-work"
mkdir -p "$WORK/quote" "$WORK/collateral" "$WORK/seed-quote" "$WORK/seed-collateral"
D="$SHARED/testdata/dcap"
cp "$D/tdx_quote" "$D/sgx_quote" "$D/tdx_quote_outdated" "$WORK/seed-quote/"
for f in tdx-quote quote-from-tappd; do
  tr -d ' \n\r' < "$D/$f.hex" | sed 's/^0x//' | perl -ne 'print pack("H*", $_)' > "$WORK/seed-quote/$f.bin"
done
cp "$D"/*_collateral.json "$WORK/seed-collateral/"

status=0
for t in quote collateral; do
  echo "== fuzz_$t for ${SECS}s"
  if ! "$BUILD/bin/fuzz_$t" -max_total_time="$SECS" -timeout=10 -rss_limit_mb=4096 -print_final_stats=1 \
       -artifact_prefix="$WORK/crash-$t-" "$WORK/$t" "$WORK/seed-$t"; then
    echo "fuzz_$t FAILED (crash artifacts in $WORK)"; status=1
  fi
done
exit $status
