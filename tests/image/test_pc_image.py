"""`make image-test`: the amd64 image is built from the same hooks as the
Pi's, booted twice under QEMU, and checks itself (selftest/selftest.py)."""

from __future__ import annotations

import pytest
from checks import BOOT, check_partitions, check_root
from diskimage import DiskImage

pytestmark = [pytest.mark.image, pytest.mark.slow, pytest.mark.timeout(2400)]


def verdict(build, phase: int) -> str:
    path = build.out / "test" / "boot-test" / f"result-{phase}.img"
    if not path.exists():
        return ""
    return path.read_bytes().split(b"\0", 1)[0].decode(errors="replace")


def test_self_test_passes_in_both_boots(pc_build):
    first, second = verdict(pc_build, 1), verdict(pc_build, 2)
    report = f"make image-test exited {pc_build.rc}\n{pc_build.tail()}\n" \
             f"--- boot 1\n{first}\n--- boot 2\n{second}"
    assert first.startswith("SELFTEST rc=0\n"), report
    assert second.startswith("SELFTEST rc=0\n"), report
    assert pc_build.rc == 0, report


def test_pc_image_layout(pc_build):
    image = pc_build.out / "test" / "dicombox-pc.img"
    assert image.exists(), pc_build.tail()
    img = DiskImage(image)
    check_partitions(img)
    assert {"vmlinuz", "initrd.img"} <= img.fat_files(BOOT)
    check_root(img)
