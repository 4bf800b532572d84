#!/usr/bin/env bash
# Creates a simulator guest image directory for dstack-vmm ([image] path/<name>/): metadata.json, digest.txt,
# sha256sum.txt. Usage: scripts/make-sim-image.sh [IMAGE_ROOT] [NAME] [VERSION]
#   defaults: ~/.dstack-vmm/image dstack-0.5.5 0.5.5
set -euo pipefail
root=${1:-$HOME/.dstack-vmm/image}
name=${2:-dstack-0.5.5}
version=${3:-${name#dstack-}}
case "$version" in [0-9]*.[0-9]*.[0-9]*) ;; *) echo "version must be x.y.z (got '$version')" >&2; exit 2;; esac
dir="$root/$name"
mkdir -p "$dir"
cat > "$dir/metadata.json" <<JSON
{
    "bios": "sim",
    "kernel": "sim",
    "initrd": "sim",
    "rootfs": "sim",
    "cmdline": "console=ttyS0 dstack.sim=1",
    "shared_ro": true,
    "version": "$version",
    "is_dev": false
}
JSON
# The image "digest" (os_image_hash) of a simulated image: sha256 over its metadata.
(cd "$dir" && sha256sum metadata.json > sha256sum.txt)
sha256sum "$dir/sha256sum.txt" | cut -d' ' -f1 > "$dir/digest.txt"
echo "created simulator image $dir (version $version, digest $(cat "$dir/digest.txt"))"
