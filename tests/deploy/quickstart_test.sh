#!/usr/bin/env bash
# The README's run command (scripts/quickstart.sh, what `make run` runs after building) in a clean state dir:
# first run deploys and verifies, second run only re-verifies, --stop cleans up.
source "$(dirname "$0")/lib.sh"
setup_env
out="$DSTACK_STATE_DIR/quickstart-1.out"

log "first run (fresh state)"
bash "$REPO/scripts/quickstart.sh" >"$out" 2>&1 || { tail -n 80 "$out" >&2; fail "quickstart.sh exited non-zero"; }
expect_in "$out" '==> \[1/6\] host services' "progress for step 1"
expect_in "$out" '==> \[4/6\] deploy CVM' "progress for the deployment"
expect_in "$out" '==> \[5/6\] waiting for KMS.GetMeta' "progress while waiting"
expect_in "$out" '"k256_pubkey": "0[23][0-9a-f]{64}"' "GetMeta printed"
expect_in "$out" '\[PASS\] report_data_binding' "key binding checked"
expect_in "$out" '\[PASS\] quote_verified' "quote verified"
expect_in "$out" 'verdict: PASS' "dstack-verify verdict"
last="$(tail -n 1 "$out")"
echo "$last" | grep -Eq "^quickstart: KMS CVM 'kms' at https://127.0.0.1:$DSTACK_KMS_PORT verified: PASS \(deployed in [0-9]+s" ||
  fail "unexpected final line: $last"
log "first run: $last"
[ -f "$DSTACK_STATE_DIR/kms-deploy/getmeta.json" ] || fail "GetMeta backup not written"

out2="$DSTACK_STATE_DIR/quickstart-2.out"
log "second run (already deployed)"
bash "$REPO/scripts/quickstart.sh" >"$out2" 2>&1 || { tail -n 80 "$out2" >&2; fail "second quickstart.sh run failed"; }
expect_in "$out2" "already answers on https://127.0.0.1:$DSTACK_KMS_PORT: skipping" "second run skips the deployment"
tail -n 1 "$out2" | grep -q "verified: PASS (re-verified" || fail "second run final line: $(tail -n 1 "$out2")"
# Same keys as before: the KMS was not re-bootstrapped.
k1="$(jq -r .k256_pubkey "$DSTACK_STATE_DIR/kms-deploy/getmeta.json")"
grep -q "$k1" "$out2" || fail "k256_pubkey changed between runs"

log "stop"
bash "$REPO/scripts/quickstart.sh" --stop >"$DSTACK_STATE_DIR/stop.out" 2>&1 || fail "quickstart.sh --stop failed"
expect_in "$DSTACK_STATE_DIR/stop.out" "Removed VM kms" "VM removed"
expect_in "$DSTACK_STATE_DIR/stop.out" "quickstart: stopped" "stop message"
if bash "$REPO/scripts/host-services.sh" status >/dev/null 2>&1; then fail "services still up after --stop"; fi
if curl -sk --max-time 2 "https://127.0.0.1:$DSTACK_KMS_PORT/prpc/KMS.GetMeta" >/dev/null 2>&1; then
  fail "KMS still answers after --stop"
fi
log "PASS"
