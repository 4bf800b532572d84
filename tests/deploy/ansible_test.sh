#!/usr/bin/env bash
# Ansible against the local stack (what CI runs): host services via the playbook/role, each prerequisite failure
# stops deploy-kms-cvm.yml at its step with the documented message, then deploy -> verify -> deploy again
# (changed=0) -> teardown.
source "$(dirname "$0")/lib.sh"
setup_env
A="$REPO/deploy/ansible"
export ANSIBLE_CONFIG="$A/ansible.cfg" ANSIBLE_NOCOLOR=1 ANSIBLE_FORCE_COLOR=0 ANSIBLE_RETRY_FILES_ENABLED=0
export ANSIBLE_LOCAL_TEMP="$DSTACK_STATE_DIR/ansible-tmp" ANSIBLE_HOME="$DSTACK_STATE_DIR/ansible-home"
DOMAIN=kms.ci.dstack.local
n=0

play() {  # name expect(ok|fail) playbook args... ; output in $OUT
  local name="$1" expect="$2" pb="$3"; shift 3
  n=$((n + 1))
  OUT="$DSTACK_STATE_DIR/ansible-$n-$name.out"
  log "ansible-playbook $pb $* ($name, expect $expect)"
  set +e
  ansible-playbook -i "$A/inventory/hosts.yml" "$A/playbooks/$pb" "$@" >"$OUT" 2>&1
  local rc=$?
  set -e
  if [ "$expect" = ok ] && [ $rc != 0 ]; then tail -n 60 "$OUT" >&2; fail "$name: playbook failed (rc $rc)"; fi
  if [ "$expect" = fail ] && [ $rc = 0 ]; then tail -n 40 "$OUT" >&2; fail "$name: playbook succeeded but should fail"; fi
  return 0
}

# The playbook stopped at TASK $2 (the task of the last "fatal:", i.e. after any rescue) with message pattern $3.
expect_stop() {
  local name="$1" task="$2" msg="$3"
  local at
  at="$(awk '/^TASK \[/{t=$0; sub(/ \*+$/, "", t)} /^fatal:/{last=t} END{print last}' "$OUT")"
  [ "$at" = "TASK [$task]" ] || { tail -n 40 "$OUT" >&2; fail "$name: stopped at '$at', expected 'TASK [$task]'"; }
  expect_in "$OUT" "$msg" "$name: failure message"
  expect_in "$OUT" 'failed=1' "$name: exactly one failed task"
  log "$name: stopped at '$task' as documented"
}

recap_changed() { sed -n 's/.*localhost *: .*changed=\([0-9]*\).*/\1/p' "$OUT" | tail -n 1; }

# ---- host services through the role
play host-services ok host-services.yml
expect_in "$OUT" 'key-provider started|key-provider active' "key provider started by the role"
play host-services-again ok host-services.yml
[ "$(recap_changed)" = 0 ] || fail "host-services.yml second run: changed=$(recap_changed)"

# ---- prerequisite failures (real outages, not mocks)
play no-domain fail deploy-kms-cvm.yml
expect_stop no-domain "Step 1/6: prerequisites - kms_domain" "PREREQ FAILED \[domain\]"

play image-missing fail deploy-kms-cvm.yml -e kms_domain=$DOMAIN
expect_stop image-missing "Step 1/6: prerequisites - KMS image present" \
  "PREREQ FAILED \[image\]: $DSTACK_REGISTRY_ADDR/dstack-kms:fixed is not in the registry"

log "building and pushing the KMS image"
bash "$REPO/scripts/build-kms-image.sh" --bin-dir "$DSTACK_BIN_DIR" --registry "$DSTACK_REGISTRY_ADDR" \
  >"$DSTACK_STATE_DIR/image.out" 2>&1 || { tail -n 30 "$DSTACK_STATE_DIR/image.out" >&2; fail "build-kms-image.sh failed"; }

bash "$REPO/scripts/host-services.sh" stop key-provider >/dev/null
play key-provider-down fail deploy-kms-cvm.yml -e kms_domain=$DOMAIN
expect_stop key-provider-down "Step 1/6: prerequisites - key provider answering" \
  "PREREQ FAILED \[key-provider\]: the local key provider is not listening on 127.0.0.1:$DSTACK_KP_PORT"
bash "$REPO/scripts/host-services.sh" start key-provider >/dev/null

bash "$REPO/scripts/host-services.sh" stop vmm >/dev/null
play vmm-down fail deploy-kms-cvm.yml -e kms_domain=$DOMAIN
expect_stop vmm-down "Step 1/6: prerequisites - VMM answering" \
  "PREREQ FAILED \[vmm\]: dstack-vmm is not answering on http://127.0.0.1:$DSTACK_VMM_PORT"
bash "$REPO/scripts/host-services.sh" start vmm >/dev/null

# ---- deploy, verify, deploy again, teardown
play deploy ok deploy-kms-cvm.yml -e kms_domain=$DOMAIN
[ "$(recap_changed)" -ge 2 ] || fail "first deploy should change something (changed=$(recap_changed))"
expect_in "$OUT" 'verdict: PASS' "deploy: attestation verdict"
expect_in "$OUT" 'quote verified and bound to ca_pubkey \+ k256_pubkey' "deploy: binding"
grep -q "KMS_DOMAIN=$DOMAIN" "$DSTACK_STATE_DIR/kms-deploy/docker-compose.yaml" || fail "domain not in the compose file"

play verify ok verify-kms-cvm.yml
expect_in "$OUT" "KMS at https://127.0.0.1:$DSTACK_KMS_PORT verified: quote UpToDate, keys bound" "verify: success message"
expect_in "$OUT" 'quote_verified=True' "verify: quote check listed"

play deploy-again ok deploy-kms-cvm.yml -e kms_domain=$DOMAIN
[ "$(recap_changed)" = 0 ] || { grep -B2 '^changed:' "$OUT" >&2; fail "second deploy is not idempotent: changed=$(recap_changed)"; }
log "second deploy: changed=0"

# Health wait is bounded and explains itself: GetMeta on a port nothing listens on.
play health-fail fail deploy-kms-cvm.yml -e kms_domain=$DOMAIN -e kms_port="$(free_port)" \
  -e kms_health_retries=1 -e kms_health_delay=1
expect_stop health-fail "Step 4/6: health - give up" "HEALTH FAILED: the KMS did not answer GetMeta .* VM status: running"

# A mismatch must fail loudly: verify with a response-time limit nobody can meet.
play verify-too-slow fail verify-kms-cvm.yml -e kms_max_response_ms=0
expect_in "$OUT" 'VERIFY FAILED \[response_time\]' "verify: loud failure on a mismatch"

play teardown ok teardown-kms-cvm.yml -e stop_host_services=true
if curl -fsS --max-time 2 "http://127.0.0.1:$DSTACK_VMM_PORT/prpc/Version?json" -X POST -d '{}' >/dev/null 2>&1; then
  fail "VMM still running after teardown"
fi
log "PASS"
