#!/usr/bin/env bash
# End-to-end test of the seed's "Manual Deployment" (shared/seed/kms-cvm-deployment.md) on loopback, with our
# binaries and free ports, all state under one temp dir:
#   registry (scripts/registry-up.sh) + key provider (dstack-key-provider, simulated platform) + dstack-vmm (sim
#   backend) up; KMS image built and pushed (scripts/build-kms-image.sh); vmm-cli compose / deploy; lsvm; logs
#   milestones; GetMeta answers (< 1 s) with ca_cert + k256_pubkey; the bootstrap quote verifies and binds the keys
#   (dstack-verify kms); stop + start keeps the CA (volume persisted); remove leaves no process; bad input is
#   refused with clear errors and nothing half-created. Prints the deploy -> GetMeta ready time.
# Usage: tests/e2e/seed_flow.sh [BIN_DIR]   (default $DSTACK_BIN_DIR or build/bin)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
BIN="$(cd "${1:-${DSTACK_BIN_DIR:-$ROOT/build/bin}}" && pwd)"
for b in dstack-vmm vmm-cli dstack-cvm-sim dstack-guest-agent dstack-kms dstack-key-provider dstack-tdx-sim dstack-verify; do
  [ -x "$BIN/$b" ] || { echo "FAIL: missing $BIN/$b (build all targets first)"; exit 1; }
done
for t in docker-registry podman skopeo umoci bwrap curl jq python3; do
  command -v "$t" >/dev/null || { echo "FAIL: $t not installed (scripts/install-deps.sh)"; exit 1; }
done

T="$(mktemp -d /tmp/dstack-e2e.XXXXXX)"
VMM_PID="" KP_PID=""
log() { echo "[e2e $(date +%T.%3N)] $*"; }
fail() { echo "FAIL: $*"; exit 1; }

# Kills a process group (runner + its children) by PGID: TERM, 5 s grace, KILL.
kill_group() {
  local pg="$1"
  kill -TERM -- "-$pg" 2>/dev/null || return 0
  for _ in $(seq 1 50); do kill -0 -- "-$pg" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL -- "-$pg" 2>/dev/null || true
}
kill_pid() {
  local p="$1"
  [ -n "$p" ] || return 0
  kill -TERM "$p" 2>/dev/null || return 0
  for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$p" 2>/dev/null || true
}
cleanup() {
  local rc=$?
  set +e
  if [ $rc -ne 0 ]; then
    echo "---- dstack-vmm log (tail) ----"; tail -n 40 "$T/vmm.log" 2>/dev/null
    for s in "$T"/vmm/run/*/serial.log; do [ -f "$s" ] && { echo "---- $s (tail) ----"; tail -n 60 "$s"; }; done
    echo "---- key provider log (tail) ----"; tail -n 20 "$T/kp.log" 2>/dev/null
  fi
  # VM runners (each in its own process group; PID files written by dstack-vmm), then the daemons.
  for pf in "$T"/vmm/run/*/runner.pid; do [ -f "$pf" ] && kill_group "$(cat "$pf")"; done
  kill_pid "$VMM_PID"
  for pf in "$T"/vmm/run/*/runner.pid; do [ -f "$pf" ] && kill_group "$(cat "$pf")"; done
  kill_pid "$KP_PID"
  [ -f "$T/registry/registry.pid" ] && "$ROOT/scripts/registry-down.sh" --state-dir "$T/registry" >/dev/null
  podman rmi -f "127.0.0.1:${REG_PORT:-0}/dstack-kms:fixed" "127.0.0.1:${REG_PORT:-0}/dstack-kms:latest" >/dev/null 2>&1
  rm -rf "$T"
  [ $rc -eq 0 ] && echo "PASS: seed flow" || echo "seed flow FAILED (rc $rc)"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
now_ms() { date +%s%3N; }
wait_until() {  # wait_until <timeout_s> <cmd...>   (commands and shell functions)
  local deadline=$(( $(date +%s) + $1 )); shift
  until "$@" >/dev/null 2>&1; do [ "$(date +%s)" -ge "$deadline" ] && return 1; sleep 0.1; done
}
REG_PORT=$(free_port); KP_PORT=$(free_port); VMM_PORT=$(free_port); KMS_PORT=$(free_port)
REG="127.0.0.1:$REG_PORT"
export DSTACK_VMM_URL="http://127.0.0.1:$VMM_PORT"
CLI="$BIN/vmm-cli"

# ---- 1. registry ----
log "registry on $REG"
"$ROOT/scripts/registry-up.sh" --state-dir "$T/registry" --addr "$REG"

# ---- 2. key provider (simulated SGX on the platform the CVMs use: <run_path>/../sim-platform) ----
mkdir -p "$T/vmm/run" "$T/images" "$T/kp" "$T/work"
"$BIN/dstack-tdx-sim" init --dir "$T/vmm/sim-platform" >/dev/null
setsid "$BIN/dstack-key-provider" --listen "127.0.0.1:$KP_PORT" --sealing-key-file "$T/kp/sealing.key" \
  --sim-platform-dir "$T/vmm/sim-platform" --trust-sim-root --no-intel-root >"$T/kp.log" 2>&1 </dev/null &
KP_PID=$!
kp_listening() { (exec 3<>"/dev/tcp/127.0.0.1/$KP_PORT") 2>/dev/null; }
wait_until 20 kp_listening || fail "key provider did not listen on $KP_PORT"
log "key provider on 127.0.0.1:$KP_PORT (pid $KP_PID)"

# ---- 3. dstack-vmm ----
"$ROOT/scripts/make-sim-image.sh" "$T/images" dstack-0.5.5 >/dev/null
cat >"$T/vmm.toml" <<EOF
address = "127.0.0.1"
port = $VMM_PORT
run_path = "$T/vmm/run"
kms_url = ""
[image]
path = "$T/images"
[cvm]
backend = "sim"
sim_runner = "$BIN/dstack-cvm-sim"
kms_urls = []
gateway_urls = []
docker_registry = "$REG"
[cvm.port_mapping]
enabled = true
address = "127.0.0.1"
range = [ { protocol = "tcp", from = 1024, to = 65535 } ]
[cvm.auto_restart]
enabled = false
[key_provider]
enabled = true
address = "127.0.0.1"
port = $KP_PORT
EOF
(cd "$T" && exec setsid "$BIN/dstack-vmm" -c "$T/vmm.toml" >"$T/vmm.log" 2>&1 </dev/null) &
VMM_PID=$!
wait_until 20 curl -fsS --max-time 1 "$DSTACK_VMM_URL/prpc/Version" || fail "dstack-vmm did not answer on $DSTACK_VMM_URL"
log "dstack-vmm on $DSTACK_VMM_URL (pid $VMM_PID)"

# ---- 4. KMS image -> registry (seed step 1) ----
"$ROOT/scripts/build-kms-image.sh" --bin-dir "$BIN" --registry "$REG" --tag fixed
curl -fsS "http://$REG/v2/dstack-kms/tags/list" | jq -e '.tags | index("fixed")' >/dev/null || fail "dstack-kms:fixed not listed"

# ---- 5. compose (seed step 3-4) ----
cd "$T/work"
# The seed's docker-compose.yaml (images/kms/docker-compose.yaml, verbatim from step 3) with our registry + domain.
sed -e "s#registry.yourdomain.com/dstack-kms:fixed#$REG/dstack-kms:fixed#" -e "s#kms.yourdomain.com#kms.e2e.local#" \
  "$ROOT/images/kms/docker-compose.yaml" > docker-compose.yaml
grep -q "image: $REG/dstack-kms:fixed" docker-compose.yaml || fail "image substitution in docker-compose.yaml failed"
"$CLI" compose --name kms --docker-compose docker-compose.yaml --local-key-provider --output app-compose.json
jq -e '.runner == "docker-compose" and .local_key_provider_enabled == true' app-compose.json >/dev/null \
  || fail "app-compose.json lacks runner/local_key_provider_enabled"

# ---- 6. deploy (seed step 5) and time to GetMeta ----
meta() { curl -sk --max-time 2 "https://127.0.0.1:$KMS_PORT/prpc/KMS.GetMeta"; }
meta_ok() { meta | jq -e '(.ca_cert | startswith("-----BEGIN CERTIFICATE")) and (.k256_pubkey | length == 66)'; }
T0=$(now_ms)
"$CLI" deploy --name kms --image dstack-0.5.5 --compose app-compose.json --vcpu 2 --memory 4096 --disk 20 \
  --port "tcp:127.0.0.1:$KMS_PORT:9100"
wait_until 120 meta_ok || fail "GetMeta did not answer with ca_cert + k256_pubkey within 120 s"
T1=$(now_ms)
READY_MS=$((T1 - T0))
echo "DEPLOY_TO_GETMETA_MS=$READY_MS"
log "deploy -> GetMeta ready: $READY_MS ms"

# ---- 7. lsvm / logs (seed step 6) ----
"$CLI" lsvm | tee "$T/lsvm.txt"
grep -E '\bkms\b' "$T/lsvm.txt" | grep -qi running || fail "lsvm does not show kms running"
"$CLI" logs --id kms -n 500 > "$T/logs.txt"
for m in "Local key provider quote verified" "KMS initializing..." "Auto-bootstrap enabled for domain kms.e2e.local" "Generating certificates..." \
         "RPC server listening on 0.0.0.0:9100"; do
  grep -qF "$m" "$T/logs.txt" || fail "vmm-cli logs lacks the milestone '$m'"
done
log "logs show the seed's boot milestones"

# ---- 8. GetMeta (seed step 7): < 1 s, ca_cert + k256_pubkey, bootstrap quote verifies and binds the keys ----
GM_S=$(curl -sk -o "$T/meta.json" -w '%{time_total}' --max-time 5 "https://127.0.0.1:$KMS_PORT/prpc/KMS.GetMeta")
log "GetMeta answered in ${GM_S} s"
python3 -c "import sys; sys.exit(0 if float('$GM_S') < 1.0 else 1)" || fail "GetMeta took ${GM_S} s (>= 1 s)"
jq -e '.bootstrap_info.attestation | length > 0' "$T/meta.json" >/dev/null || fail "GetMeta has no bootstrap_info attestation"
"$BIN/dstack-verify" kms --url "https://127.0.0.1:$KMS_PORT" --sim-platform "$T/vmm/sim-platform" --allow-sim-root \
  --max-ms 1000 | tee "$T/verify.txt" || fail "dstack-verify kms rejected the deployment"
CA1=$(jq -r .ca_cert "$T/meta.json")
K1=$(jq -r .k256_pubkey "$T/meta.json")

# ---- 9. stop + start: same CA (kms-certs volume persisted) ----
vm_status() { "$CLI" lsvm --json | jq -r '[.[] | select(.name=="kms") | .status][0]'; }
is_stopped() { [ "$(vm_status)" = stopped ]; }
"$CLI" stop kms
wait_until 30 is_stopped || fail "kms did not reach 'stopped' (status: $(vm_status))"
meta >/dev/null 2>&1 && fail "GetMeta still answers after stop"
"$CLI" start kms
wait_until 120 meta_ok || fail "GetMeta did not come back after start"
CA2=$(meta | jq -r .ca_cert); K2=$(meta | jq -r .k256_pubkey)
[ "$CA1" = "$CA2" ] && [ "$K1" = "$K2" ] || fail "CA / k256 changed across stop+start (volume not persisted)"
log "stop + start: same ca_cert and k256_pubkey"

# ---- 9b. an app CVM with key provider kms, served by the KMS CVM (spec §9 step 4 through the KMS relay):
# RA-TLS GetAppKey with the KMS's attested server certificate verified by the guest ----
APP_PORT=$(free_port)
sed -e "s#registry.yourdomain.com/dstack-kms:fixed#$REG/dstack-kms:fixed#" -e "s#kms.yourdomain.com#app.e2e.local#" \
  "$ROOT/images/kms/docker-compose.yaml" > app-compose.yaml
"$CLI" compose --name app --docker-compose app-compose.yaml --kms --output app-kms-compose.json >/dev/null
jq -e '.kms_enabled == true' app-kms-compose.json >/dev/null || fail "compose --kms did not enable the KMS"
"$CLI" deploy --name app --image dstack-0.5.5 --compose app-kms-compose.json --port "tcp:127.0.0.1:$APP_PORT:9100" \
  --kms-url "https://127.0.0.1:$KMS_PORT"
app_meta_ok() { curl -sk --max-time 2 "https://127.0.0.1:$APP_PORT/prpc/KMS.GetMeta" | jq -e '.k256_pubkey | length == 66'; }
wait_until 120 app_meta_ok || fail "the app CVM (key provider kms) did not come up"
"$CLI" logs --id app -n 500 > "$T/app-logs.txt"
for m in "Requesting app keys from KMS https://127.0.0.1:$KMS_PORT" "KMS server attestation verified" "Key provider kms ready"; do
  grep -qF "$m" "$T/app-logs.txt" || fail "app CVM logs lack '$m'"
done
APP_KEYS=$(ls "$T"/vmm/run/*/sim/dstack/.host-shared/.appkeys.json | xargs grep -l '"Kms"' | head -n 1)
[ -n "$APP_KEYS" ] || fail "no .appkeys.json with key_provider Kms"
jq -e --arg u "https://127.0.0.1:$KMS_PORT/prpc" '.key_provider.Kms.url == $u and (.k256_signature | length == 130)' \
  "$APP_KEYS" >/dev/null || fail "app keys are not from the KMS CVM: $(jq -c '.key_provider | keys' "$APP_KEYS")"
"$CLI" remove app
log "app CVM got its keys from the KMS CVM over RA-TLS (server attestation verified)"

# ---- 10. bad input: clear errors, nothing half-created ----
snapshot() { (cd "$T/vmm/run" && find . -maxdepth 1 | sort); }
BEFORE=$(snapshot)
expect_error() {  # expect_error <pattern> <cli args...>
  local pat="$1"; shift
  local out
  if out=$("$CLI" "$@" 2>&1); then fail "vmm-cli $* succeeded, expected an error matching '$pat'"; fi
  echo "$out" | grep -qiE "$pat" || fail "vmm-cli $*: error does not mention '$pat': $out"
  [ "$(snapshot)" = "$BEFORE" ] || fail "vmm-cli $* left something in the run path"
  log "refused as expected: $(echo "$out" | tail -n 1)"
}
jq '.runner = "podman-compose"' app-compose.json > bad-runner.json
expect_error 'runner' deploy --name badrunner --image dstack-0.5.5 --compose bad-runner.json --port "tcp:127.0.0.1:$(free_port):9100"
expect_error 'range|allowed' deploy --name badport --image dstack-0.5.5 --compose app-compose.json --port "tcp:127.0.0.1:80:9100"
expect_error 'already exists|duplicate' deploy --name kms --image dstack-0.5.5 --compose app-compose.json --port "tcp:127.0.0.1:$(free_port):9100"
sed "s#$REG/dstack-kms:fixed#$REG/dstack-kms-missing:fixed#" docker-compose.yaml > missing.yaml
"$CLI" compose --name missing --docker-compose missing.yaml --local-key-provider --output missing.json >/dev/null
expect_error 'not found|registry' deploy --name missing --image dstack-0.5.5 --compose missing.json --port "tcp:127.0.0.1:$(free_port):9100"

# ---- 11. remove: nothing left running (checked by PID) ----
VM_DIR=$(dirname "$(ls "$T"/vmm/run/*/runner.pid | head -n 1)")
RUNNER=$(cat "$VM_DIR/runner.pid")
descendants() { local p; for p in $(ps -o pid= --ppid "$1"); do echo "$p"; descendants "$p"; done; }
TREE="$RUNNER $(descendants "$RUNNER" | tr '\n' ' ')"
[ "$(echo "$TREE" | wc -w)" -ge 3 ] || fail "runner $RUNNER has no sandbox processes? ($TREE)"
"$CLI" remove kms
all_gone() { local p; for p in $TREE; do kill -0 "$p" 2>/dev/null && return 1; done; return 0; }
wait_until 20 all_gone \
  || fail "processes of the removed CVM still alive: $(for p in $TREE; do kill -0 "$p" 2>/dev/null && echo -n "$p "; done)"
[ ! -d "$VM_DIR" ] || fail "VM dir $VM_DIR still exists after remove"
"$CLI" lsvm | grep -qE '\bkms\b' && fail "lsvm still lists kms after remove"
log "remove: the $(echo "$TREE" | wc -w) processes of the CVM are gone, its dir too"
echo "RESULT deploy_to_getmeta_ms=$READY_MS getmeta_s=$GM_S"
