#!/usr/bin/env bash
# Builds a tiny dstack-style guest image for the QEMU backend boot test (tests/vmm_qemu):
#   <out>/bzImage            kernel from Debian's linux-image-cloud-amd64 (fetched with `apt-get download`, ~27 MB)
#   <out>/initramfs.cpio.gz  busybox-static + the virtio net/blk modules + /init (below)
#   <out>/rootfs.img         1 MiB raw placeholder for the read-only rootfs drive (-drive ...,id=hd0)
#   <out>/metadata.json      image metadata in the layout of spec §10.2 (no bios: SeaBIOS, platform "none")
#   <out>/digest.txt         sha256 of sha256sum.txt, like a real image
# The guest /init prints DSTACK-QEMU-GUEST-UP on the serial console, brings up eth0 (user-mode NIC, 10.0.2.10 = the dhcpstart address hostfwd targets),
# prints the SMBIOS vendor/product, its virtio disks and whether the virtio-9p host-share device is there, serves
# "dstack-qemu-guest-ok" over HTTP on port 9100 (reachable through the hostfwd mapping) and prints
# DSTACK-QEMU-GUEST-READY. Idempotent: nothing is rebuilt when <out>/metadata.json exists and is newer than this script.
#
# usage: scripts/qemu-test-image.sh <out-dir>
# needs: busybox-static (also used as cpio), gzip, apt-get (Debian package lists present; runs `apt-get update` once if needed)
set -euo pipefail

out="${1:?usage: $0 <out-dir>}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
self="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"

if [ -f "$out/metadata.json" ] && [ "$out/metadata.json" -nt "$self" ] && [ -f "$out/bzImage" ] &&
   [ -f "$out/initramfs.cpio.gz" ]; then
  echo "==> qemu test image up to date in $out"
  exit 0
fi

busybox_bin=/bin/busybox
if ! dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q "install ok installed" || [ ! -x "$busybox_bin" ]; then
  echo "error: busybox-static is not installed (apt-get install busybox-static)" >&2
  exit 1
fi
for tool in gzip apt-get dpkg-deb; do
  command -v "$tool" >/dev/null || { echo "error: $tool not found" >&2; exit 1; }
done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Resolve the ABI-versioned kernel package behind the metapackage, so the script survives kernel updates.
kpkg="$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')"
if [ -z "$kpkg" ]; then
  apt-get update -qq
  kpkg="$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')"
fi
[ -n "$kpkg" ] || { echo "error: cannot resolve the package behind linux-image-cloud-amd64" >&2; exit 1; }

cache="$out/.deb-cache"
mkdir -p "$cache"
deb="$(ls "$cache"/"$kpkg"_*.deb 2>/dev/null | head -1 || true)"
if [ -z "$deb" ]; then
  echo "==> apt-get download $kpkg"
  (cd "$work" && apt-get download "$kpkg" >/dev/null 2>&1) ||
    { echo "error: apt-get download $kpkg failed (Debian package mirror reachable?)" >&2; exit 1; }
  mv "$work"/"$kpkg"_*.deb "$cache"/
  deb="$(ls "$cache"/"$kpkg"_*.deb | head -1)"
fi

echo "==> extracting kernel from $(basename "$deb")"
dpkg-deb -x "$deb" "$work/k"
cp "$work"/k/boot/vmlinuz-* "$out/bzImage.tmp"
mdir="$(ls -d "$work"/k/lib/modules/*)"

root="$work/root"
mkdir -p "$root"/{bin,sbin,proc,sys,dev,mnt,tmp,www,lib/modules,etc}
cp "$busybox_bin" "$root/bin/busybox"
for applet in sh mount echo cat insmod ip httpd sleep ls poweroff uname mkdir grep tr cut; do
  ln -s busybox "$root/bin/$applet"
done

# Load order matters (no modules.dep in the initramfs): each module after the ones it depends on.
modules="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci failover net_failover virtio_net
         virtio_blk"
: > "$root/etc/modules"
for m in $modules; do
  f="$(find "$mdir" -name "$m.ko" -o -name "$m.ko.xz" | head -1)"
  [ -n "$f" ] || continue  # built into this kernel
  case "$f" in *.xz) xz -dc "$f" > "$root/lib/modules/$m.ko" ;; *) cp "$f" "$root/lib/modules/$m.ko" ;; esac
  echo "$m" >> "$root/etc/modules"
done

echo "dstack-qemu-guest-ok" > "$root/www/index.html"
cat > "$root/init" <<'EOF'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
echo "DSTACK-QEMU-GUEST-UP kernel=$(uname -r)"
for m in $(cat /etc/modules); do insmod /lib/modules/$m.ko || echo "insmod $m failed"; done
sleep 1
ip link set lo up
ip link set eth0 up && ip addr add 10.0.2.10/24 dev eth0 && ip route add default via 10.0.2.2
echo "NET: $(ip -o -4 addr show dev eth0 2>&1 | tr -s ' ' | cut -d' ' -f2,4)"
echo "SMBIOS: sys_vendor=$(cat /sys/class/dmi/id/sys_vendor) product_name=$(cat /sys/class/dmi/id/product_name)"
echo "DISKS: $(ls /sys/block | grep vd | tr '\n' ' ')"
# The cloud kernel has no 9p driver: report the virtio-9p PCI function (1af4:1009) instead of mounting it.
p9=absent
for d in /sys/bus/pci/devices/*; do
  [ "$(cat $d/vendor)" = 0x1af4 ] && [ "$(cat $d/device)" = 0x1009 ] && p9=present
done
echo "HOST-SHARE-DEVICE: $p9"
httpd -f -vv -p 9100 -h /www &
echo "DSTACK-QEMU-GUEST-READY"
while true; do sleep 3600; done
EOF
chmod 0755 "$root/init"
(cd "$root" && find . | "$busybox_bin" cpio -o -H newc 2>/dev/null | gzip -9) > "$out/initramfs.cpio.gz.tmp"

truncate -s 1M "$out/rootfs.img.tmp"
mv "$out/bzImage.tmp" "$out/bzImage"
mv "$out/initramfs.cpio.gz.tmp" "$out/initramfs.cpio.gz"
mv "$out/rootfs.img.tmp" "$out/rootfs.img"
(cd "$out" && sha256sum bzImage initramfs.cpio.gz rootfs.img > sha256sum.txt && sha256sum sha256sum.txt | cut -d' ' -f1 > digest.txt)
cat > "$out/metadata.json" <<EOF
{
  "cmdline": "console=ttyS0 panic=-1 quiet loglevel=3",
  "kernel": "bzImage",
  "initrd": "initramfs.cpio.gz",
  "rootfs": "rootfs.img",
  "bios": "",
  "shared_ro": false,
  "version": "0.5.0",
  "is_dev": true
}
EOF
echo "==> qemu test image ready in $out ($(du -sh "$out" --exclude=.deb-cache | cut -f1))"
