"""File-sets: DICOMDIR and instances checked by dicom3tools and DCMTK, PDI extras, charsets."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import threading
import tracemalloc
import xml.etree.ElementTree as ET
from pathlib import Path

import mediakit as K
import numpy as np
import pytest
from pydicom import dcmread

from dicombox.media.errors import MediaError
from dicombox.media.fileset import (
    SourceInstance,
    build_fileset,
    fileset_id_from,
    size_on_medium,
)

import datagen

EXPLICIT_LE = "1.2.840.10008.1.2.1"
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.70"


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    files = K.job_files(tmp_path_factory.mktemp("spool"))
    return files, [K.source(p) for group in files.values() for p in group]


def build(instances, out: Path, profile="STD-GEN-CD", **kw):
    kw.setdefault("label", K.label())
    kw.setdefault("fileset_id", "20260101-0001")
    return build_fileset(instances, out, profile=profile, **kw)


def test_cd_fileset_passes_dicom3tools_and_dcmtk(job, tmp_path):
    files, instances = job
    progress = []
    result = build(instances, tmp_path / "fs", progress=lambda d, t: progress.append((d, t)))
    root = tmp_path / "fs"
    listing = K.check_dicomdir(root)
    # The record types the SOP classes need.
    for record in ("PATIENT", "STUDY", "SERIES", "IMAGE", "SR DOCUMENT", "KEY OBJECT DOC",
                   "PRESENTATION", "ENCAP DOC"):
        assert record in listing, record
    K.check_file_ids(root)
    # DCMTK as a second opinion: the General Purpose CD-R profile takes every file.
    ok, messages = K.dcmmkdir(root, "-Pgp", tmp_path / "DICOMDIR.dcmtk")
    assert ok, messages
    assert result.profile == "STD-GEN-CD"
    assert result.fileset_id == "20260101_0001"
    assert dcmread(root / "DICOMDIR").FileSetID == "20260101_0001"
    assert result.instances == len(instances) and result.converted == 3
    assert result.patients == 4 and result.studies == 4
    # Every file of the tree is in the manifest, with its checksum.
    assert {rel: sha for rel, sha, _ in result.files} == K.tree_checksums(root)
    assert result.total_bytes == sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert progress and progress[-1][0] == progress[-1][1]
    assert [d for d, _ in progress] == sorted(d for d, _ in progress)
    assert not (tmp_path / "fs.partial").exists()


def test_cd_profile_decompresses_and_keeps_uids_and_pixels(job, tmp_path):
    files, instances = job
    result = build(instances, tmp_path / "fs")
    by_uid = K.files_by_uid(tmp_path / "fs")
    for src in files["de"]:
        ds_src = dcmread(src)
        out = dcmread(tmp_path / "fs" / by_uid[str(ds_src.SOPInstanceUID)])
        assert out.file_meta.TransferSyntaxUID == EXPLICIT_LE
        assert out.SOPInstanceUID == ds_src.SOPInstanceUID
        assert np.array_equal(out.pixel_array, ds_src.pixel_array)
    # Instances the profile allows are copied byte for byte (the spool's checksum).
    spool = {s.sop_instance_uid: s.sha256 for s in instances}
    manifest = {rel: sha for rel, sha, _ in result.files}
    for src in files["jp"] + files["gr"] + files["docs"]:
        uid = str(dcmread(src, stop_before_pixels=True).SOPInstanceUID)
        assert manifest[by_uid[uid]] == spool[uid]


def test_usb_profile_keeps_jpeg_lossless_as_received(job, tmp_path):
    files, instances = job
    result = build(instances, tmp_path / "fs", profile="STD-GEN-USB-JPEG")
    assert result.converted == 0
    root = tmp_path / "fs"
    K.check_dicomdir(root)
    for src in files["de"]:
        uid = str(dcmread(src, stop_before_pixels=True).SOPInstanceUID)
        out = root / K.files_by_uid(root)[uid]
        assert K.sha256(out) == K.sha256(src)
        assert dcmread(out, stop_before_pixels=True).file_meta.TransferSyntaxUID == JPEG_LOSSLESS
    # The DICOMDIR says which syntax each file is in.
    syntaxes = {str(rec.ReferencedTransferSyntaxUIDInFile)
                for rec in dcmread(root / "DICOMDIR").DirectoryRecordSequence
                if "ReferencedTransferSyntaxUIDInFile" in rec}
    assert syntaxes == {EXPLICIT_LE, JPEG_LOSSLESS}
    ok, messages = K.dcmmkdir(root, "-Pfl", tmp_path / "DICOMDIR.dcmtk")
    assert ok, messages
    # ...while DCMTK's CD profile rejects them: the CD build must convert.
    ok, messages = K.dcmmkdir(root, "-Pgp", tmp_path / "DICOMDIR.cd")
    assert not ok and "LittleEndianExplicit expected" in messages


@pytest.mark.parametrize("kind, kept_on_usb", [
    ("jpeg-baseline", True), ("rle", False), ("jpeg-ls", False), ("j2k-lossless", False)])
def test_every_stored_syntax_reaches_the_cd_profile(tmp_path, kind, kept_on_usb):
    plain = datagen.ct_series(tmp_path / "src", 2, rows=32, cols=48)
    stored = [datagen.compress(p, tmp_path / kind / p.name, kind) for p in plain]
    instances = [K.source(p) for p in stored]
    cd = build(instances, tmp_path / "cd")
    by_uid = K.files_by_uid(tmp_path / "cd")
    assert cd.converted == 2
    K.check_dicomdir(tmp_path / "cd")
    for src in stored:
        original = dcmread(src)
        out = dcmread(tmp_path / "cd" / by_uid[str(original.SOPInstanceUID)])
        assert out.file_meta.TransferSyntaxUID == EXPLICIT_LE
        assert np.array_equal(out.pixel_array, original.pixel_array)
        if kind == "jpeg-baseline":
            assert out.LossyImageCompression == "01"   # still says it was lossy
    usb = build(instances, tmp_path / "usb", profile="STD-GEN-USB-JPEG")
    assert usb.converted == (0 if kept_on_usb else 2)
    ok, messages = K.dcmmkdir(tmp_path / "usb", "-Pfl", tmp_path / "DICOMDIR.dcmtk")
    assert ok, messages
    if kind == "j2k-lossless":
        j2k = build(instances, tmp_path / "j2k", profile="STD-GEN-USB-J2K")
        assert j2k.converted == 0
        ok, messages = K.dcmmkdir(tmp_path / "j2k", "-Pf2", tmp_path / "DICOMDIR.j2k")
        assert ok, messages


def test_what_cannot_be_decoded_is_written_as_received(tmp_path):
    from pydicom.encaps import encapsulate
    path = datagen.ct_series(tmp_path / "src", 1, rows=16, cols=16)[0]
    ds = dcmread(path)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"     # MPEG2 MP@ML
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + b"\x10" * 60])
    ds["PixelData"].VR = "OB"
    ds.NumberOfFrames = 1
    ds.save_as(path, enforce_file_format=True)
    inst = K.source(path)
    result = build([inst], tmp_path / "fs")
    assert result.converted == 0 and result.outside_profile == 1
    [rel] = K.files_by_uid(tmp_path / "fs").values()
    assert K.tree_checksums(tmp_path / "fs")[rel] == inst.sha256
    K.check_dicomdir(tmp_path / "fs")


def _raw_value(path: Path, keyword: str) -> bytes:
    """The undecoded bytes of an element of a Part 10 file's top-level dataset."""
    from pydicom.filereader import read_partial
    with open(path, "rb") as f:
        ds = read_partial(f, stop_when=None, defer_size=None)
    return ds.get_item(keyword).value


def test_character_sets_are_preserved(job, tmp_path):
    files, instances = job
    build(instances, tmp_path / "fs")
    root = tmp_path / "fs"
    dicomdir = dcmread(root / "DICOMDIR")
    patients = {str(r.PatientID): r for r in dicomdir.DirectoryRecordSequence
                if r.DirectoryRecordType == "PATIENT"}
    expected = {"PIDJP": ("Yamada^Tarou=山田^太郎=やまだ^たろう", ["", "ISO 2022 IR 87"]),
                "PIDDE": ("Müller^Hans", "ISO_IR 100"),
                "PIDGR": ("Ωμέγα^Δοκιμή", "ISO_IR 192")}
    for pid, (name, charset) in expected.items():
        record = patients[pid]
        assert record.SpecificCharacterSet == charset
        assert str(record.PatientName) == name
    # Byte for byte what the modality sent (escape sequences included).
    sent = _raw_value(files["jp"][0], "PatientName")
    assert b"\x1b$B" in sent
    raw_records = (root / "DICOMDIR").read_bytes()
    assert sent in raw_records
    # dicom3tools lists the records with exactly those bytes.
    r = subprocess.run(["dcdirdmp", str(root / "DICOMDIR")], capture_output=True, check=True)
    listing = r.stderr + r.stdout
    assert sent in listing
    assert "Müller^Hans".encode("latin-1") in listing
    assert "Ωμέγα^Δοκιμή".encode() in listing

    index = (root / "INDEX.HTM").read_text("utf-8")
    ET.fromstring(index.split("\n", 1)[1].split("\n", 1)[1])  # well-formed XHTML
    assert "Yamada, Tarou (山田 太郎 / やまだ たろう)" in index
    assert "Müller, Hans" in index and "Ωμέγα, Δοκιμή" in index
    readme = (root / "README.TXT").read_bytes()
    readme.decode("ascii")
    assert b"\r\n" in readme
    assert b"Yamada, Tarou" in readme and b"Muller, Hans" in readme


def test_pdi_extras_and_no_non_dicom_file_in_the_dicomdir(job, tmp_path):
    _, instances = job
    result = build(instances, tmp_path / "fs", label=K.label(2, 3))
    root = tmp_path / "fs"
    referenced = set(K.referenced_files(root))
    on_disk = set(K.tree_checksums(root))
    extras = {"DICOMDIR", "README.TXT", "INDEX.HTM"} | {
        p for p in on_disk if p.startswith("IHE_PDI/")}
    assert referenced == on_disk - extras          # every DICOM file, nothing else
    for rel in referenced:
        assert (root / rel).read_bytes()[128:132] == b"DICM"
    pages = sorted(p for p in on_disk if p.startswith("IHE_PDI/"))
    assert len(pages) == result.studies
    index = (root / "INDEX.HTM").read_text("utf-8")
    for page in pages:
        assert f'href="{page}"' in index
        ET.fromstring((root / page).read_text("utf-8").split("\n", 2)[2])
    readme = (root / "README.TXT").read_text("ascii")
    assert "Disc 2 of 3" in readme and "Disc 2 of 3" in index
    assert "Test Hospital" in readme and "STD-GEN-CD" in readme and "DICOMDIR" in readme
    assert "20260101-0001" in readme and "box-7" in readme


def test_missing_type1_record_values_are_filled_in_the_dicomdir_only(tmp_path):
    study = "1.2.826.0.1.3680043.8.498.1"
    paths = datagen.ct_series(tmp_path / "src", 2, study=study)
    for p in paths:
        ds = dcmread(p)
        ds.StudyID = ""
        del ds.SeriesNumber
        del ds.InstanceNumber
        ds.StudyDate = ""
        ds.save_as(p)
    instances = [K.source(p) for p in paths]
    build(instances, tmp_path / "fs")
    K.check_dicomdir(tmp_path / "fs")
    # The instances are untouched.
    spool = {s.sha256 for s in instances}
    assert {sha for rel, sha in K.tree_checksums(tmp_path / "fs").items()
            if rel.startswith("PT")} == spool


def test_a_changed_spool_file_fails_the_build_and_leaves_nothing(job, tmp_path):
    files, _ = job
    src = tmp_path / "x.dcm"
    shutil.copy(files["jp"][0], src)
    inst = K.source(src)
    with open(src, "r+b") as f:
        f.seek(-2, 2)
        f.write(b"\x55\xaa")
    with pytest.raises(MediaError) as err:
        build([inst], tmp_path / "fs")
    assert err.value.kind == "source-changed" and "x.dcm" in str(err.value)
    src.unlink()
    with pytest.raises(MediaError) as err:
        build([inst], tmp_path / "fs")
    assert err.value.kind == "source-changed" and "missing" in str(err.value)
    assert not (tmp_path / "fs").exists() and not (tmp_path / "fs.partial").exists()


def test_a_file_that_is_not_dicom_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"not dicom at all" * 10)
    inst = SourceInstance(bad, "1.2.3", "1.2.840.10008.5.1.4.1.1.2", "1.2", "1.2.1", "P",
                          EXPLICIT_LE, bad.stat().st_size, K.sha256(bad))
    with pytest.raises(MediaError) as err:
        build([inst], tmp_path / "fs")
    assert err.value.kind == "build-failed" and "bad.dcm" in str(err.value)
    assert not (tmp_path / "fs.partial").exists()


def test_out_dir_rules_and_duplicates(job, tmp_path):
    _, instances = job
    out = tmp_path / "fs"
    out.mkdir()
    (out / "keep.txt").write_text("someone's file")
    with pytest.raises(MediaError) as err:
        build(instances, out)
    assert err.value.kind == "build-failed" and "not empty" in str(err.value)
    assert (out / "keep.txt").exists()
    result = build(instances + instances[:3], out, replace=True)
    assert result.instances == len(instances)
    assert not (out / "keep.txt").exists()
    with pytest.raises(MediaError) as err:
        build([], tmp_path / "empty")
    assert err.value.kind == "build-failed"
    with pytest.raises(ValueError):
        build(instances, tmp_path / "p", profile="STD-NOPE")


def test_the_manifest_streams_out_and_each_instance_is_asked_for_again(job, tmp_path):
    """The media service's way: instances read once (any iterable, duplicates
    included), each file's line handed out as it is written, each instance
    asked for again before its file is copied (a resent one may have moved)."""
    files, instances = job
    expected = build(instances, tmp_path / "list").files
    moved = tmp_path / "moved"
    moved.mkdir()
    first = instances[0]
    shutil.copy(first.path, moved / first.path.name)
    keyed = [dataclasses.replace(s, key=n) for n, s in enumerate(instances)]
    asked, lines = [], []

    def current(src):
        asked.append(src.key)
        if src.key == 0:            # its spool file went to the job's keep folder
            first.path.rename(first.path.with_suffix(".gone"))
            return dataclasses.replace(src, path=moved / first.path.name)
        return src

    try:
        result = build(iter(keyed + keyed[:2]), tmp_path / "fs",
                       manifest=lambda *line: lines.append(line), current=current)
    finally:
        first.path.with_suffix(".gone").rename(first.path)
    assert result.files is None and result.instances == len(instances)
    assert sorted(asked) == list(range(len(instances)))
    # The same lines as a built list (the DICOMDIR's own UID aside), each once.
    assert len(lines) == len(expected)
    assert sorted(rel for rel, _, _ in lines) == [rel for rel, _, _ in expected]
    assert {rel: sha for rel, sha, _ in lines} == K.tree_checksums(tmp_path / "fs")
    assert result.total_bytes == sum(size for _, _, size in lines)
    with pytest.raises(MediaError) as err:
        build(iter([]), tmp_path / "empty")
    assert err.value.kind == "build-failed" and "no instances" in str(err.value)


def test_cancel_stops_the_build_and_leaves_nothing(job, tmp_path):
    _, instances = job
    cancel = threading.Event()

    def progress(done, total):
        cancel.set()

    with pytest.raises(MediaError) as err:
        build(instances, tmp_path / "fs", progress=progress, cancel=cancel)
    assert err.value.kind == "cancelled"
    assert not (tmp_path / "fs").exists() and not (tmp_path / "fs.partial").exists()


def test_large_instances_are_streamed(tmp_path):
    # 24 MB of pixel data in one instance: the build never holds it.
    path = datagen.ct_series(tmp_path / "src", 1, rows=3464, cols=3464)[0]
    inst = K.source(path)
    tracemalloc.start()
    try:
        build([inst], tmp_path / "fs")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert inst.size > 20_000_000
    assert peak < 8_000_000, peak


def test_ids_and_sizes():
    assert fileset_id_from("20260101-0001") == "20260101_0001"
    assert fileset_id_from("a very long job identifier") == "A_VERY_LONG_JOB_"
    assert fileset_id_from("---") == "___"
    assert fileset_id_from("") == "DICOMBOX"


def test_size_on_medium_counts_decoded_pixels(job):
    files, instances = job
    de = [i for i in instances if i.transfer_syntax_uid == JPEG_LOSSLESS]
    for inst in de:
        assert size_on_medium(inst, "STD-GEN-USB-JPEG") == inst.size
        assert size_on_medium(inst, "STD-GEN-CD") >= 64 * 64 * 2
    plain = next(i for i in instances if i.transfer_syntax_uid == EXPLICIT_LE)
    assert size_on_medium(plain, "STD-GEN-CD") == plain.size
