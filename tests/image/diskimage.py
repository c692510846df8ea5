"""Read a built disk image without mounting it (no loop devices here).

The partition table comes from ``sfdisk --json``; the FAT boot partition is
read with mtools (``-i IMAGE@@OFFSET``) and the ext4 partitions with
``debugfs`` on ``IMAGE?offset=N``, all straight from the image file.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Partition:
    number: int
    start: int          # bytes
    size: int           # bytes
    type: str
    bootable: bool


class DiskImage:
    def __init__(self, path: Path):
        self.path = Path(path)
        table = json.loads(_run("sfdisk", "--json", str(self.path)))["partitiontable"]
        self.label = table["label"]
        sector = table.get("sectorsize", 512)
        self.partitions = [
            Partition(i + 1, p["start"] * sector, p["size"] * sector, p["type"],
                      bool(p.get("bootable")))
            for i, p in enumerate(table["partitions"])
        ]

    def part(self, number: int) -> Partition:
        return self.partitions[number - 1]

    # FAT (mtools)
    def _fat(self, number: int) -> str:
        return f"{self.path}@@{self.part(number).start}"

    def fat_files(self, number: int) -> set[str]:
        out = _run("mdir", "-b", "-i", self._fat(number), "::/")
        return {line.removeprefix("::/").rstrip("/") for line in out.splitlines() if line}

    def fat_read(self, number: int, name: str) -> str:
        return _run("mtype", "-i", self._fat(number), f"::{name}")

    def fat_info(self, number: int) -> dict[str, str]:
        """minfo's ``key="value"`` lines: ``disk label``, ``disk type`` (FAT32)."""
        info = {}
        for line in _run("minfo", "-i", self._fat(number), "::").splitlines():
            key, sep, value = line.partition("=")
            if sep and value.startswith('"'):
                info[key.strip()] = value.strip().strip('"').strip()
        return info

    # ext4 (debugfs)
    def _ext4(self, number: int) -> str:
        return f"{self.path}?offset={self.part(number).start}"

    def debugfs(self, number: int, request: str) -> str:
        proc = subprocess.run(["debugfs", "-R", request, self._ext4(number)],
                              capture_output=True, text=True, timeout=120)
        return proc.stdout

    def ext4_label(self, number: int) -> str:
        out = _run("dumpe2fs", "-h", self._ext4(number))
        for line in out.splitlines():
            if line.startswith("Filesystem volume name:"):
                return line.split(":", 1)[1].strip()
        return ""

    def ext4_read(self, number: int, path: str) -> bytes:
        proc = subprocess.run(["debugfs", "-R", f"cat {path}", self._ext4(number)],
                              capture_output=True, timeout=120)
        return proc.stdout

    def ext4_ls(self, number: int, path: str) -> set[str]:
        """Names in a directory (empty if it does not exist)."""
        out = self.debugfs(number, f"ls -p {path}")
        names = set()
        for line in out.splitlines():
            # /inode/mode/uid/gid/name/size/
            fields = line.split("/")
            if len(fields) >= 6 and fields[5] not in (".", ".."):
                names.add(fields[5])
        return names

    def ext4_symlink(self, number: int, path: str) -> str | None:
        """The target of a symbolic link, or None if ``path`` is not one."""
        out = self.debugfs(number, f"stat {path}")
        if "Type: symlink" not in out:
            return None
        for line in out.splitlines():
            if line.startswith("Fast link dest:"):
                return line.split(":", 1)[1].strip().strip('"')
        return self.ext4_read(number, path).decode()


def _run(*args: str) -> str:
    return subprocess.run(args, capture_output=True, text=True, check=True,
                          timeout=120).stdout
