#!/usr/bin/env bash
# Host services of a dstack-cpp node: the local OCI registry, the local key provider and dstack-vmm.
#
#   scripts/host-services.sh start|stop|status|restart [--state-dir DIR] [registry|key-provider|vmm ...]
# (with service names, stop/start act on those only; e.g. `stop vmm` to simulate a VMM outage)
#
# Where systemd runs (PID 1 is systemd and we are root, or DSTACK_SERVICE_MODE=systemd) the services become
# systemd units dstack-registry / dstack-key-provider / dstack-vmm; otherwise (containers, CI, this machine)
# each runs as a supervised background process: a small supervisor restarts it if it dies (at most 5 times a
# minute), PID files and logs live under the state dir. Every command is idempotent.
#
# State dir layout (default ~/.dstack-cpp, env DSTACK_STATE_DIR):
#   run/<svc>.pid (supervisor) run/<svc>.child.pid   logs/<svc>.log   registry/ (storage)   sim-platform/
#   key-provider/{key-provider.toml,sealing.key}   vmm/vmm.toml   vm/ (VM work dirs)   image/dstack-0.5.5/
#
# Environment (all optional):
#   DSTACK_STATE_DIR      state dir                       DSTACK_BIN_DIR       binaries (default <repo>/build/bin)
#   DSTACK_VMM_PORT       VMM API port (9080)             DSTACK_KP_PORT       key provider port (3443)
#   DSTACK_REGISTRY_ADDR  registry host:port (127.0.0.1:5000)
#   DSTACK_SERVICE_MODE   auto | systemd | supervise      DSTACK_GUEST_IMAGE   guest image name (dstack-0.5.5)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${DSTACK_STATE_DIR:-$HOME/.dstack-cpp}"
BIN_DIR="${DSTACK_BIN_DIR:-$ROOT/build/bin}"
VMM_PORT="${DSTACK_VMM_PORT:-9080}"
KP_PORT="${DSTACK_KP_PORT:-3443}"
REGISTRY_ADDR="${DSTACK_REGISTRY_ADDR:-127.0.0.1:5000}"
GUEST_IMAGE="${DSTACK_GUEST_IMAGE:-dstack-0.5.5}"
MODE="${DSTACK_SERVICE_MODE:-auto}"

say() { echo "[host-services] $*"; }
die() { echo "[host-services] ERROR: $*" >&2; exit 1; }

# ---------------------------------------------------------------- helpers
cmd="${1:-}"
[ $# -gt 0 ] && shift
ONLY=()
while [ $# -gt 0 ]; do
  case "$1" in
    --state-dir) STATE="$2"; shift 2 ;;
    registry|key-provider|vmm) [ "$cmd" = "__supervise" ] && break; ONLY+=("$1"); shift ;;
    *) [ "$cmd" = "__supervise" ] && break
       die "unknown argument $1 (usage: $0 start|stop|status|restart [--state-dir DIR] [registry|key-provider|vmm ...])" ;;
  esac
done
wanted() { [ ${#ONLY[@]} -eq 0 ] && return 0; local x; for x in "${ONLY[@]}"; do [ "$x" = "$1" ] && return 0; done; return 1; }

RUN="$STATE/run"
LOGS="$STATE/logs"

is_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
tcp_open() { timeout 1 bash -c "exec 3<>/dev/tcp/${1}/${2}" 2>/dev/null; }
registry_ok() { curl -fsS --max-time 2 "http://$REGISTRY_ADDR/v2/" >/dev/null 2>&1; }
kp_ok() { tcp_open 127.0.0.1 "$KP_PORT"; }
vmm_ok() { curl -fsS --max-time 2 -X POST -H 'Content-Type: application/json' -d '{}' \
             "http://127.0.0.1:$VMM_PORT/prpc/Version?json" >/dev/null 2>&1; }

use_systemd() {
  case "$MODE" in
    systemd) return 0 ;;
    supervise) return 1 ;;
  esac
  # /run/systemd/system exists only when systemd is PID 1 (sd_booted()); "degraded" still means it runs.
  [ -d /run/systemd/system ] && [ "$(id -u)" = 0 ] && command -v systemctl >/dev/null || return 1
  case "$(systemctl is-system-running 2>/dev/null </dev/null || true)" in
    running|degraded|starting|initializing) return 0 ;;
    *) return 1 ;;
  esac
}

# ---------------------------------------------------------------- supervisor (runs detached, one per service)
if [ "$cmd" = "__supervise" ]; then
  name="$1"; shift
  log="$LOGS/$name.log"
  child=""
  trap 'touch "$RUN/$name.stop"; [ -n "$child" ] && kill -TERM "$child" 2>/dev/null' TERM INT
  starts=()
  while :; do
    rm -f "$RUN/$name.stop"
    "$@" >>"$log" 2>&1 </dev/null &
    child=$!
    echo "$child" > "$RUN/$name.child.pid"
    set +e; wait "$child"; rc=$?
    # `wait` returns early when the trap fires: wait for the child to really exit.
    while kill -0 "$child" 2>/dev/null; do wait "$child"; rc=$?; done
    set -e
    [ -e "$RUN/$name.stop" ] && break
    now=$(date +%s)
    starts+=("$now")
    recent=0
    for t in "${starts[@]}"; do [ $((now - t)) -lt 60 ] && recent=$((recent + 1)); done
    if [ "$recent" -gt 5 ]; then
      echo "[supervisor] $name exited (status $rc) more than 5 times within 60 s; giving up" >>"$log"
      break
    fi
    echo "[supervisor] $name exited with status $rc; restarting in 2 s" >>"$log"
    sleep 2
    [ -e "$RUN/$name.stop" ] && break
  done
  rm -f "$RUN/$name.child.pid" "$RUN/$name.stop"
  exit 0
fi

# ---------------------------------------------------------------- configuration files
need_bin() {
  [ -x "$BIN_DIR/$1" ] || die "missing $BIN_DIR/$1: build first (make build, or cmake --build build --target $1)"
}

prepare() {
  need_bin dstack-vmm; need_bin dstack-cvm-sim; need_bin dstack-key-provider; need_bin dstack-tdx-sim
  command -v docker-registry >/dev/null || die "docker-registry is not installed (bash scripts/install-deps.sh)"
  mkdir -p "$RUN" "$LOGS" "$STATE/key-provider" "$STATE/vmm" "$STATE/vm" "$STATE/image" "$STATE/registry"
  chmod 700 "$STATE/key-provider"
  # One simulated TDX/SGX platform per host: the guest agents quote with it (the VMM's sim runner uses
  # <run_path>/../sim-platform) and the key provider requires the same QE identity.
  if [ ! -f "$STATE/sim-platform/platform.json" ]; then
    "$BIN_DIR/dstack-tdx-sim" init --dir "$STATE/sim-platform" >/dev/null ||
      die "dstack-tdx-sim init --dir $STATE/sim-platform failed"
    say "created simulated TDX platform $STATE/sim-platform"
  fi
  if [ ! -f "$STATE/image/$GUEST_IMAGE/metadata.json" ]; then
    bash "$ROOT/scripts/make-sim-image.sh" "$STATE/image" "$GUEST_IMAGE" >/dev/null ||
      die "could not create guest image $STATE/image/$GUEST_IMAGE"
    say "created guest image $STATE/image/$GUEST_IMAGE"
  fi
  cat > "$STATE/key-provider/key-provider.toml" <<EOF
# Generated by scripts/host-services.sh; edit the script's environment instead.
listen = "127.0.0.1:$KP_PORT"
sealing_key_file = "$STATE/key-provider/sealing.key"
sim_platform_dir = "$STATE/sim-platform"
log_level = "info"
[trust]
trust_sim_root = true
trust_intel_root = false
EOF
  cat > "$STATE/vmm/vmm.toml" <<EOF
# Generated by scripts/host-services.sh (see config/vmm.toml and docs/OPERATIONS.md for every key).
address = "127.0.0.1"
port = $VMM_PORT
log_level = "info"
run_path = "$STATE/vm"
[image]
path = "$STATE/image"
[cvm]
backend = "sim"
sim_runner = "$BIN_DIR/dstack-cvm-sim"
docker_registry = "$REGISTRY_ADDR"
[cvm.port_mapping]
enabled = true
address = "127.0.0.1"
range = [ { protocol = "tcp", from = 1, to = 65535 }, { protocol = "udp", from = 1, to = 65535 } ]
[key_provider]
enabled = true
address = "127.0.0.1"
port = $KP_PORT
EOF
}

svc_cmd() {
  case "$1" in
    registry) echo "docker-registry serve $STATE/registry/config.yml" ;;
    key-provider) echo "$BIN_DIR/dstack-key-provider -c $STATE/key-provider/key-provider.toml" ;;
    vmm) echo "$BIN_DIR/dstack-vmm -c $STATE/vmm/vmm.toml" ;;
  esac
}
svc_ok() {
  case "$1" in
    registry) registry_ok ;;
    key-provider) kp_ok ;;
    vmm) vmm_ok ;;
  esac
}
svc_where() {
  case "$1" in
    registry) echo "http://$REGISTRY_ADDR" ;;
    key-provider) echo "tcp 127.0.0.1:$KP_PORT" ;;
    vmm) echo "http://127.0.0.1:$VMM_PORT" ;;
  esac
}

wait_ok() {  # name, seconds
  local i
  for i in $(seq 1 $(($2 * 5))); do
    svc_ok "$1" && return 0
    if ! use_systemd && ! is_alive "$RUN/$1.pid"; then return 1; fi
    sleep 0.2
  done
  return 1
}

fail_start() {
  echo "[host-services] ERROR: $1 did not become ready on $(svc_where "$1"). Last log lines ($LOGS/$1.log):" >&2
  tail -n 15 "$LOGS/$1.log" >&2 2>/dev/null || true
  exit 1
}

start_supervised() {  # name port-check-desc cmd...
  local name="$1"; shift
  if svc_ok "$name"; then
    if is_alive "$RUN/$name.pid"; then say "$name already running (pid $(cat "$RUN/$name.child.pid" 2>/dev/null || cat "$RUN/$name.pid")) on $(svc_where "$name")"
    else say "$name: something already answers on $(svc_where "$name") (not started by this script); using it"; fi
    return 0
  fi
  if is_alive "$RUN/$name.pid"; then
    say "$name supervisor running (pid $(cat "$RUN/$name.pid")) but not ready yet; waiting"
  else
    : >>"$LOGS/$name.log"
    setsid bash "$0" __supervise --state-dir "$STATE" "$name" "$@" </dev/null >/dev/null 2>&1 &
    echo $! > "$RUN/$name.pid"
  fi
  wait_ok "$name" 30 || fail_start "$name"
  say "$name started (pid $(cat "$RUN/$name.child.pid" 2>/dev/null || echo '?')) on $(svc_where "$name"), log $LOGS/$name.log"
}

stop_supervised() {
  local name="$1" pidf="$RUN/$1.pid"
  if ! is_alive "$pidf"; then
    rm -f "$pidf" "$RUN/$name.child.pid"
    say "$name not running"
    return 0
  fi
  local sup child
  sup="$(cat "$pidf")"
  child="$(cat "$RUN/$name.child.pid" 2>/dev/null || true)"
  touch "$RUN/$name.stop"
  kill -TERM "$sup" 2>/dev/null || true
  [ -n "$child" ] && kill -TERM "$child" 2>/dev/null || true
  # The VMM stops its CVMs on SIGTERM (up to stop_timeout_secs each): give it time.
  for _ in $(seq 1 150); do kill -0 "$sup" 2>/dev/null || break; sleep 0.2; done
  if kill -0 "$sup" 2>/dev/null; then
    say "$name did not stop within 30 s; killing process group $sup"
    kill -KILL -- "-$sup" 2>/dev/null || true
  fi
  rm -f "$pidf" "$RUN/$name.child.pid" "$RUN/$name.stop"
  say "$name stopped"
}

# ---------------------------------------------------------------- systemd units
unit_write() {  # name description after exec
  cat > "/etc/systemd/system/dstack-$1.service" <<EOF
[Unit]
Description=$2
After=network.target $3

[Service]
ExecStart=$4
Restart=on-failure
RestartSec=2
StandardOutput=append:$LOGS/$1.log
StandardError=append:$LOGS/$1.log

[Install]
WantedBy=multi-user.target
EOF
}

start_systemd() {
  local name="$1"
  unit_write "$name" "dstack-cpp $name" "$2" "$(svc_cmd "$name")"
  systemctl daemon-reload
  systemctl enable --now "dstack-$name.service" >/dev/null 2>&1 || true
  wait_ok "$name" 30 || { systemctl status "dstack-$name" --no-pager >&2 || true; fail_start "$name"; }
  say "$name active (systemd unit dstack-$name) on $(svc_where "$name")"
}

registry_config() {
  # Same config file as scripts/registry-up.sh writes (used directly by the systemd unit).
  mkdir -p "$STATE/registry/storage"
  cat > "$STATE/registry/config.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $STATE/registry/storage
  delete:
    enabled: true
http:
  addr: $REGISTRY_ADDR
EOF
}

# ---------------------------------------------------------------- commands
do_start() {
  prepare
  if use_systemd; then
    say "systemd detected: installing units under /etc/systemd/system"
    registry_config
    wanted registry && start_systemd registry ""
    wanted key-provider && start_systemd key-provider ""
    wanted vmm && start_systemd vmm "dstack-key-provider.service"
  else
    say "no systemd here: running supervised processes (state $STATE)"
    if ! wanted registry; then :
    elif registry_ok; then
      say "registry already answers on http://$REGISTRY_ADDR"
    else
      DSTACK_REGISTRY_STATE="$STATE/registry" DSTACK_REGISTRY_ADDR="$REGISTRY_ADDR" \
        bash "$ROOT/scripts/registry-up.sh" | sed 's/^/[host-services] /' || {
        echo "[host-services] ERROR: registry did not start on $REGISTRY_ADDR (log $STATE/registry/registry.log)" >&2
        exit 1
      }
    fi
    # shellcheck disable=SC2046
    wanted key-provider && start_supervised key-provider $(svc_cmd key-provider)
    # shellcheck disable=SC2046
    wanted vmm && start_supervised vmm $(svc_cmd vmm)
  fi
  [ ${#ONLY[@]} -gt 0 ] && return 0
  say "all host services up: registry http://$REGISTRY_ADDR, key provider 127.0.0.1:$KP_PORT, VMM http://127.0.0.1:$VMM_PORT"
}

do_stop() {
  if use_systemd; then
    for s in vmm key-provider registry; do
      wanted "$s" || continue
      systemctl disable --now "dstack-$s.service" >/dev/null 2>&1 || true
      say "$s stopped (systemd unit dstack-$s)"
    done
    return 0
  fi
  wanted vmm && stop_supervised vmm
  wanted key-provider && stop_supervised key-provider
  wanted registry || return 0
  if [ -f "$STATE/registry/registry.pid" ]; then
    DSTACK_REGISTRY_STATE="$STATE/registry" bash "$ROOT/scripts/registry-down.sh" | sed 's/^/[host-services] /'
  else
    say "registry not running (no PID file in $STATE/registry)"
  fi
}

do_status() {
  local all=0 s pid
  for s in registry key-provider vmm; do
    if use_systemd; then pid="unit dstack-$s: $(systemctl is-active "dstack-$s" 2>/dev/null || true)"
    elif [ "$s" = registry ]; then
      pid="pid $(cat "$STATE/registry/registry.pid" 2>/dev/null || echo -)"
    else
      pid="pid $(cat "$RUN/$s.child.pid" 2>/dev/null || echo -)"
    fi
    if svc_ok "$s"; then printf '%-13s up    %-28s %s\n' "$s" "$(svc_where "$s")" "$pid"
    else printf '%-13s DOWN  %-28s %s (log %s)\n' "$s" "$(svc_where "$s")" "$pid" "$LOGS/$s.log"; all=3; fi
  done
  return $all
}

case "$cmd" in
  start) do_start ;;
  stop) do_stop ;;
  restart) do_stop; do_start ;;
  status) do_status ;;
  *) echo "usage: $0 start|stop|status|restart [--state-dir DIR]" >&2; exit 2 ;;
esac
