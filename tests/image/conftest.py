"""Fixtures for the appliance image tests: each image is built once per
session through the Makefile, into the session's temporary directory.

The amd64 image test (``make image-test``: build, two boots under QEMU) is
part of the default suite, marked ``image`` and ``slow``
(``-m "not image"`` leaves it out of a quick local run).  The Raspberry Pi
image takes about eight minutes to build under emulation; its test is
marked ``image_arm64`` and runs only when asked for: ``pytest -m image_arm64``.
"""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "image_arm64: builds the Raspberry Pi (arm64) image, about 8 minutes; "
                   "runs only with -m image_arm64")


def pytest_collection_modifyitems(config, items):
    if "image_arm64" in (config.option.markexpr or ""):
        return
    skip = pytest.mark.skip(reason="builds the arm64 image (minutes): run with -m image_arm64")
    for item in items:
        if "image_arm64" in item.keywords:
            item.add_marker(skip)


@dataclass
class Build:
    """One `make` run that builds (and perhaps boots) an image."""
    out: Path
    rc: int
    log: Path

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def make(target: str, out: Path, timeout: float) -> Build:
    """Run ``make TARGET IMAGE_OUT=out`` in its own process group, stopped
    whole if it overruns (mmdebstrap and QEMU are its grandchildren):
    SIGTERM first, so that mmdebstrap unmounts what it mounted."""
    log = out / f"make-{target}.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(["make", "-C", str(REPO), target, f"IMAGE_OUT={out}"],
                                stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            rc = -1
            f.write(f"\n(killed after {timeout} s)\n")
    return Build(out, rc, log)


def _drop_images(out: Path) -> None:
    """Images are large; keep only the logs, verdicts and consoles."""
    for img in out.rglob("*.img"):
        if not img.name.startswith("result-"):
            img.unlink()


@pytest.fixture(scope="session")
def pc_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("image-pc")
    build = make("image-test", out, timeout=2000)
    yield build
    _drop_images(out)


@pytest.fixture(scope="session")
def rpi_build(tmp_path_factory):
    """``make image``, unless DICOMBOX_RPI_IMAGE_OUT names the output folder
    of a build already made (its dicombox-rpi.img is inspected as is)."""
    built = os.environ.get("DICOMBOX_RPI_IMAGE_OUT")
    if built:
        yield Build(Path(built), 0, Path(built) / "make-image.log")
        return
    out = tmp_path_factory.mktemp("image-rpi")
    build = make("image", out, timeout=3000)
    yield build
    _drop_images(out)
