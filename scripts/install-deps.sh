#!/usr/bin/env bash
# Installs every Debian and npm package dstack-cpp needs to build, run and test. Idempotent; run as root
# (or with sudo) on Debian 12. Why each dependency is used: see README.md "Dependencies".
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

APT_PACKAGES=(
  # build
  build-essential cmake ninja-build pkg-config clang libclang-rt-14-dev
  # libraries
  libssl-dev libcrypto++-dev libsecp256k1-dev libsodium-dev
  nlohmann-json3-dev libtomlplusplus-dev libyaml-cpp-dev libcli11-dev libspdlog-dev libboost-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  # runtime of the simulated CVM (sandbox, images, registry)
  bubblewrap podman skopeo umoci docker-registry iproute2 util-linux
  # QEMU backend: boot test under TCG (tests/vmm_qemu; kernel fetched by scripts/qemu-test-image.sh), doctor
  qemu-system-x86 qemu-utils busybox-static
  # tests and benchmarks
  nodejs curl jq wrk nginx-light ansible chromium procps psmisc
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> apt-get install ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "==> Debian packages: all present"
fi

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "==> npm ci"
  npm ci --no-audit --no-fund
else
  echo "==> npm packages: up to date"
fi
