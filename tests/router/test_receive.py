"""The router receives from DCMTK and keeps exactly what was sent, durably indexed."""

import hashlib
import sqlite3

import pytest
from pydicom import dcmread

from datagen import compress, cr_image, ct_series, dataset_bytes, sr_document
from helpers import dcmtk, require, tmp_leftovers


@pytest.fixture(scope="module")
def study_files(tmp_path_factory):
    require("storescu", "dcmcjpeg", "dcmcjpls", "dcmcrle")
    d = tmp_path_factory.mktemp("data")
    files = ct_series(d / "ct", 50)
    files.append(cr_image(d / "cr"))
    files.append(sr_document(d / "sr"))
    kinds = ("jpeg-lossless", "jpeg-baseline", "jpeg-ls", "rle", "j2k-lossless")
    sources = ct_series(d / "sources", len(kinds), rows=128, cols=128)
    for kind, src in zip(kinds, sources):
        files.append(compress(src, d / "compressed" / f"{kind}.dcm", kind))
    return files


def _index(state):
    conn = sqlite3.connect(state / "router" / "index.db")
    conn.row_factory = sqlite3.Row
    return {r["sop_instance_uid"]: dict(r) for r in conn.execute("SELECT * FROM instances")}


def _check_spool(state, files):
    rows = _index(state)
    for f in files:
        ds = dcmread(f, stop_before_pixels=True)
        row = rows.get(ds.SOPInstanceUID)
        assert row is not None, f"{f.name} not indexed"
        stored = state / "router" / "spool" / row["path"]
        assert dataset_bytes(stored) == dataset_bytes(f), f"{f.name} differs"
        assert row["transfer_syntax_uid"] == ds.file_meta.TransferSyntaxUID
        assert row["sha256"] == hashlib.sha256(stored.read_bytes()).hexdigest()
        assert row["size"] == stored.stat().st_size
        assert row["calling_aet"] == "MODALITY"
        assert row["patient_id"] == ds.PatientID
        assert row["study_instance_uid"] == ds.StudyInstanceUID
        meta = dcmread(stored, stop_before_pixels=True).file_meta
        assert meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert not tmp_leftovers(state / "router" / "tmp")
    return rows


def test_echo(box):
    require("echoscu")
    router = box("router")
    port = router_port(router)
    r = dcmtk("echoscu", "-aet", "MODALITY", "-aec", "DICOMBOX", "127.0.0.1", port)
    assert r.returncode == 0, r.stderr


#: storescu's option proposing each transfer syntax (uncompressed is its default)
PROPOSE = {
    "1.2.840.10008.1.2.4.70": "-xs", "1.2.840.10008.1.2.4.50": "-xy",
    "1.2.840.10008.1.2.4.80": "-xt", "1.2.840.10008.1.2.5": "-xr",
    "1.2.840.10008.1.2.4.90": "-xv",
}


def router_port(router) -> str:
    return router.config.read_text().split("[router]")[1].split("port = ")[1].split()[0]


def send_like_a_modality(port, files, combine=False, aet="MODALITY"):
    """storescu proposing, for each group of files, the syntax they are stored in
    (with +C: that syntax and the uncompressed ones in one context)."""
    groups: dict[str, list] = {}
    for f in files:
        ts = dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID
        groups.setdefault(PROPOSE.get(ts, ""), []).append(f)
    for flag, group in groups.items():
        # A lossy image offered together with the uncompressed syntaxes gets an
        # uncompressed context (the box never picks lossy when lossless is
        # offered; see test_lossy_offered_with_uncompressed), and storescu
        # cannot decompress: send lossy files with their own context.
        lossy = flag == "-xy"
        extra = ([flag] if flag else []) + (["+C"] if combine and not lossy else [])
        r = dcmtk("storescu", "-R", "-aet", aet, "-aec", "DICOMBOX", *extra, "127.0.0.1",
                  port, *group)
        assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("combine", [False, True], ids=["context-per-syntax", "combined"])
def test_store_study_and_compressed_copies(box, study_files, tmp_path, combine):
    router = box("router")
    send_like_a_modality(router_port(router), study_files, combine)
    rows = _check_spool(tmp_path / "state", study_files)
    assert len(rows) == len(study_files)


def test_lossy_offered_with_uncompressed_gets_uncompressed(box, study_files):
    """Preference order: lossless compressed, then uncompressed, lossy last."""
    router = box("router")
    lossless = [f for f in study_files if f.name == "jpeg-lossless.dcm"]
    r = dcmtk("storescu", "-d", "-R", "-xs", "+C", "-aec", "DICOMBOX", "127.0.0.1",
              router_port(router), *lossless)
    assert r.returncode == 0
    assert "Accepted Transfer Syntax: =JPEGLossless:Non-hierarchical-1stOrderPrediction" in (
        r.stdout + r.stderr)
    lossy = [f for f in study_files if f.name == "jpeg-baseline.dcm"]
    r = dcmtk("storescu", "-d", "-R", "-xy", "+C", "-aec", "DICOMBOX", "127.0.0.1",
              router_port(router), *lossy)
    out = r.stdout + r.stderr
    assert "Accepted Transfer Syntax: =LittleEndianExplicit" in out
    assert "Accepted Transfer Syntax: =JPEGBaseline" not in out
