#!/usr/bin/env bash
# Starts a loopback ganache node and deploys the dstack contracts with dstack-auth-eth.
# Usage: scripts/eth-local-chain.sh [port] [-- extra 'dstack-auth-eth deploy' flags]
# Prints the deploy JSON and the env lines for dstack-auth-eth; ganache keeps running (its PID is printed).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PORT="${1:-8545}"; shift || true
[[ "${1:-}" == "--" ]] && shift
BUILD="${DSTACK_BUILD_DIR:-$ROOT/build}"
BIN="$BUILD/bin/dstack-auth-eth"
[[ -x "$BIN" ]] || { echo "missing $BIN (build target dstack-auth-eth, or set DSTACK_BUILD_DIR)" >&2; exit 1; }
[[ -f "$BUILD/contracts/DstackKms.json" ]] || node "$ROOT/contracts/build.js" "$BUILD/contracts"
LOG="$(mktemp /tmp/eth-ganache.XXXXXX.log)"
node "$ROOT/node_modules/ganache/dist/node/cli.js" --server.host 127.0.0.1 --server.port "$PORT" \
  --wallet.deterministic --miner.instamine eager -q >"$LOG" 2>&1 &
GPID=$!
URL="http://127.0.0.1:$PORT"
for _ in $(seq 1 100); do
  curl -s --max-time 1 -H 'Content-Type: application/json' \
    -d '{"jsonrpc":"2.0","id":1,"method":"eth_chainId","params":[]}' "$URL" >/dev/null 2>&1 && break
  kill -0 "$GPID" 2>/dev/null || { echo "ganache exited; log: $LOG" >&2; exit 1; }
  sleep 0.2
done
OUT="$("$BIN" deploy --rpc-url "$URL" --contracts-dir "$BUILD/contracts" "$@" 2>/dev/null)" || {
  kill "$GPID"; echo "deploy failed" >&2; exit 1; }
echo "$OUT"
KMS="$(echo "$OUT" | sed -n 's/.*"kmsContractAddr": "\(0x[0-9a-fA-F]*\)".*/\1/p')"
echo "ganache pid $GPID (log $LOG); stop with: kill $GPID"
echo "export ETH_RPC_URL=$URL KMS_CONTRACT_ADDR=$KMS"
