#!/usr/bin/env bash
# Build a dicombox appliance image from Debian's archive, this repository's
# rootfs/ and systemd/ trees, and the application as a virtual environment.
#
#   build.sh --board rpi|pc [--test] [--out DIR]
#
#   rpi   Raspberry Pi 3/4 (arm64) SD card image: DIR/dicombox-rpi.img
#   pc    amd64 image for the boot test under QEMU: DIR/dicombox-pc.img plus
#         DIR/vmlinuz and DIR/initrd.img for direct kernel boot
#   --test  add the test-only hooks (hooks-test/: the self-test unit, mock
#           GPIO pins for the panel); never used for an image that ships
#
# The tree is made by mmdebstrap running the hooks in hooks/ (and
# hooks-test/); assemble.sh then turns it into a partitioned disk without
# mounting anything.  Apt's .debs and the wheelhouse are cached under
# image-build/cache/; images are written to DIR (default image-build/out).
# Runs as root (mmdebstrap --mode=root); one build at a time per cache.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
# shellcheck source=image-build/config.sh
. "$here/config.sh"

board="" test=0 out="$here/out"
while [ $# -gt 0 ]; do
  case "$1" in
    --board) board=$2; shift 2 ;;
    --test) test=1; shift ;;
    --out) out=$2; shift 2 ;;
    *) echo "build.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
arch=$(board_arch "$board") || { echo "build.sh: --board must be rpi or pc" >&2; exit 2; }

die() { echo "build.sh: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "must run as root (mmdebstrap --mode=root)"
for tool in mmdebstrap mkfs.ext4 mkfs.vfat mcopy sfdisk flock; do
  command -v "$tool" >/dev/null || die "$tool is missing (run scripts/install-peers.sh)"
done
[ -x "$repo/.venv/bin/pip" ] || die "no .venv (run make venv)"

# Foreign architectures run under qemu-user through binfmt_misc, which is
# not always mounted.
if [ "$arch" != "$(dpkg --print-architecture)" ]; then
  command -v arch-test >/dev/null || die "arch-test is missing (run scripts/install-peers.sh)"
  if ! arch-test "$arch" >/dev/null 2>&1; then
    mountpoint -q /proc/sys/fs/binfmt_misc \
      || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    update-binfmts --enable >/dev/null 2>&1 || true
    arch-test "$arch" >/dev/null 2>&1 \
      || die "cannot run $arch binaries (install qemu-user-static binfmt-support)"
  fi
fi

export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct 2>/dev/null || date +%s)}
cache="$here/cache"
mkdir -p "$cache/apt/$arch" "$cache/pip" "$out"
exec 9>"$cache/.lock"
if ! flock -n 9; then
  echo "build.sh: waiting for another image build to finish"
  flock 9
fi

started=$(date +%s)
stamp() { echo "build.sh: [$(( $(date +%s) - started )) s] $*"; }

work=$(mktemp -d "$out/.work-$board.XXXXXX")
# mmdebstrap mounts /proc, /sys and device nodes inside the tree; should it
# be killed before it unmounts them, never let the clean-up follow them.
cleanup() {
  findmnt -rn -o TARGET | grep -F "$work/" | sort -r | xargs -r -d '\n' umount -l || true
  rm -rf --one-file-system "$work"
}
trap cleanup EXIT
trap 'exit 143' TERM INT

# 1. The wheelhouse (cached) and the application's own wheel (always fresh,
#    built from a copy of the working tree so nothing is written into it).
export PIP_CACHE_DIR="$cache/pip"
"$here/wheelhouse.sh" "$arch" "$cache/wheels/$arch"
mkdir -p "$work/src" "$work/app"
cp -r "$repo/pyproject.toml" "$repo/src" "$work/src/"
find "$work/src" -name __pycache__ -prune -exec rm -rf {} +
"$repo/.venv/bin/pip" wheel -q --no-deps --wheel-dir "$work/app" "$work/src"
app_wheel=$(ls "$work"/app/dicombox-*.whl)
stamp "wheels ready"

# 2. The root filesystem tree.
export DICOMBOX_SRC="$repo" DICOMBOX_BOARD="$board" DICOMBOX_TEST="$test"
export DICOMBOX_WHEELHOUSE="$cache/wheels/$arch" DICOMBOX_APP_WHEEL="$app_wheel"
export DICOMBOX_VENV="$VENV" DICOMBOX_DATA_MOUNT="$DATA_MOUNT"
export DICOMBOX_BOOT_LABEL="$BOOT_LABEL" DICOMBOX_ROOT_LABEL="$ROOT_LABEL"
export DICOMBOX_DATA_LABEL="$DATA_LABEL"
hookdirs=(--hook-directory="$here/hooks")
[ "$test" = 1 ] && hookdirs+=(--hook-directory="$here/hooks-test")
read -r -a board_pkgs <<<"$(board_packages "$board")"
include=$(IFS=,; echo "${PACKAGES_COMMON[*]},${board_pkgs[*]}")
rootfs="$work/rootfs"
mmdebstrap --mode=root --variant=minbase --arch="$arch" --include="$include" \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/info/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --skip=download/empty --skip=essential/unlink \
  --setup-hook='mkdir -p "$1"/var/cache/apt/archives/' \
  --setup-hook="sync-in $cache/apt/$arch /var/cache/apt/archives/" \
  --customize-hook="sync-out /var/cache/apt/archives $cache/apt/$arch" \
  "${hookdirs[@]}" \
  "$SUITE" "$rootfs" \
  "deb $MIRROR $SUITE $COMPONENTS" \
  "deb $MIRROR $SUITE-updates $COMPONENTS" \
  "deb $SECURITY_MIRROR $SUITE-security $COMPONENTS"
# Old .debs superseded by newer versions would pile up in the cache.
find "$cache/apt/$arch" -name '*.deb' -mtime +30 -delete
stamp "root filesystem ready ($(du -sm "$rootfs" | cut -f1) MiB)"

# 3. The disk.
name="dicombox-$board"
dpkg-query --admindir="$rootfs/var/lib/dpkg" -W -f='${Package} ${Version}\n' >"$out/$name.packages"
"$here/assemble.sh" "$board" "$rootfs" "$work" "$out/$name.img"
if [ "$board" = pc ]; then
  cp "$(ls "$rootfs"/boot/vmlinuz-* | sort -V | tail -1)" "$out/vmlinuz"
  cp "$(ls "$rootfs"/boot/initrd.img-* | sort -V | tail -1)" "$out/initrd.img"
fi
stamp "$out/$name.img ready"
