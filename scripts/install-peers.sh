#!/usr/bin/env bash
# Install the real peers the tests talk to (Debian packages and npm), skipping
# what is already installed.  Safe to run repeatedly.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  python3-venv
  dcmtk orthanc dicom3tools
  xorriso cdrskin genisoimage mtools dosfstools
  umockdev gir1.2-umockdev-1.0 python3-gi
  systemd systemd-container iproute2 util-linux procps
  nodejs npm
  e2fsprogs fdisk
  mmdebstrap qemu-system-x86 qemu-system-arm qemu-user-static binfmt-support arch-test
)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

missing=()
for p in "${PACKAGES[@]}"; do
  # NodeSource's nodejs package bundles npm and conflicts with Debian's.
  if [ "$p" = npm ] && command -v npm >/dev/null; then continue; fi
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi

# Orthanc's package enables a system service; tests run their own instances.
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
  $SUDO systemctl disable --now orthanc >/dev/null 2>&1 || true
fi

# cdrskin refuses stdio: pseudo-drives as root without this marker.
if [ "$(id -u)" -eq 0 ]; then
  mkdir -p /root/cdrskin_permissions
  touch /root/cdrskin_permissions/allow_emulated_drives
fi

# npm peers (dcmjs-dimse for MPPS), installed under tests/peers.
if [ -f tests/peers/package.json ] && [ ! -d tests/peers/node_modules ]; then
  (cd tests/peers && npm install --no-audit --no-fund --loglevel=error)
fi
