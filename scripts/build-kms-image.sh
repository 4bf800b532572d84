#!/usr/bin/env bash
# Packs build/bin/dstack-kms (+ its shared libraries, found with ldd, + images/kms/kms.toml) into a FROM-scratch
# OCI image with podman and pushes it to the local registry as <registry>/dstack-kms:fixed and :latest.
# Usage: scripts/build-kms-image.sh [--bin-dir build/bin] [--registry 127.0.0.1:5000] [--tag fixed]
# Then: curl http://127.0.0.1:5000/v2/dstack-kms/tags/list  ->  {"name":"dstack-kms","tags":["fixed","latest"]}
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN_DIR="${DSTACK_BIN_DIR:-$ROOT/build/bin}"
REGISTRY="${DSTACK_REGISTRY_ADDR:-127.0.0.1:5000}"
TAG=fixed
while [ $# -gt 0 ]; do
  case "$1" in
    --bin-dir) BIN_DIR="$2"; shift 2 ;;
    --registry) REGISTRY="$2"; shift 2 ;;
    --tag) TAG="$2"; shift 2 ;;
    *) echo "build-kms-image.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
KMS="$BIN_DIR/dstack-kms"
[ -x "$KMS" ] || { echo "missing $KMS: build it first (cmake --build build --target dstack-kms)" >&2; exit 1; }
CTX="$(mktemp -d /tmp/dstack-kms-image.XXXXXX)"
trap 'rm -rf "$CTX"' EXIT
R="$CTX/rootfs"
mkdir -p "$R/usr/bin" "$R/etc/kms/certs" "$R/tmp" "$R/var/run"
# Debug info is not needed in the image (RelWithDebInfo binaries are ~10x larger).
if command -v strip >/dev/null; then strip -o "$R/usr/bin/dstack-kms" "$KMS"; else cp "$KMS" "$R/usr/bin/dstack-kms"; fi
cp "$ROOT/images/kms/kms.toml" "$R/etc/kms/kms.toml"
# Shared libraries (and the dynamic loader) exactly as resolved on this host.
ldd "$KMS" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | sort -u | while read -r lib; do
  mkdir -p "$R$(dirname "$lib")"
  cp -L "$lib" "$R$lib"
done
[ -e "$R/lib64/ld-linux-x86-64.so.2" ] || { echo "dynamic loader not found in ldd output of $KMS" >&2; exit 1; }
# CA bundle for outbound TLS (webhooks, PCCS) and minimal passwd/group for libraries that look up users.
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then mkdir -p "$R/etc/ssl/certs"; cp /etc/ssl/certs/ca-certificates.crt "$R/etc/ssl/certs/"; fi
printf 'root:x:0:0:root:/root:/sbin/nologin\n' > "$R/etc/passwd"
printf 'root:x:0:\n' > "$R/etc/group"
cp "$ROOT/images/kms/Containerfile" "$CTX/Containerfile"
IMAGE="$REGISTRY/dstack-kms"
echo "==> podman build $IMAGE:$TAG"
podman build -q -f "$CTX/Containerfile" -t "$IMAGE:$TAG" -t "$IMAGE:latest" "$CTX"
for t in "$TAG" latest; do
  echo "==> podman push $IMAGE:$t"
  podman push -q --tls-verify=false "$IMAGE:$t"
done
echo "==> $(curl -fsS --max-time 5 "http://$REGISTRY/v2/dstack-kms/tags/list")"
