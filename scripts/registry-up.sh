#!/usr/bin/env bash
# Starts Debian's docker-registry (the OCI distribution server) on loopback, storage under a state dir.
# Usage: scripts/registry-up.sh [--state-dir DIR] [--addr 127.0.0.1:5000]
# Env: DSTACK_REGISTRY_STATE (default /var/tmp/dstack-registry), DSTACK_REGISTRY_ADDR (default 127.0.0.1:5000).
# Writes <state>/registry.pid and <state>/registry.log; idempotent (a running registry is left alone).
set -euo pipefail
STATE="${DSTACK_REGISTRY_STATE:-/var/tmp/dstack-registry}"
ADDR="${DSTACK_REGISTRY_ADDR:-127.0.0.1:5000}"
while [ $# -gt 0 ]; do
  case "$1" in
    --state-dir) STATE="$2"; shift 2 ;;
    --addr) ADDR="$2"; shift 2 ;;
    *) echo "registry-up.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
command -v docker-registry >/dev/null || { echo "docker-registry not installed (apt-get install docker-registry; see scripts/install-deps.sh)" >&2; exit 1; }
mkdir -p "$STATE/storage"
PIDFILE="$STATE/registry.pid"
if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
  echo "registry already running (pid $(cat "$PIDFILE")) on $(cat "$STATE/addr" 2>/dev/null || echo "$ADDR")"
  exit 0
fi
cat > "$STATE/config.yml" <<CFG
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $STATE/storage
  delete:
    enabled: true
http:
  addr: $ADDR
CFG
echo "$ADDR" > "$STATE/addr"
setsid docker-registry serve "$STATE/config.yml" >>"$STATE/registry.log" 2>&1 < /dev/null &
echo $! > "$PIDFILE"
for _ in $(seq 1 100); do
  if curl -fsS --max-time 1 "http://$ADDR/v2/" >/dev/null 2>&1; then
    echo "registry up on http://$ADDR (pid $(cat "$PIDFILE"), storage $STATE/storage)"
    exit 0
  fi
  if ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then break; fi
  sleep 0.1
done
echo "registry failed to start on $ADDR; see $STATE/registry.log:" >&2
tail -n 20 "$STATE/registry.log" >&2 || true
kill "$(cat "$PIDFILE")" 2>/dev/null || true
rm -f "$PIDFILE"
exit 1
