#!/usr/bin/env bash
# GetMeta over HTTPS keep-alive: dstack-kms vs nginx serving the same JSON as a static file with the same
# certificate, same machine, same wrk settings; then a soak run of the KMS (errors + RSS start/end).
#   scripts/bench-kms.sh [BUILD_DIR]    env: CONNS=32 THREADS=2 DURATION=15 SOAK=60 WORKERS=2
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
BIN=$BUILD/bin
CONNS=${CONNS:-32}; THREADS=${THREADS:-2}; DURATION=${DURATION:-15}; SOAK=${SOAK:-60}; WORKERS=${WORKERS:-2}
LUA=bench/kms/getmeta.lua
command -v wrk >/dev/null || { echo "wrk not installed (apt-get install wrk)"; exit 1; }
command -v nginx >/dev/null || { echo "nginx not installed (apt-get install nginx-light)"; exit 1; }
[ -x "$BIN/dstack-kms" ] || { echo "$BIN/dstack-kms not built"; exit 1; }

T=$(mktemp -d /tmp/bench-kms.XXXXXX)
KMS_PID=""; NGINX_PID=""
cleanup() {
  [ -n "$KMS_PID" ] && kill "$KMS_PID" 2>/dev/null || true
  [ -n "$NGINX_PID" ] && kill "$NGINX_PID" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$T"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1]);s.close()'; }
KPORT=$(free_port); NPORT=$(free_port)

# KMS outside a TEE (no quotes needed for GetMeta), dev auth, auto-bootstrap.
cat > "$T/kms.toml" <<TOML
[rpc]
address = "127.0.0.1"
port = $KPORT
workers = $WORKERS
[core]
cert_dir = "$T/certs"
enforce_self_authorization = false
attest_rpc_cert = false
[core.auth_api]
type = "dev"
TOML
KMS_DOMAIN=localhost RUST_LOG=warn "$BIN/dstack-kms" -c "$T/kms.toml" > "$T/kms.log" 2>&1 &
KMS_PID=$!
for _ in $(seq 1 200); do curl -skf "https://127.0.0.1:$KPORT/health" >/dev/null 2>&1 && break; sleep 0.1; done
curl -skf "https://127.0.0.1:$KPORT/prpc/KMS.GetMeta" > "$T/meta.json" || { cat "$T/kms.log"; exit 1; }

mkdir -p "$T/nginx"
cat > "$T/nginx.conf" <<NGX
user root;
worker_processes $WORKERS;
pid $T/nginx.pid;
error_log $T/nginx/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 60s;
  client_body_temp_path $T/nginx; proxy_temp_path $T/nginx; fastcgi_temp_path $T/nginx;
  uwsgi_temp_path $T/nginx; scgi_temp_path $T/nginx;
  server {
    listen 127.0.0.1:$NPORT ssl;
    ssl_certificate $T/certs/rpc.crt;
    ssl_certificate_key $T/certs/rpc.key;
    location = /prpc/KMS.GetMeta { default_type application/json; alias $T/meta.json; }
  }
}
NGX
nginx -c "$T/nginx.conf" -g 'daemon off;' > "$T/nginx/out.log" 2>&1 &
NGINX_PID=$!
for _ in $(seq 1 100); do curl -skf "https://127.0.0.1:$NPORT/prpc/KMS.GetMeta" >/dev/null 2>&1 && break; sleep 0.1; done
cmp -s <(curl -sk "https://127.0.0.1:$NPORT/prpc/KMS.GetMeta") "$T/meta.json" || { echo "nginx does not serve the JSON"; exit 1; }

run() {  # name url duration
  local out
  out=$(wrk -t"$THREADS" -c"$CONNS" -d"$3"s --latency -s "$LUA" "$2" 2>&1)
  echo "$out" | grep -E "Non-2xx|Socket errors" || true
  echo "$out" | grep RESULT | sed "s/^RESULT/$1/"
}
rss() { awk '/VmRSS/ {print $2}' /proc/"$KMS_PID"/status; }

echo "# GetMeta bench: wrk -t$THREADS -c$CONNS -d${DURATION}s, HTTPS keep-alive, $WORKERS server threads/workers, $(nproc) cores"
run nginx "https://127.0.0.1:$NPORT/prpc/KMS.GetMeta" 3 >/dev/null   # warm-up
run kms "https://127.0.0.1:$KPORT/prpc/KMS.GetMeta" 3 >/dev/null
run nginx "https://127.0.0.1:$NPORT/prpc/KMS.GetMeta" "$DURATION"
run kms "https://127.0.0.1:$KPORT/prpc/KMS.GetMeta" "$DURATION"
kill "$NGINX_PID"; wait "$NGINX_PID" 2>/dev/null || true; NGINX_PID=""
if [ "$SOAK" -gt 0 ]; then
  R0=$(rss)
  run kms-soak "https://127.0.0.1:$KPORT/prpc/KMS.GetMeta" "$SOAK"
  R1=$(rss)
  echo "kms-soak rss_start_kb=$R0 rss_end_kb=$R1"
fi
