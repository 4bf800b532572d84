#!/usr/bin/env bash
# One command from a built tree to a verified KMS CVM (what `make run` runs after installing deps and building):
#   1. start the host services (registry, key provider, VMM)        scripts/host-services.sh start
#   2. build the KMS OCI image and push it to the local registry     scripts/build-kms-image.sh
#   3. write docker-compose.yaml + app-compose.json (the seed's)     vmm-cli compose --local-key-provider
#   4. deploy the KMS CVM through the VMM                            vmm-cli deploy --port tcp:127.0.0.1:9100:9100
#   5. wait for KMS.GetMeta (bounded, with progress)
#   6. print GetMeta and the verdict of `dstack-verify kms`
# A second run with the KMS already up only re-verifies. `--stop` removes the VM and stops the services.
#
# Usage: scripts/quickstart.sh [--stop] [--state-dir DIR]
# Environment (optional): DSTACK_STATE_DIR (~/.dstack-cpp), DSTACK_BIN_DIR (<repo>/build/bin), DSTACK_VMM_PORT (9080),
#   DSTACK_KP_PORT (3443), DSTACK_REGISTRY_ADDR (127.0.0.1:5000), DSTACK_KMS_PORT (9100),
#   DSTACK_KMS_DOMAIN (kms.dstack.local), DSTACK_KMS_VM_NAME (kms), DSTACK_QUICKSTART_TIMEOUT (seconds, 300),
#   DSTACK_QUICKSTART_MAX_RESTARTS (give up when the KMS container crash-loops this often, 8).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STOP=0
while [ $# -gt 0 ]; do
  case "$1" in
    --stop) STOP=1; shift ;;
    --state-dir) export DSTACK_STATE_DIR="$2"; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "quickstart.sh: unknown argument $1 (usage: $0 [--stop] [--state-dir DIR])" >&2; exit 2 ;;
  esac
done
export DSTACK_STATE_DIR="${DSTACK_STATE_DIR:-$HOME/.dstack-cpp}"
export DSTACK_BIN_DIR="${DSTACK_BIN_DIR:-$ROOT/build/bin}"
export DSTACK_VMM_PORT="${DSTACK_VMM_PORT:-9080}"
export DSTACK_KP_PORT="${DSTACK_KP_PORT:-3443}"
export DSTACK_REGISTRY_ADDR="${DSTACK_REGISTRY_ADDR:-127.0.0.1:5000}"
STATE="$DSTACK_STATE_DIR"
BIN="$DSTACK_BIN_DIR"
KMS_PORT="${DSTACK_KMS_PORT:-9100}"
KMS_DOMAIN="${DSTACK_KMS_DOMAIN:-kms.dstack.local}"
VM_NAME="${DSTACK_KMS_VM_NAME:-kms}"
TIMEOUT="${DSTACK_QUICKSTART_TIMEOUT:-300}"
MAX_RESTARTS="${DSTACK_QUICKSTART_MAX_RESTARTS:-8}"
GUEST_IMAGE="${DSTACK_GUEST_IMAGE:-dstack-0.5.5}"
VMM_URL="http://127.0.0.1:$DSTACK_VMM_PORT"
KMS_URL="https://127.0.0.1:$KMS_PORT"
IMAGE_REF="$DSTACK_REGISTRY_ADDR/dstack-kms:fixed"
DEPLOY_DIR="$STATE/kms-deploy"
T0=$(date +%s)

step() { echo; echo "==> [$1/6] $2  (+$(( $(date +%s) - T0 ))s)"; }
info() { echo "    $*"; }
die() { echo "quickstart: ERROR: $*" >&2; exit 1; }
vmm_up() { curl -fsS --max-time 2 -X POST -H 'Content-Type: application/json' -d '{}' "$VMM_URL/prpc/Version?json" >/dev/null 2>&1; }
vm_json() { curl -fsS --max-time 5 "$VMM_URL/api/instances/$VM_NAME" 2>/dev/null; }
getmeta() { curl -sk --max-time "${1:-5}" -X POST -H 'Content-Type: application/json' -d '{}' "$KMS_URL/prpc/KMS.GetMeta?json"; }
kms_up() { getmeta 5 2>/dev/null | jq -e '.ca_cert | length > 0' >/dev/null 2>&1; }

if [ "$STOP" = 1 ]; then
  echo "==> stopping the quickstart deployment (state $STATE)"
  if vmm_up; then
    if vm_json >/dev/null; then
      "$BIN/vmm-cli" --url "$VMM_URL" remove "$VM_NAME" || die "could not remove VM $VM_NAME (see $STATE/logs/vmm.log)"
    else
      info "no VM named $VM_NAME"
    fi
  else
    info "VMM not running on $VMM_URL; no VM to remove"
  fi
  bash "$ROOT/scripts/host-services.sh" stop
  echo "quickstart: stopped (state kept in $STATE; delete it for a fresh start)"
  exit 0
fi

for b in dstack-vmm dstack-cvm-sim vmm-cli dstack-kms dstack-key-provider dstack-tdx-sim dstack-verify; do
  [ -x "$BIN/$b" ] || die "missing $BIN/$b: run \`make run\` (installs deps and builds) or \`make build\` first"
done
for t in curl jq podman skopeo umoci bwrap docker-registry; do
  command -v "$t" >/dev/null || die "$t is not installed: run \`make deps\` (scripts/install-deps.sh)"
done

step 1 "host services: registry $DSTACK_REGISTRY_ADDR, key provider 127.0.0.1:$DSTACK_KP_PORT, VMM $VMM_URL"
bash "$ROOT/scripts/host-services.sh" start 2>&1 | sed 's/^/    /' || die "host services did not start (see messages above)"

already=0
if kms_up && vm_json >/dev/null; then
  already=1
  step 2 "KMS CVM '$VM_NAME' already answers on $KMS_URL: skipping image build and deployment"
else
  step 2 "KMS image $IMAGE_REF"
  stamp="$STATE/kms-image.stamp"
  tags="$(curl -fsS --max-time 5 "http://$DSTACK_REGISTRY_ADDR/v2/dstack-kms/tags/list" 2>/dev/null || true)"
  if echo "$tags" | jq -e '.tags | index("fixed")' >/dev/null 2>&1 && [ -f "$stamp" ] && [ ! "$BIN/dstack-kms" -nt "$stamp" ]; then
    info "already in the registry and up to date: $tags"
  else
    bash "$ROOT/scripts/build-kms-image.sh" --bin-dir "$BIN" --registry "$DSTACK_REGISTRY_ADDR" 2>&1 | sed 's/^/    /' ||
      die "building/pushing the KMS image failed (see above)"
    touch "$stamp"
  fi

  step 3 "compose files in $DEPLOY_DIR (domain $KMS_DOMAIN)"
  mkdir -p "$DEPLOY_DIR"
  cat > "$DEPLOY_DIR/docker-compose.yaml.new" <<EOF
services:
  kms:
    image: $IMAGE_REF
    ports:
      - "9100:9100"
    volumes:
      - /var/run/dstack.sock:/var/run/dstack.sock
      - kms-certs:/etc/kms/certs
    environment:
      - RUST_LOG=info
      - KMS_DOMAIN=$KMS_DOMAIN
    restart: unless-stopped
volumes:
  kms-certs:
EOF
  mv "$DEPLOY_DIR/docker-compose.yaml.new" "$DEPLOY_DIR/docker-compose.yaml"
  "$BIN/vmm-cli" --url "$VMM_URL" compose --name "$VM_NAME" --docker-compose "$DEPLOY_DIR/docker-compose.yaml" \
    --local-key-provider --output "$DEPLOY_DIR/app-compose.json" 2>&1 | sed 's/^/    /' || die "vmm-cli compose failed"

  step 4 "deploy CVM '$VM_NAME' (image $GUEST_IMAGE, port tcp:127.0.0.1:$KMS_PORT:9100)"
  if cur="$(vm_json)"; then
    st="$(echo "$cur" | jq -r .status)"
    info "VM $VM_NAME exists (status $st)"
    if [ "$st" != running ]; then
      "$BIN/vmm-cli" --url "$VMM_URL" start "$VM_NAME" 2>&1 | sed 's/^/    /' || die "vmm-cli start $VM_NAME failed"
    fi
  else
    "$BIN/vmm-cli" --url "$VMM_URL" deploy --name "$VM_NAME" --image "$GUEST_IMAGE" \
      --compose "$DEPLOY_DIR/app-compose.json" --vcpu 2 --memory 4096 --disk 20 \
      --port "tcp:127.0.0.1:$KMS_PORT:9100" 2>&1 | sed 's/^/    /' ||
      die "vmm-cli deploy failed (see above; VMM log $STATE/logs/vmm.log)"
  fi

  step 5 "waiting for KMS.GetMeta on $KMS_URL (up to ${TIMEOUT}s)"
  deadline=$(( $(date +%s) + TIMEOUT ))
  last=""
  while ! kms_up; do
    now=$(date +%s)
    if [ "$now" -ge "$deadline" ]; then
      echo "quickstart: ERROR: the KMS did not answer GetMeta within ${TIMEOUT}s. VM state:" >&2
      vm_json | jq '{status, boot_progress, boot_error, ports}' >&2 || true
      echo "last console lines ($VMM_URL/api/instances/$VM_NAME/logs?lines=30):" >&2
      curl -fsS --max-time 5 "$VMM_URL/api/instances/$VM_NAME/logs?lines=30" >&2 || true
      exit 1
    fi
    v="$(vm_json || echo '{}')"
    st="$(echo "$v" | jq -r '.status // "?"')"
    prog="$(echo "$v" | jq -r '.boot_progress // ""')"
    err="$(echo "$v" | jq -r '.boot_error // ""')"
    if [ -n "$err" ]; then
      echo "quickstart: ERROR: CVM boot failed: $err" >&2
      curl -fsS --max-time 5 "$VMM_URL/api/instances/$VM_NAME/logs?lines=30" >&2 || true
      exit 1
    fi
    tail5="$(curl -fsS --max-time 3 "$VMM_URL/api/instances/$VM_NAME/logs?lines=6" 2>/dev/null || true)"
    # Show the most telling recent console line: an error if there is one, else the last line.
    line="$(echo "$tail5" | grep -Ei 'error|fail' | tail -n 1 || true)"
    [ -n "$line" ] || line="$(echo "$tail5" | tail -n 1)"
    line="$(echo "$line" | cut -c1-140)"
    restarts="$(echo "$tail5" | sed -n 's/.*restart #\([0-9]*\).*/\1/p' | tail -n 1)"
    if [ -n "$restarts" ] && [ "$restarts" -ge "$MAX_RESTARTS" ]; then
      echo "quickstart: ERROR: the KMS container keeps exiting (restart #$restarts). Last console lines:" >&2
      curl -fsS --max-time 5 "$VMM_URL/api/instances/$VM_NAME/logs?lines=30" >&2 || true
      echo "quickstart: see docs/OPERATIONS.md (Troubleshooting); fix, then re-run (or make stop first)" >&2
      exit 1
    fi
    msg="status=$st progress=${prog:--} | ${line}"
    if [ "$msg" != "$last" ]; then info "[$(( now - T0 ))s] $msg"; last="$msg"; fi
    sleep 2
  done
fi

step 6 "GetMeta and verification"
meta="$(getmeta 10)" || die "GetMeta on $KMS_URL failed"
echo "$meta" | jq '{ca_cert: (.ca_cert | split("\n")[0] + "..."), k256_pubkey, allow_any_upgrade, is_dev, gateway_app_id,
  kms_contract_address, chain_id, app_auth_implementation,
  bootstrap_info: (if .bootstrap_info then {ca_pubkey: .bootstrap_info.ca_pubkey, k256_pubkey: .bootstrap_info.k256_pubkey,
  attestation: ((.bootstrap_info.attestation | length / 2 | tostring) + " bytes")} else null end)}' | sed 's/^/    /'
echo "    (full GetMeta saved to $DEPLOY_DIR/getmeta.json; keep it as the bootstrap-info backup)"
mkdir -p "$DEPLOY_DIR"
echo "$meta" > "$DEPLOY_DIR/getmeta.json"
echo
set +e
"$BIN/dstack-verify" kms --url "$KMS_URL" --sim-platform "$STATE/sim-platform" --allow-sim-root | sed 's/^/    /'
rc=${PIPESTATUS[0]}
set -e
echo
if [ "$rc" = 0 ]; then
  echo "quickstart: KMS CVM '$VM_NAME' at $KMS_URL verified: PASS ($([ $already = 1 ] && echo re-verified || echo deployed) in $(( $(date +%s) - T0 ))s; stop with: make stop)"
else
  echo "quickstart: KMS CVM '$VM_NAME' at $KMS_URL verification: FAIL (see the checks above and docs/OPERATIONS.md)"
  exit 1
fi
