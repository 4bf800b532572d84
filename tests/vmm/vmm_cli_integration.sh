#!/usr/bin/env bash
# Integration test: real dstack-vmm + vmm-cli, fake backend runner (tests/vmm/fake-runner.sh).
# Usage: vmm_cli_integration.sh <bin-dir> <source-dir>
set -euo pipefail
BIN=$1; SRC=$2
T=$(mktemp -d /tmp/vmm-it-XXXXXX)
VMM_PID=""; FOLLOW_PID=""
cleanup() {
  [ -n "$FOLLOW_PID" ] && kill "$FOLLOW_PID" 2>/dev/null || true
  [ -n "$VMM_PID" ] && kill "$VMM_PID" 2>/dev/null && wait "$VMM_PID" 2>/dev/null || true
  for f in "$T"/run/*/runner.pid; do [ -f "$f" ] && kill -9 -- "-$(cat "$f")" 2>/dev/null || true; done
  rm -rf "$T"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; echo "--- vmm log"; tail -30 "$T/vmm.log" >&2 || true; exit 1; }
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export DSTACK_VMM_URL="http://127.0.0.1:$PORT"
"$SRC/scripts/make-sim-image.sh" "$T/images" dstack-0.5.5 >/dev/null
cat > "$T/vmm.toml" <<TOML
address = "127.0.0.1"
port = $PORT
run_path = "$T/run"
[image]
path = "$T/images"
[cvm]
sim_runner = "$SRC/tests/vmm/fake-runner.sh"
stop_timeout_secs = 5
[cvm.port_mapping]
range = [{ protocol = "tcp", from = 9000, to = 9200 }]
[cvm.auto_restart]
initial_backoff = 0.3
max_backoff = 1
TOML
start_vmm() {
  (cd "$T" && exec "$BIN/dstack-vmm" -c "$T/vmm.toml" >>"$T/vmm.log" 2>&1) &
  VMM_PID=$!
  for _ in $(seq 100); do curl -sf "$DSTACK_VMM_URL/prpc/Version" >/dev/null && return 0; sleep 0.1; done
  fail "dstack-vmm did not come up"
}
wait_until() { for _ in $(seq 100); do eval "$1" && return 0; sleep 0.1; done; fail "timeout waiting for: $1"; }
alive() { [ -n "$1" ] && [ -d "/proc/$1" ] && ! grep -q '^[0-9]* ([^)]*) Z' "/proc/$1/stat"; }
CLI="$BIN/vmm-cli"
rpid() { wait_until "[ -s \"$T/run/$ID/runner.pid\" ]"; cat "$T/run/$ID/runner.pid"; }
start_vmm

# lsimage, compose (seed flags), deploy (seed flags)
"$CLI" lsimage | grep -q 'dstack-0.5.5' || fail "lsimage"
cat > "$T/docker-compose.yaml" <<'YAML'
services:
  kms:
    image: registry.yourdomain.com/dstack-kms:fixed
    ports:
      - "9100:9100"
YAML
out=$("$CLI" compose --name kms --docker-compose "$T/docker-compose.yaml" --local-key-provider --output "$T/app-compose.json")
hash=$(sha256sum "$T/app-compose.json" | cut -d' ' -f1)
echo "$out" | grep -q "Compose hash: $hash" || fail "compose hash line: $out"
python3 - "$T/app-compose.json" <<'PY' || fail "compose bytes differ from Python json.dumps(indent=4)"
import json, sys
raw = open(sys.argv[1], encoding="utf-8").read()
assert json.dumps(json.loads(raw), indent=4, ensure_ascii=False) == raw
d = json.loads(raw); assert d["local_key_provider_enabled"] is True and d["secure_time"] is False
assert list(d)[:3] == ["manifest_version", "name", "runner"]
PY
"$CLI" compose --name x --docker-compose "$T/docker-compose.yaml" --env-file /dev/null --output "$T/x.json" 2>"$T/err" && fail "--env-file without --kms accepted"
grep -q "requires --kms" "$T/err" || fail "env-file error message"
out=$("$CLI" deploy --name kms --image dstack-0.5.5 --compose "$T/app-compose.json" --vcpu 2 --memory 4096 --disk 20 --port tcp:127.0.0.1:9100:9100)
ID=$(echo "$out" | sed -n 's/^Created VM with ID: //p')
[ -n "$ID" ] || fail "deploy output: $out"
wait_until '"$CLI" lsvm | grep kms | grep -q running'
"$CLI" lsvm --json | python3 -c 'import json,sys; v=json.load(sys.stdin)[0]; assert v["name"]=="kms" and v["status"]=="running"' || fail "lsvm --json"
wait_until '"$CLI" logs --id "$ID" -n 50 | grep -q "RPC server listening"'
"$CLI" logs kms -n 100 | grep -q "KMS CVM booting..." || fail "logs by name"
cmp -s "$T/app-compose.json" "$T/run/$ID/shared/app-compose.json" || fail "app-compose.json not stored verbatim"
# REST views of the seed's troubleshooting section
curl -sf "$DSTACK_VMM_URL/api/instances/kms" | python3 -c 'import json,sys; j=json.load(sys.stdin); assert j["status"]=="running" and j["ports"][0]["host_port"]==9100, j' || fail "/api/instances/kms"
curl -sf "$DSTACK_VMM_URL/api/instances/kms/logs?lines=100" | grep -q "KMS initializing..." || fail "/api/instances/kms/logs"
curl -sf "$DSTACK_VMM_URL/prpc/Teepod.Status" | grep -q '"port_mapping_enabled":true' || fail "Teepod. prefix"

# logs --follow streams new lines
"$CLI" logs --id "$ID" -n 1 --follow > "$T/follow.out" 2>&1 &
FOLLOW_PID=$!
sleep 2
kill "$FOLLOW_PID"; wait "$FOLLOW_PID" 2>/dev/null || true; FOLLOW_PID=""
[ "$(grep -c '^tick' "$T/follow.out")" -ge 3 ] || fail "follow did not stream ticks: $(cat "$T/follow.out")"

# bad input: clear errors, exit code != 0, nothing created
ndirs() { ls -A "$T/run" | wc -l; }
before=$(ndirs)
expect_fail() { local needle=$1; shift; if "$@" >"$T/out" 2>"$T/err"; then fail "accepted: $*"; fi; grep -q -- "$needle" "$T/err" || fail "error for '$*' lacks '$needle': $(cat "$T/err")"; [ "$(ndirs)" = "$before" ] || fail "half-created VM after: $*"; }
expect_fail "already exists" "$CLI" deploy --name kms --image dstack-0.5.5 --compose "$T/app-compose.json" --port tcp:127.0.0.1:9101:9100
expect_fail "already used by VM kms" "$CLI" deploy --name kms2 --image dstack-0.5.5 --compose "$T/app-compose.json" --port tcp:127.0.0.1:9100:9100
expect_fail "outside the allowed range" "$CLI" deploy --name kms2 --image dstack-0.5.5 --compose "$T/app-compose.json" --port tcp:127.0.0.1:30000:9100
expect_fail "not found" "$CLI" deploy --name kms2 --image dstack-9.9.9 --compose "$T/app-compose.json"
sed 's/"runner": "docker-compose"/"runner": "podman-magic"/' "$T/app-compose.json" > "$T/bad-runner.json"
expect_fail "unknown runner" "$CLI" deploy --name kms2 --image dstack-0.5.5 --compose "$T/bad-runner.json"
expect_fail "invalid port mapping" "$CLI" deploy --name kms2 --image dstack-0.5.5 --compose "$T/app-compose.json" --port tcp:99999:1

# crash -> reported and restarted
P1=$(rpid)
kill -9 "$P1"
wait_until '[ -f "$T/run/$ID/runner.pid" ] && [ "$(cat "$T/run/$ID/runner.pid")" != "$P1" ]'
"$CLI" info "$ID" --json | grep -q '"vm.exited"' || fail "crash not reported in events"
wait_until '"$CLI" lsvm | grep kms | grep -q running'

# stop / start
P2=$(rpid)
"$CLI" stop "$ID" >/dev/null
"$CLI" lsvm | grep kms | grep -q stopped || fail "not stopped"
alive "$P2" && fail "runner still alive after stop"
"$CLI" start kms >/dev/null
wait_until '[ -f "$T/run/$ID/runner.pid" ]'

# VMM restart (SIGKILL): the VM is reloaded and restarted, the old runner does not linger
P3=$(rpid)
kill -9 "$VMM_PID"; wait "$VMM_PID" 2>/dev/null || true; VMM_PID=""
start_vmm
wait_until '"$CLI" lsvm | grep kms | grep -q running'
wait_until '! alive "$P3"'

# remove: nothing left
P4=$(rpid)
"$CLI" remove kms >/dev/null
[ -e "$T/run/$ID" ] && fail "vm dir left after remove"
alive "$P4" && fail "runner alive after remove"
pgrep -f "$T/run/$ID" >/dev/null && fail "process referencing the VM dir left"
"$CLI" lsvm | grep -q kms && fail "VM still listed"
echo "PASS"
