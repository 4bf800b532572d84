#!/bin/sh
# Fake backend runner for dstack-vmm tests: speaks the backend.h contract (run --vm-dir DIR, host API socket in
# $DSTACK_VMM_HOST_API) but boots nothing; prints the seed's boot lines and a tick every 0.5 s until SIGTERM.
[ "$1" = run ] && [ "$2" = --vm-dir ] || { echo "usage: $0 run --vm-dir DIR" >&2; exit 2; }
dir=$3
stop=0
trap 'stop=1' TERM
notify() {
  curl -s --max-time 5 --unix-socket "$DSTACK_VMM_HOST_API" -H 'Content-Type: application/json' \
    -d "{\"event\":\"$1\",\"payload\":\"$2\"}" http://localhost/api/Notify >/dev/null
}
echo "KMS CVM booting..."
notify boot.progress booting
[ -f "$dir/shared/app-compose.json" ] && [ -f "$dir/shared/.sys-config.json" ] || { echo "missing shared files"; exit 3; }
echo "Docker container starting..."
if [ -f "$dir/crash-at-boot" ]; then echo "simulated boot failure"; notify boot.error "simulated failure"; exit 7; fi
echo "KMS initializing..."
notify instance.info '{\"instance_id\":\"00112233445566778899aabbccddeeff00112233\"}'
notify boot.progress running
echo "RPC server listening on 0.0.0.0:9100"
i=0
while [ $stop = 0 ]; do
  i=$((i+1))
  echo "tick $i"
  sleep 0.5 &
  wait $!
done
echo "shutting down"
notify shutdown.progress "powering off"
exit 0
