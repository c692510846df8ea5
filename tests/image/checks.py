"""What every dicombox image must hold, checked on the image file itself."""

from __future__ import annotations

import configparser
from pathlib import Path

from diskimage import DiskImage

REPO = Path(__file__).resolve().parents[2]
BOOT, ROOT, DATA = 1, 2, 3
BOOT_LABEL, ROOT_LABEL, DATA_LABEL = "DBX-BOOT", "dicombox-root", "dicombox-data"
VENV = "/opt/dicombox/venv"
SITE = f"{VENV}/lib/python3.11/site-packages"
UNIT_DIR = "/usr/lib/systemd/system"


def repo_units() -> list[Path]:
    return sorted(p for p in (REPO / "systemd").glob("*")
                  if p.suffix in (".service", ".target", ".socket", ".timer", ".path", ".mount"))


def install_targets(unit: Path) -> list[tuple[str, str]]:
    """(kind, target) pairs of a unit's [Install] section: ("wants", "x.target")."""
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read_string(unit.read_text())
    if not parser.has_section("Install"):
        return []
    pairs = []
    for key, kind in (("WantedBy", "wants"), ("RequiredBy", "requires")):
        for target in parser.get("Install", key, fallback="").split():
            pairs.append((kind, target))
    return pairs


def check_partitions(img: DiskImage) -> None:
    assert img.label == "dos", "the Pi 3 firmware reads only MBR partition tables"
    assert [p.type for p in img.partitions] == ["c", "83", "83"]
    assert img.part(BOOT).bootable
    starts = [p.start for p in img.partitions]
    assert all(s % (1024 * 1024) == 0 for s in starts), f"partitions not MiB-aligned: {starts}"
    info = img.fat_info(BOOT)
    assert info.get("disk type") == "FAT32"
    assert info.get("disk label") == BOOT_LABEL
    assert img.ext4_label(ROOT) == ROOT_LABEL
    assert img.ext4_label(DATA) == DATA_LABEL


def check_root(img: DiskImage) -> None:
    """The venv, byte-compiled; every unit of systemd/ installed and enabled;
    mounts by label; the service user."""
    assert "dicombox" in img.ext4_ls(ROOT, f"{VENV}/bin")
    package = img.ext4_ls(ROOT, f"{SITE}/dicombox")
    assert "cli.py" in package
    compiled = img.ext4_ls(ROOT, f"{SITE}/dicombox/__pycache__")
    assert "cli.cpython-311.pyc" in compiled, "the venv is not byte-compiled"

    units = repo_units()
    assert units, "systemd/ has no units"
    installed = img.ext4_ls(ROOT, UNIT_DIR)
    for unit in units:
        assert unit.name in installed, f"{unit.name} not installed in {UNIT_DIR}"
        shipped = img.ext4_read(ROOT, f"{UNIT_DIR}/{unit.name}")
        assert shipped == unit.read_bytes(), f"{unit.name} differs from the repository's"
        for kind, target in install_targets(unit):
            link = img.ext4_symlink(ROOT, f"/etc/systemd/system/{target}.{kind}/{unit.name}")
            assert link and link.endswith(f"/{unit.name}"), f"{unit.name} not enabled in {target}"

    fstab = img.ext4_read(ROOT, "/etc/fstab").decode()
    mounts = {f[1]: f for f in (line.split() for line in fstab.splitlines())
              if f and not f[0].startswith("#")}
    assert mounts["/"][0] == f"LABEL={ROOT_LABEL}" and "ro" in mounts["/"][3].split(",")
    assert mounts["/boot/firmware"][0] == f"LABEL={BOOT_LABEL}"
    assert mounts["/var/lib/dicombox"][0] == f"LABEL={DATA_LABEL}"
    assert mounts["/var/lib/dicombox"][2] == "ext4"

    sysusers = REPO / "rootfs/usr/lib/sysusers.d"
    if any(sysusers.glob("*.conf")):
        passwd = img.ext4_read(ROOT, "/etc/passwd").decode()
        assert any(line.startswith("dicombox:") for line in passwd.splitlines()), \
            "the service user from sysusers.d is missing"

    assert img.ext4_read(ROOT, "/etc/machine-id") == b"", "machine-id must be generated per box"
    assert img.ext4_read(ROOT, "/etc/hostname").decode().strip() == "dicombox"


def elf_machine(data: bytes) -> int:
    """e_machine of an ELF file: 62 x86-64, 183 AArch64."""
    assert data[:4] == b"\x7fELF", "not an ELF file"
    return int.from_bytes(data[18:20], "little")
