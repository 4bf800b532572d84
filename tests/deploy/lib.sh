# Shared helpers of the deployment integration tests (sourced). Each test gets its own state dir under /tmp and
# free ports, so it never collides with a running quickstart (default ports / ~/.dstack-cpp) or another test.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export DSTACK_BIN_DIR="${DSTACK_BIN_DIR:-$REPO/build/bin}"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

T0=$(date +%s)
log() { echo "[$(basename "$0") +$(( $(date +%s) - T0 ))s] $*"; }
fail() { echo "[$(basename "$0")] FAIL: $*" >&2; exit 1; }

setup_env() {
  for b in dstack-vmm dstack-cvm-sim vmm-cli dstack-kms dstack-key-provider dstack-tdx-sim dstack-verify; do
    [ -x "$DSTACK_BIN_DIR/$b" ] || fail "missing $DSTACK_BIN_DIR/$b: build the whole tree first (make build)"
  done
  export DSTACK_STATE_DIR
  DSTACK_STATE_DIR="$(mktemp -d /tmp/dstack-deploy-test.XXXXXX)"
  export DSTACK_VMM_PORT DSTACK_KP_PORT DSTACK_KMS_PORT DSTACK_REGISTRY_ADDR
  DSTACK_VMM_PORT="$(free_port)"
  DSTACK_KP_PORT="$(free_port)"
  DSTACK_KMS_PORT="$(free_port)"
  DSTACK_REGISTRY_ADDR="127.0.0.1:$(free_port)"
  export DSTACK_QUICKSTART_TIMEOUT="${DSTACK_QUICKSTART_TIMEOUT:-400}"
  log "state $DSTACK_STATE_DIR, VMM :$DSTACK_VMM_PORT, key provider :$DSTACK_KP_PORT, KMS :$DSTACK_KMS_PORT, registry $DSTACK_REGISTRY_ADDR"
  trap teardown_env EXIT
}

teardown_env() {
  local rc=$?
  set +e
  # Remove the VM and stop only the processes this test started (PID files in its state dir).
  bash "$REPO/scripts/quickstart.sh" --stop >/dev/null 2>&1
  bash "$REPO/scripts/host-services.sh" stop >/dev/null 2>&1
  for t in fixed latest; do podman rmi -f "$DSTACK_REGISTRY_ADDR/dstack-kms:$t" >/dev/null 2>&1; done
  if [ "$rc" = 0 ]; then
    rm -rf "$DSTACK_STATE_DIR"
  else
    echo "[$(basename "$0")] state kept for debugging: $DSTACK_STATE_DIR (logs/, vm/*/)" >&2
    tail -n 20 "$DSTACK_STATE_DIR"/logs/*.log >&2 2>/dev/null
  fi
  exit "$rc"
}

expect_in() {  # file pattern description
  grep -Eq -- "$2" "$1" || { echo "---- output ($1):" >&2; tail -n 60 "$1" >&2; fail "$3: pattern '$2' not found"; }
}
