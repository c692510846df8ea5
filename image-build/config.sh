# shellcheck shell=bash
# What goes into the appliance image: the Debian release, the archive, the
# packages per board, the partition layout and its labels.  Sourced by
# build.sh; every value can be overridden from the environment.

SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${SECURITY_MIRROR:-http://deb.debian.org/debian-security}
COMPONENTS=${COMPONENTS:-main non-free-firmware}

# The Python the wheelhouse is built for: bookworm's python3.
PYTHON_VERSION=${PYTHON_VERSION:-3.11}
# glibc of the target release, for manylinux wheels (bookworm: 2.36).
GLIBC_VERSION=${GLIBC_VERSION:-2.36}

# Filesystem labels: fstab, the kernel command line and cmdline.txt refer to
# the partitions by these, never by device name (SD card, USB SSD and the
# test machine's virtio disk all differ).
BOOT_LABEL=${BOOT_LABEL:-DBX-BOOT}        # FAT: at most 11 characters
ROOT_LABEL=${ROOT_LABEL:-dicombox-root}   # ext4: at most 16 characters
DATA_LABEL=${DATA_LABEL:-dicombox-data}

# Partition sizes in MiB.  ROOT_SIZE=auto: what the tree needs plus headroom.
FIRST_OFFSET=${FIRST_OFFSET:-4}
BOOT_SIZE=${BOOT_SIZE:-256}
ROOT_SIZE=${ROOT_SIZE:-auto}
DATA_SIZE=${DATA_SIZE:-512}

# Where the data partition is mounted: the services' StateDirectory.
DATA_MOUNT=/var/lib/dicombox
# Where the application's virtual environment lives.
VENV=/opt/dicombox/venv

# Packages of every board.  mmdebstrap installs no Recommends, so everything
# the box needs at run time is listed: overlayroot's initramfs script needs
# busybox, the initramfs is zstd-compressed, the media service writes discs
# through xorriso (libburn) and ejects trays, the data partition is grown
# with sfdisk (fdisk).
PACKAGES_COMMON=(
  systemd-sysv udev libnss-systemd dbus kmod
  initramfs-tools overlayroot busybox zstd
  e2fsprogs dosfstools fdisk
  systemd-timesyncd systemd-resolved iproute2 procps
  python3 python3-venv
  xorriso eject
)

# board -> Debian architecture, kernel and firmware.
board_arch() {
  case "$1" in
    rpi) echo arm64 ;;
    pc) echo amd64 ;;
    *) return 1 ;;
  esac
}

board_packages() {
  case "$1" in
    # Raspberry Pi 3/4: Debian's own kernel, the GPU firmware and boot
    # files (raspi-firmware fills /boot/firmware), the Wi-Fi/BT firmware.
    rpi) echo linux-image-arm64 raspi-firmware firmware-brcm80211 ;;
    # The test machine: QEMU q35 booted with the kernel given directly.
    pc) echo linux-image-amd64 ;;
  esac
}
