#!/usr/bin/env bash
# Turn a root filesystem tree into a partitioned disk image, without loop
# devices, device-mapper or mounts (none exist on the build machines):
#
#   assemble.sh BOARD ROOTFS WORKDIR IMAGE
#
#   p1  boot  FAT32 (LBA), bootable   BOOT_LABEL  the Pi's firmware, kernel,
#                                                 initrd, config.txt, cmdline.txt
#   p2  root  ext4                    ROOT_LABEL  mounted read-only under overlayroot
#   p3  data  ext4                    DATA_LABEL  the services' state, read-write
#
# Each filesystem is made in a file of its own (mkfs.vfat -C + mcopy, mkfs.ext4
# -d), the MBR is written with sfdisk, and the filesystems are copied into
# place with dd.  The order boot | root | data leaves room to add a second
# root partition for A/B updates later without moving the data.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=image-build/config.sh
. "$here/config.sh"

board=${1:?} rootfs=${2:?} work=${3:?} image=${4:?}
epoch=${SOURCE_DATE_EPOCH:-$(date +%s)}
export E2FSPROGS_FAKE_TIME=$epoch

# Stable identifiers derived from the labels, so that the same inputs give
# the same disk.
uuid_of() { printf %s "$1" | sha256sum | sed -E 's/^(.{8})(.{4}).(.{3}).(.{3})(.{12}).*/\1-\2-4\3-8\4-\5/'; }

# Boot partition contents.  On the Pi, raspi-firmware has filled
# /boot/firmware (the mount point of p1); on the PC the kernel and initrd
# are copied there for symmetry (QEMU boots them directly).
bootfiles="$work/bootfiles"
mkdir -p "$bootfiles"
case "$board" in
  rpi)
    [ -f "$rootfs/boot/firmware/config.txt" ] || { echo "assemble: no config.txt in /boot/firmware" >&2; exit 1; }
    find "$rootfs/boot/firmware" -mindepth 1 -maxdepth 1 -exec mv -t "$bootfiles" {} +
    ;;
  pc)
    cp "$(ls "$rootfs"/boot/vmlinuz-* | sort -V | tail -1)" "$bootfiles/vmlinuz"
    cp "$(ls "$rootfs"/boot/initrd.img-* | sort -V | tail -1)" "$bootfiles/initrd.img"
    ;;
esac

# Root: what the tree uses plus a quarter and 64 MiB for the filesystem's
# own metadata and journal, rounded up to 4 MiB.
root_size=$ROOT_SIZE
if [ "$root_size" = auto ]; then
  used=$(du -s --block-size=1M "$rootfs" | cut -f1)
  root_size=$(( (used * 5 / 4 + 64 + 3) / 4 * 4 ))
fi

mkfs.vfat -F 32 -n "$BOOT_LABEL" -i "$(uuid_of "$BOOT_LABEL" | cut -c1-8)" \
  -C "$work/boot.fat" $((BOOT_SIZE * 1024)) >/dev/null
if [ -n "$(ls -A "$bootfiles")" ]; then
  mcopy -i "$work/boot.fat" -s -p -m -Q "$bootfiles"/* ::/
fi

mkfs.ext4 -q -F -L "$ROOT_LABEL" -U "$(uuid_of "$ROOT_LABEL")" \
  -E "root_owner=0:0,hash_seed=$(uuid_of "$ROOT_LABEL-hash")" \
  -d "$rootfs" "$work/root.ext4" "${root_size}M"
mkfs.ext4 -q -F -L "$DATA_LABEL" -U "$(uuid_of "$DATA_LABEL")" \
  -E "root_owner=0:0,hash_seed=$(uuid_of "$DATA_LABEL-hash")" \
  "$work/data.ext4" "${DATA_SIZE}M"

# MBR: the Pi's firmware reads only MBR partition tables on a Pi 3.
mib=2048   # sectors per MiB
boot_start=$FIRST_OFFSET
root_start=$((boot_start + BOOT_SIZE))
data_start=$((root_start + root_size))
total=$((data_start + DATA_SIZE))
rm -f "$image"
truncate -s "${total}M" "$image"
sfdisk --quiet --no-reread --no-tell-kernel "$image" <<EOT
label: dos
label-id: 0x$(uuid_of "$ROOT_LABEL-disk" | cut -c1-8)
unit: sectors

start=$((boot_start * mib)), size=$((BOOT_SIZE * mib)), type=c, bootable
start=$((root_start * mib)), size=$((root_size * mib)), type=83
start=$((data_start * mib)), size=$((DATA_SIZE * mib)), type=83
EOT
dd if="$work/boot.fat" of="$image" bs=1M seek="$boot_start" conv=notrunc,sparse status=none
dd if="$work/root.ext4" of="$image" bs=1M seek="$root_start" conv=notrunc,sparse status=none
dd if="$work/data.ext4" of="$image" bs=1M seek="$data_start" conv=notrunc,sparse status=none
echo "assemble: $image: boot ${BOOT_SIZE} MiB | root ${root_size} MiB | data ${DATA_SIZE} MiB"
