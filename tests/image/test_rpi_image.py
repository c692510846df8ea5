"""`make image`: the Raspberry Pi 3/4 SD card image, inspected on the
file itself (sfdisk, mtools, debugfs).  Not part of the default suite (an
arm64 build under emulation takes minutes): run with ``-m image_arm64``."""

from __future__ import annotations

import re

import pytest
from checks import BOOT, ROOT, ROOT_LABEL, SITE, check_partitions, check_root, elf_machine
from diskimage import DiskImage

pytestmark = [pytest.mark.image_arm64, pytest.mark.timeout(3600)]

FIRMWARE = {"bootcode.bin", "start.elf", "fixup.dat", "start4.elf", "fixup4.dat"}
# Debian's kernel has the upstream device trees (config.txt: upstream_kernel=1).
DEVICE_TREES = {"bcm2837-rpi-3-b.dtb", "bcm2837-rpi-3-b-plus.dtb", "bcm2711-rpi-4-b.dtb"}


@pytest.fixture(scope="module")
def rpi_image(rpi_build):
    image = rpi_build.out / "dicombox-rpi.img"
    assert rpi_build.rc == 0 and image.exists(), rpi_build.tail()
    return DiskImage(image)


def test_partitions(rpi_image):
    check_partitions(rpi_image)


def test_boot_partition_boots_the_root_by_label(rpi_image):
    files = rpi_image.fat_files(BOOT)
    assert files >= FIRMWARE, f"missing firmware: {FIRMWARE - files}"
    assert files >= DEVICE_TREES, f"missing device trees: {DEVICE_TREES - files}"

    # The Pi 3 reads cmdline.txt, the Pi 4 the file config.txt's [pi4] names.
    config = rpi_image.fat_read(BOOT, "config.txt")
    pi4 = re.search(r"^\[pi4\]\s*\ncmdline=(\S+)\s*\n\[all\]", config, re.M)
    assert pi4, config
    for name in ("cmdline.txt", pi4.group(1)):
        assert name in files
        cmdline = rpi_image.fat_read(BOOT, name)
        assert len(cmdline.strip().splitlines()) == 1, f"{name} must be one line"
        roots = [a for a in cmdline.split() if a.startswith("root=")]
        assert roots == [f"root=LABEL={ROOT_LABEL}"], cmdline

    settings = dict(re.findall(r"^\s*(\w+)\s*=\s*(\S+)", config, re.M))
    assert settings.get("arm_64bit") == "1", config
    assert settings.get("kernel") in files, f"kernel {settings.get('kernel')} not on the partition"
    initramfs = re.search(r"^\s*initramfs\s+(\S+)", config, re.M)
    assert initramfs and initramfs.group(1) in files, config


def test_root_holds_the_venv_and_enabled_units(rpi_image):
    check_root(rpi_image)


def test_compiled_wheels_are_for_arm64(rpi_image):
    core = rpi_image.ext4_ls(ROOT, f"{SITE}/numpy/_core")
    modules = [n for n in core if n.startswith("_multiarray_umath.") and n.endswith(".so")]
    assert modules and "aarch64" in modules[0], core
    data = rpi_image.ext4_read(ROOT, f"{SITE}/numpy/_core/{modules[0]}")
    assert elf_machine(data) == 183
