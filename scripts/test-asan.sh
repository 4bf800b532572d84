#!/usr/bin/env bash
# Builds the unit-test binaries with AddressSanitizer + UndefinedBehaviorSanitizer and runs them.
# Integration tests that start daemons run in the normal build (`make test`); here we want memory errors in the
# parsers, crypto, RPC and key logic to fail loudly.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${ASAN_BUILD:-build-asan}
cmake -S . -B "$BUILD" -G Ninja -DDSTACK_WERROR=ON -DDSTACK_SANITIZE=ON -DDSTACK_BENCH=OFF >/dev/null
# Unit tests of the code that parses untrusted input or handles keys: crypto, RPC, quotes/collateral, event logs,
# SCALE, RA-TLS, KMS keys/cert store, auth policies, ABI codec, key-provider framing.
wanted=(crypto_test rpc_http_test test_quote test_verify attest_eventlog_test attest_scale_test attest_sim_test
        test_keyprovider_protocol ratls_test kms_unit_test auth_test ethauth_abi_test)
available=$(ninja -C "$BUILD" -t targets all 2>/dev/null | sed -n 's/^\([A-Za-z0-9_]*\): phony$/\1/p')
targets=()
for t in "${wanted[@]}"; do
  if grep -qx "$t" <<<"$available"; then targets+=("$t"); fi
done
echo "ASan targets: ${targets[*]}"
cmake --build "$BUILD" -j "$(nproc)" --target "${targets[@]}"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
regex=$(IFS='|'; echo "${targets[*]}")
failed=0
for t in "${targets[@]}"; do
  echo "--- $t"
  "$BUILD/tests/$t" --gtest_brief=1 || failed=1
done
exit $failed
