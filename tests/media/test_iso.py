"""ISO images: level 1 names, Joliet and Rock Ridge, read back by xorriso and isoinfo."""

from __future__ import annotations

import re
import threading
import tracemalloc

import mediakit as K
import pytest

from dicombox.media.errors import MediaError
from dicombox.media.fileset import build_fileset
from dicombox.media.iso import build_iso, volume_id_from
from dicombox.media.verify import verify_iso

ISO_FILE = re.compile(r"^[A-Z0-9_]{1,8}\.([A-Z0-9_]{0,3});1$")
ISO_DIR = re.compile(r"^[A-Z0-9_]{1,8}$")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A job's file-set (CD profile) and its ISO image."""
    tmp = tmp_path_factory.mktemp("iso")
    files = K.job_files(tmp / "spool")
    instances = [K.source(p) for group in files.values() for p in group]
    result = build_fileset(instances, tmp / "fs", fileset_id="20260101-0001",
                           profile="STD-GEN-CD", label=K.label())
    progress = []
    size = build_iso(tmp / "fs", tmp / "disc.iso", "20260101_0001_1OF1",
                     progress=lambda d, t: progress.append((d, t)))
    return tmp, instances, result, size, progress


def test_image_has_level1_names_joliet_and_rock_ridge(built):
    tmp, _, result, size, progress = built
    image = tmp / "disc.iso"
    assert size == image.stat().st_size and size % 2048 == 0
    assert progress[-1] == (size, size)
    d = K.run("isoinfo", "-d", "-i", image, check=True).stdout
    assert "Volume id: 20260101_00_1OF1" in d   # 16 characters: Joliet's limit
    assert "Joliet with UCS level 3 found" in d
    assert "Rock Ridge signatures" in d
    names = K.iso_listing_names(image)
    assert names
    for name in names:
        assert ISO_FILE.match(name) or ISO_DIR.match(name), name
    # Joliet and Rock Ridge show the same names, without ISO 9660 decorations.
    expected = {rel.rsplit("/", 1)[-1] for rel, _, _ in result.files}
    for flags in (("-J",), ("-R",)):
        shown = set(K.iso_listing_names(image, *flags))
        assert expected <= shown, flags


def test_xorriso_extracts_every_file_with_the_spool_checksum(built):
    tmp, instances, result, _, _ = built
    extracted = K.extract_iso(tmp / "disc.iso", tmp / "out")
    assert extracted == {rel: sha for rel, sha, _ in result.files}
    spool = {s.sha256 for s in instances}
    converted = result.converted
    assert len(spool & set(extracted.values())) == len(instances) - converted
    K.check_dicomdir(tmp / "out")


def test_verify_iso_compares_with_the_manifest(built, tmp_path):
    tmp, _, result, size, _ = built
    verify_iso(tmp / "disc.iso", result.files)
    # Flip one byte of a DICOM file inside a copy of the image.
    bad = tmp_path / "bad.iso"
    data = bytearray((tmp / "disc.iso").read_bytes())
    marker = data.find(b"DICM", 64 * 1024)
    data[marker + 200] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(MediaError) as err:
        verify_iso(bad, result.files)
    assert err.value.kind == "verify-failed"
    with pytest.raises(MediaError) as err:
        verify_iso(tmp / "fs" / "README.TXT", result.files)
    assert err.value.kind == "verify-failed"


def test_verify_iso_takes_a_line_listed_twice_at_its_last_value(built, tmp_path):
    tmp, _, result, _, _ = built
    image = tmp / "disc.iso"
    rel, sha, size = result.files[0]
    verify_iso(image, [(rel, "0" * 64, size), *result.files])
    with pytest.raises(MediaError) as err:
        verify_iso(image, [*result.files, (rel, "0" * 64, size)])
    assert err.value.kind == "verify-failed" and f"{rel} differs" in str(err.value)
    # The first missing file in the manifest's order is named, with how many more.
    with pytest.raises(MediaError) as err:
        verify_iso(image, [("B/GONE", "0" * 64, 1), *result.files, ("A/GONE", "0" * 64, 1)])
    assert str(err.value) == "B/GONE is missing from the image (and 1 more)"
    # Nothing is left next to the image.
    assert sorted(p.name for p in tmp.iterdir() if p.name.startswith(".")) == []


def test_trees_are_walked_and_removed_without_listing_them(tmp_path):
    from dicombox.media.verify import remove_tree, walk_tree

    root = tmp_path / "fs"
    for rel in ("A/B/C/F1", "A/B/F2", "A/F3", "F4", "D/E/F5"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(rel.encode())
    (root / "EMPTY").mkdir()
    seen = list(walk_tree(root))
    assert sorted(rel for rel, _, is_dir, _ in seen if not is_dir) == [
        "A/B/C/F1", "A/B/F2", "A/F3", "D/E/F5", "F4"]
    assert sorted(rel for rel, _, is_dir, _ in seen if is_dir) == [
        "A", "A/B", "A/B/C", "D", "D/E", "EMPTY"]
    order = [rel for rel, *_ in seen]
    for rel, path, is_dir, size in seen:
        assert path == root / rel and path.is_dir() == is_dir
        assert size == (0 if is_dir else len(rel))
        if "/" in rel:       # a directory comes before what it holds
            assert order.index(rel.rsplit("/", 1)[0]) < order.index(rel)
    remove_tree(root / "A" / "F3")
    remove_tree(root)
    assert not root.exists()
    remove_tree(root)                       # gone already: nothing to do


def test_names_that_are_not_level1_are_refused(tmp_path):
    (tmp_path / "fs").mkdir()
    (tmp_path / "fs" / "readme.txt").write_text("lower case")
    with pytest.raises(MediaError) as err:
        build_iso(tmp_path / "fs", tmp_path / "x.iso", "X")
    assert err.value.kind == "build-failed" and "readme.txt" in str(err.value)
    (tmp_path / "fs" / "readme.txt").unlink()
    (tmp_path / "fs" / "LONGNAME123").mkdir()
    with pytest.raises(MediaError):
        build_iso(tmp_path / "fs", tmp_path / "x.iso", "X")
    assert not (tmp_path / "x.iso").exists() and not (tmp_path / "x.iso.partial").exists()


def test_cancel_leaves_no_image(built, tmp_path):
    tmp, *_ = built
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(MediaError) as err:
        build_iso(tmp / "fs", tmp_path / "x.iso", "X", cancel=cancel)
    assert err.value.kind == "cancelled"
    assert list(tmp_path.iterdir()) == []


def test_the_image_is_streamed(tmp_path):
    root = tmp_path / "fs"
    (root / "PT000000").mkdir(parents=True)
    with open(root / "PT000000" / "IM000000", "wb") as f:
        for _ in range(64):
            f.write(b"\x5a" * (1 << 20))
    tracemalloc.start()
    try:
        size = build_iso(root, tmp_path / "big.iso", "BIG")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert size > 64 << 20
    assert peak < 8_000_000, peak


def test_volume_ids():
    assert volume_id_from("20260101-0001_1OF3") == "20260101_00_1OF3"
    assert volume_id_from("job") == "JOB"
    assert volume_id_from("") == "DICOM"
    assert len(volume_id_from("x" * 40 + "_10OF12")) == 16
