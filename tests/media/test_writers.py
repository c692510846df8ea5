"""Writers against real tools: xorriso pseudo-drives (file, small loop device, /dev/full),
a FAT32 image written with mtools, a mounted-stick folder, a folder of ISO images."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import mediakit as K
import pytest

from dicombox.config import Config
from dicombox.media.errors import MediaError
from dicombox.media.fileset import build_fileset
from dicombox.media.iso import build_iso
from dicombox.media.writers import (
    FolderWriter,
    MediumState,
    OpticalWriter,
    UsbWriter,
    writer_for,
    writer_from_config,
)

import datagen


def _job(tmp, files, name):
    instances = [K.source(p) for p in files]
    result = build_fileset(instances, tmp / f"{name}-fs", fileset_id="20260101-0001",
                           profile="STD-GEN-CD", label=K.label())
    iso = tmp / f"{name}.iso"
    build_iso(tmp / f"{name}-fs", iso, "20260101_0001_1OF1")
    return tmp / f"{name}-fs", result, iso


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """The mixed job of the file-set tests: (file-set dir, result, ISO)."""
    tmp = tmp_path_factory.mktemp("small")
    files = K.job_files(tmp / "spool")
    return _job(tmp, [p for group in files.values() for p in group], "small")


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """A job of about 8.5 MB: larger than the 6 MB "disc" of TESTING.md."""
    tmp = tmp_path_factory.mktemp("big")
    return _job(tmp, datagen.ct_series(tmp / "spool", 16, rows=512, cols=512), "big")


@pytest.fixture
def loop_device(tmp_path):
    """``make(size)`` gives a loop device over a sparse file of ``size`` (a small disc)."""
    K.require("losetup", "truncate")
    made: list[str] = []

    def make(size: str) -> tuple[str, Path]:
        backing = tmp_path / f"loop{len(made)}.img"
        K.run("truncate", "-s", size, backing, check=True)
        r = K.run("losetup", "--find", "--show", backing)
        if r.returncode != 0:
            pytest.fail(f"losetup failed: {r.stderr.strip()}")
        made.append(r.stdout.strip())
        return r.stdout.strip(), backing

    yield make
    for dev in made:
        K.run("losetup", "-d", dev)


def _fat_image(path: Path, size: str = "64M", fat: str = "32") -> Path:
    K.require("mkfs.vfat", "mcopy", "mdir")
    K.run("truncate", "-s", size, path, check=True)
    K.run("mkfs.vfat", "-F", fat, "-n", "DICOMBOX", path, check=True)
    return path


def _mtools_env():
    return dict(os.environ, MTOOLS_SKIP_CHECK="1")


# -- optical ----------------------------------------------------------------------------

def test_burn_to_a_pseudo_drive_then_read_it_back(small, tmp_path):
    fs, result, iso = small
    disc = tmp_path / "disc.img"
    writer = OpticalWriter(f"stdio:{disc}")
    info = writer.probe()
    assert info.state is MediumState.BLANK and info.free_bytes > iso.stat().st_size
    progress = []
    writer.write(iso, progress=lambda d, t: progress.append((d, t)))
    assert progress[-1] == (iso.stat().st_size, iso.stat().st_size)
    assert writer.probe().state is MediumState.APPENDABLE
    checked = []
    writer.verify(iso, result.files, progress=lambda d, t: checked.append((d, t)))
    assert checked[-1][0] == checked[-1][1]
    wrong = [(rel, "0" * 64 if rel == "DICOMDIR" else sha, size)
             for rel, sha, size in result.files]
    with pytest.raises(MediaError) as err:
        writer.verify(iso, wrong)
    assert err.value.kind == "verify-failed" and "DICOMDIR" in str(err.value)
    # Independent read-back: xorriso extracts the disc, dicom3tools check it.
    extracted = K.extract_iso(disc, tmp_path / "out")
    assert extracted == {rel: sha for rel, sha, _ in result.files}
    K.check_dicomdir(tmp_path / "out")
    names = K.iso_listing_names(disc)
    assert names and all(n == n.upper() for n in names)
    r = K.run("xorriso", "-indev", f"stdio:{disc}", "-check_media", "--")
    assert r.returncode == 0 and "+ good" in r.stdout + r.stderr


def test_verify_finds_a_disc_that_differs(small, tmp_path):
    _, _, iso = small
    disc = tmp_path / "disc.img"
    writer = OpticalWriter(f"stdio:{disc}", eject=False)
    writer.write(iso)
    data = bytearray(disc.read_bytes())
    data[iso.stat().st_size - 5000] ^= 0x01
    disc.write_bytes(bytes(data))
    with pytest.raises(MediaError) as err:
        writer.verify(iso_path=iso)
    assert err.value.kind == "verify-failed"


def test_a_written_disc_is_refused_unless_it_may_be_overwritten(small, big, tmp_path):
    _, _, iso = small
    _, _, big_iso = big
    disc = tmp_path / "disc.img"
    OpticalWriter(f"stdio:{disc}").write(big_iso)
    before = K.sha256(disc)
    with pytest.raises(MediaError) as err:
        OpticalWriter(f"stdio:{disc}").write(iso)
    assert err.value.kind == "not-blank" and "blank disc" in str(err.value)
    assert K.sha256(disc) == before
    rewriter = OpticalWriter(f"stdio:{disc}", overwrite=True)
    rewriter.write(iso)
    rewriter.verify(iso_path=iso)


def test_a_medium_too_small_is_recognised_before_writing(big, loop_device):
    _, _, iso = big
    device, backing = loop_device("6M")
    writer = OpticalWriter(f"stdio:{device}")
    info = writer.probe()
    assert info.state is MediumState.BLANK
    assert 5_000_000 < info.capacity_bytes <= 6 * 1024 * 1024
    assert iso.stat().st_size > info.free_bytes
    with pytest.raises(MediaError) as err:
        writer.write(iso)
    assert err.value.kind == "too-small" and "MB" in str(err.value)
    with open(backing, "rb") as f:
        assert not f.read(1 << 20).strip(b"\0")      # nothing was written


def test_dev_full_fails_mid_write_with_a_clear_error(small):
    _, _, iso = small
    writer = OpticalWriter("stdio:/dev/full")
    assert writer.probe().state is MediumState.BLANK
    with pytest.raises(MediaError) as err:
        writer.write(iso)
    assert err.value.kind == "write-failed"
    assert "No space left on device" in str(err.value)
    assert "\n" not in str(err.value)


def test_a_missing_drive_and_a_cancelled_burn(small, tmp_path):
    _, _, iso = small
    writer = OpticalWriter(f"stdio:{tmp_path}/no/such/dir/disc.img")
    with pytest.raises(MediaError) as err:
        writer.probe()
    assert err.value.kind == "no-drive"
    with pytest.raises(MediaError) as err:
        writer.write(iso)
    assert err.value.kind == "no-drive"
    with pytest.raises(MediaError) as err:
        OpticalWriter(f"stdio:{tmp_path}/x", xorriso="no-such-xorriso").probe()
    assert err.value.kind == "no-drive" and "not installed" in str(err.value)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(MediaError) as err:
        OpticalWriter(f"stdio:{tmp_path}/disc.img").write(iso, cancel=cancel)
    assert err.value.kind == "cancelled"
    OpticalWriter(f"stdio:{tmp_path}/disc.img").eject()


# -- USB --------------------------------------------------------------------------------

def test_usb_fat32_image_receives_a_verified_copy(small, tmp_path):
    fs, result, _ = small
    image = _fat_image(tmp_path / "stick.img")
    writer = UsbWriter(image=image)
    writer.MCOPY_BATCH = 3          # several mtools runs for one directory
    assert writer.block_bytes == 512
    info = writer.probe()
    assert info.state is MediumState.BLANK and info.free_bytes > result.total_bytes
    progress = []
    writer.write(fs, progress=lambda d, t: progress.append((d, t)))
    assert progress[-1] == (result.total_bytes, result.total_bytes)
    writer.verify(files=result.files)
    assert writer.probe().state is MediumState.CLOSED
    fsck = K.run("fsck.vfat", "-n", image)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    out = tmp_path / "out"
    out.mkdir()
    r = K.run("mcopy", "-s", "-i", image, "::/*", out, env=_mtools_env())
    assert r.returncode == 0, r.stderr
    assert K.tree_checksums(out) == {rel: sha for rel, sha, _ in result.files}
    K.check_dicomdir(out)
    with pytest.raises(MediaError) as err:
        writer.write(fs)
    assert err.value.kind == "not-blank"


def test_usb_image_too_small_or_pulled_out(big, small, tmp_path):
    fs, _, _ = big
    image = _fat_image(tmp_path / "tiny.img", "4M", "12")
    with pytest.raises(MediaError) as err:
        UsbWriter(image=image).write(fs)
    assert err.value.kind == "too-small"
    listing = K.run("mdir", "-b", "-i", image, "::/", env=_mtools_env()).stdout
    assert "PT000000" not in listing
    small_fs, _, _ = small
    image = _fat_image(tmp_path / "pulled.img")

    def pull(done, total):
        if image.exists():
            image.unlink()

    with pytest.raises(MediaError) as err:
        UsbWriter(image=image).write(small_fs, progress=pull)
    assert err.value.kind == "removed"
    assert UsbWriter(image=image).probe().state is MediumState.NO_MEDIUM


def test_usb_mounted_stick(small, tmp_path):
    fs, result, _ = small
    stick = tmp_path / "stick"
    stick.mkdir()
    assert UsbWriter(stick).probe().state is MediumState.NO_MEDIUM   # not a mount point
    with pytest.raises(MediaError) as err:
        UsbWriter(stick).write(fs)
    assert err.value.kind == "no-medium"
    (stick / "holiday.jpg").write_bytes(b"someone else's")
    writer = UsbWriter(stick, require_mount=False)
    assert writer.probe().state is MediumState.APPENDABLE
    writer.write(fs)
    writer.verify(files=result.files)
    assert (stick / "holiday.jpg").read_bytes() == b"someone else's"
    K.check_dicomdir(stick)
    victim = stick / result.files[-1][0]
    victim.write_bytes(victim.read_bytes()[:-1] + b"\0")
    with pytest.raises(MediaError) as err:
        writer.verify(files=result.files)
    assert err.value.kind == "verify-failed" and result.files[-1][0] in str(err.value)


def test_usb_stick_pulled_out_while_copying(small, tmp_path):
    fs, _, _ = small
    stick = tmp_path / "stick"
    stick.mkdir()

    def pull(done, total):
        if stick.exists():
            shutil.rmtree(stick)

    with pytest.raises(MediaError) as err:
        UsbWriter(stick, require_mount=False).write(fs, progress=pull)
    assert err.value.kind == "removed"


# -- folder -------------------------------------------------------------------------------

def test_folder_receives_a_verified_image(small, tmp_path):
    _, _, iso = small
    writer = FolderWriter(tmp_path / "out" / "isos")
    assert writer.probe().state is MediumState.BLANK
    dst = writer.write(iso)
    assert dst == tmp_path / "out" / "isos" / iso.name
    assert K.sha256(dst) == K.sha256(iso)
    writer.verify(iso_path=iso)
    writer.verify(iso, small[1].files, iso_sha256=K.sha256(iso))
    with open(dst, "r+b") as f:
        f.seek(40000)
        f.write(b"\xff")
    with pytest.raises(MediaError) as err:
        writer.verify(iso_path=iso)
    assert err.value.kind == "verify-failed"
    (tmp_path / "afile").write_text("x")
    with pytest.raises(MediaError) as err:
        FolderWriter(tmp_path / "afile").write(iso)
    assert err.value.kind == "no-medium"


def test_writer_factory(tmp_path):
    w = writer_for("optical", device="stdio:/tmp/x", speed="4", eject=False, udev_node="")
    assert isinstance(w, OpticalWriter) and w.needs_iso and not w.eject_after
    w = writer_for("usb", mount_point=tmp_path)
    assert isinstance(w, UsbWriter) and not w.needs_iso
    assert isinstance(writer_for("usb", image=tmp_path / "u.img"), UsbWriter)
    assert isinstance(writer_for("folder", directory=tmp_path), FolderWriter)
    with pytest.raises(ValueError):
        writer_for("floppy")
    media = Config().media
    assert isinstance(writer_from_config(media), OpticalWriter)
