#!/usr/bin/env bash
# Stops the registry started by scripts/registry-up.sh (by its PID file). Storage is kept.
# Usage: scripts/registry-down.sh [--state-dir DIR]   (env DSTACK_REGISTRY_STATE, default /var/tmp/dstack-registry)
set -euo pipefail
STATE="${DSTACK_REGISTRY_STATE:-/var/tmp/dstack-registry}"
if [ "${1:-}" = "--state-dir" ]; then STATE="$2"; fi
PIDFILE="$STATE/registry.pid"
if [ ! -f "$PIDFILE" ]; then echo "no registry PID file at $PIDFILE; nothing to stop"; exit 0; fi
PID="$(cat "$PIDFILE")"
if kill -0 "$PID" 2>/dev/null; then
  kill "$PID"
  for _ in $(seq 1 50); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$PID" 2>/dev/null && kill -9 "$PID" 2>/dev/null || true
  echo "registry (pid $PID) stopped"
else
  echo "registry (pid $PID) was not running"
fi
rm -f "$PIDFILE"
