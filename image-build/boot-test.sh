#!/usr/bin/env bash
# Boot the amd64 test image twice under QEMU and read the self-test's
# verdicts.
#
#   boot-test.sh DIR       (DIR holds dicombox-pc.img, vmlinuz, initrd.img
#                           from `build.sh --board pc --test --out DIR`)
#
# Software emulation only (TCG): the KVM device on the build machines does
# not boot ordinary guests.  The kernel and initrd are given to QEMU
# directly.  Each boot gets a fresh 1 MiB result disk (serial "result");
# the self-test writes "SELFTEST rc=N" and its checks there and powers off.
# The boots run on a copy of the image so that the image stays pristine,
# and the second boot sees what the first left on the data partition.
# `timeout`, -no-reboot and panic=-1 make every run end by itself.
# Exit status 0 only if both verdicts say rc=0.
set -euo pipefail
dir=${1:?usage: boot-test.sh DIR}
boot_timeout=${BOOT_TIMEOUT:-900}
memory=${BOOT_MEMORY:-1024}
. "$(dirname "$0")/config.sh"

for f in dicombox-pc.img vmlinuz initrd.img; do
  [ -f "$dir/$f" ] || { echo "boot-test: $dir/$f is missing" >&2; exit 2; }
done
command -v qemu-system-x86_64 >/dev/null \
  || { echo "boot-test: qemu-system-x86_64 is missing (run scripts/install-peers.sh)" >&2; exit 2; }

run="$dir/boot-test"
rm -rf "$run"
mkdir -p "$run"
cp --sparse=always "$dir/dicombox-pc.img" "$run/disk.img"
# A disk larger than the image, as an SD card is: the data partition must
# grow into the rest at the first boot.
truncate -s +256M "$run/disk.img"

rc=0
for phase in 1 2; do
  result="$run/result-$phase.img"
  truncate -s 1M "$result"
  started=$(date +%s)
  set +e
  timeout --kill-after=10 "$boot_timeout" qemu-system-x86_64 \
    -machine q35,accel=tcg -cpu max -smp "${BOOT_CPUS:-2}" \
    -m "$memory" -nodefaults -no-user-config -display none -no-reboot \
    -serial "file:$run/console-$phase.log" \
    -kernel "$dir/vmlinuz" -initrd "$dir/initrd.img" \
    -append "root=LABEL=$ROOT_LABEL ro console=ttyS0,115200 panic=-1 dicombox.selftest=$phase" \
    -drive "file=$run/disk.img,if=virtio,format=raw" \
    -drive "file=$result,if=none,id=result,format=raw" \
    -device virtio-blk-pci,drive=result,serial=result \
    -nic user,model=virtio-net-pci,restrict=on
  qemu_rc=$?
  set -e
  verdict=$(tr -d '\0' <"$result")
  echo "boot-test: boot $phase ended after $(( $(date +%s) - started )) s (qemu rc=$qemu_rc)"
  if [ -z "$verdict" ]; then
    echo "boot-test: boot $phase wrote no verdict; console: $run/console-$phase.log"
    tail -n 40 "$run/console-$phase.log" | sed 's/^/  | /'
    rc=1
    break
  fi
  printf '%s\n' "$verdict" | sed 's/^/  /'
  case "$(printf '%s\n' "$verdict" | head -n1)" in
    "SELFTEST rc=0") ;;
    *) rc=1; break ;;
  esac
done
[ $rc = 0 ] && rm -f "$run/disk.img"
echo "boot-test: $([ $rc = 0 ] && echo passed || echo FAILED)"
exit $rc
