"""The media service end to end: DCMTK sends to the burner AE, the job burns a disc.

The disc is an xorriso ``stdio:`` pseudo-drive; it is read back with
``xorriso -osirrox`` and checked with dicom3tools (dciodvfy, dcdirdmp,
dcentvfy), ``isoinfo -l`` and against the spool's checksums.
"""

import json
import re
import sqlite3
import subprocess
import tomllib

import numpy as np
import pytest
from mediabox import extract, jobs, log_of, sha256, wait_for, wait_job
from pydicom import dcmread
from pydicom.fileset import FileSet

from datagen import compress, ct_series, sr_document
from helpers import DICOMBOX, dcmtk, require, write_config

JP_NAME = "Yamada^Tarou=山田^太郎=やまだ^たろう"
#: The Specific Character Set a Japanese modality sends (ISO 2022 with JIS X 0208).
JAPANESE = ["", "ISO 2022 IR 87"]
#: ISO 9660 level 1 names as isoinfo lists them: FILENAME.EXT;1 (8.3) and DIRNAME.
ISO_NAME = re.compile(r"^(?:[A-Z0-9_]{1,8}\.[A-Z0-9_]{0,3};1|[A-Z0-9_]{1,8}|\.|\.\.)$")


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    require("storescu", "dcmcjpeg", "xorriso")
    d = tmp_path_factory.mktemp("studies")
    japanese = ct_series(d / "jp", 6, patient=(JP_NAME, "JP1"), charset=JAPANESE)
    sources = ct_series(d / "src", 4, rows=96, cols=96, patient=("Roe^Jane", "P2"))
    compressed = [compress(s, d / "jpeg" / s.name, "jpeg-lossless") for s in sources]
    report = sr_document(d / "sr", patient=("Roe^Jane", "P2"))  # a report, its own study
    return {"japanese": japanese, "compressed": compressed, "sr": [report],
            "sources": sources}


def media_port(config) -> int:
    return tomllib.loads(config.read_text())["media"]["port"]


def media_config(tmp_path, **media):
    base = {"grouping": "association", "idle_seconds": 1, "writer": "optical",
            "udev": False, "probe_seconds": 0.3, "keep_done_hours": 1,
            "optical": {"device": f"stdio:{tmp_path / 'disc.iso'}"}}
    for key, value in media.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return write_config(tmp_path, media=base)


def send(config, *files, aet="MODALITY", extra=("-xs",)):
    """One storescu association; -xs proposes JPEG Lossless next to uncompressed."""
    r = dcmtk("storescu", *extra, "-aet", aet, "-aec", "DICOMBOX_CD", "127.0.0.1",
              media_port(config), *files)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def cli(config, *args, check=True):
    r = subprocess.run([*DICOMBOX, "--config", str(config), *args], capture_output=True,
                       text=True, timeout=120)
    if check:
        assert r.returncode == 0, r.stdout + r.stderr
    return r


def manifest(state, job_id, volume=1):
    conn = sqlite3.connect(state / "media" / "index.db")
    rows = conn.execute("SELECT path, sha256, size FROM media_files WHERE job_id = ? AND "
                        "volume = ?", (job_id, volume)).fetchall()
    conn.close()
    return rows


def spool_rows(state, job_id, volume=None):
    conn = sqlite3.connect(state / "media" / "index.db")
    conn.row_factory = sqlite3.Row
    sql = "SELECT * FROM media_job_instances WHERE job_id = ?"
    params = [job_id]
    if volume is not None:
        sql += " AND volume = ?"
        params.append(volume)
    rows = [dict(r) for r in conn.execute(sql, params)]
    conn.close()
    return rows


def check_disc(disc, state, job_id, out, volume=1):
    """Every check a receiving site would make, on one disc of a job."""
    require("dciodvfy", "dcdirdmp", "dcentvfy", "isoinfo")
    listing = subprocess.run(["isoinfo", "-l", "-i", str(disc)], capture_output=True,
                             text=True, check=True).stdout
    names = [line.split()[-1] for line in listing.splitlines()
             if line[:1] in "-d" and line[1:2] in "-r" and "[" in line]
    assert names and all(ISO_NAME.match(n) for n in names), [
        n for n in names if not ISO_NAME.match(n)]
    root = extract(disc, out)
    dicomdir = root / "DICOMDIR"
    r = subprocess.run(["dciodvfy", str(dicomdir)], capture_output=True, text=True)
    assert r.returncode == 0 and "Error" not in r.stdout + r.stderr, r.stdout + r.stderr
    r = subprocess.run(["dcdirdmp", str(dicomdir)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    # Every file the job built is on the disc, byte for byte, and nothing else.
    files = manifest(state, job_id, volume)
    on_disc = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert on_disc == {f[0] for f in files}
    for rel, digest, size in files:
        assert sha256(root / rel) == digest and (root / rel).stat().st_size == size, rel
    # The DICOMDIR references exactly the job's instances of this volume.
    fs = FileSet(dicomdir)
    by_uid = {i.SOPInstanceUID: i.path for i in fs}
    rows = spool_rows(state, job_id, volume)
    assert set(by_uid) == {r["sop_instance_uid"] for r in rows}
    r = subprocess.run(["dcentvfy", *by_uid.values()], capture_output=True, text=True)
    assert r.returncode == 0 and "Error" not in r.stdout + r.stderr, r.stdout + r.stderr
    # Each instance is the spooled one: the same bytes, or (decompressed for the
    # profile) the same pixels.
    for row in rows:
        spooled = state / "media" / row["path"]
        written = by_uid[row["sop_instance_uid"]]
        meta = dcmread(written, stop_before_pixels=True).file_meta
        if meta.TransferSyntaxUID == row["transfer_syntax_uid"]:
            assert sha256(written) == row["sha256"] == sha256(spooled)
        else:
            assert meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
            a, b = dcmread(written), dcmread(spooled)
            if "PixelData" in b:
                assert np.array_equal(a.pixel_array, b.pixel_array)
    return root, fs


@pytest.mark.parametrize("profile", ["auto", "STD-GEN-CD"])
def test_two_studies_burn_to_a_disc_after_the_idle_time(box, tmp_path, studies, profile):
    config = media_config(tmp_path, profile=profile)
    media = box("media", config=config)
    state = tmp_path / "state"
    send(config, *studies["japanese"], *studies["compressed"], *studies["sr"])
    [job] = wait_job(state, "done", box=media)
    assert job["instances"] == 11 and job["volumes"] == 1
    assert job["progress"] == 1.0 and job["error"] is None
    assert job["profile"] == ("STD-GEN-DVD-JPEG" if profile == "auto" else "STD-GEN-CD")
    history = log_of(state, job["id"])
    assert history[0] == "collecting: collecting (association)"
    assert history[1] == "ready: closed: the association ended"
    assert history[-1] == "done: done: every medium written and verified"
    root, fs = check_disc(tmp_path / "disc.iso", state, job["id"], tmp_path / "read")
    # The Japanese name survives in the DICOMDIR, in its own character set.
    [patient] = [r for r in _patient_records(root) if r.PatientID == "JP1"]
    assert str(patient.PatientName) == JP_NAME
    assert "ISO 2022 IR 87" in patient.get("SpecificCharacterSet", [])
    compressed_uids = {dcmread(f).SOPInstanceUID for f in studies["compressed"]}
    syntaxes = {i.SOPInstanceUID: dcmread(i.path, stop_before_pixels=True)
                .file_meta.TransferSyntaxUID for i in fs if i.SOPInstanceUID in compressed_uids}
    expected = "1.2.840.10008.1.2.4.70" if profile == "auto" else "1.2.840.10008.1.2.1"
    assert set(syntaxes.values()) == {expected}
    # The CLI and the published state tell the same story.
    out = cli(config, "media", "list").stdout
    assert job["id"] in out and "done" in out
    out = cli(config, "media", "show", job["id"]).stdout
    assert "volume 1: verified" in out and "history" in out
    data = json.loads(cli(config, "media", "show", job["id"], "--json").stdout)
    assert data["state"] == "done" and data["instances"] == 11
    wait_for(lambda: _snapshot(state).get("jobs", {}).get("done") == 1, 10)
    snap = _snapshot(state)
    for key in ("pid", "ae_title", "address", "port", "active_associations", "counters",
                "free_bytes", "reserve_bytes", "started_at", "updated_at"):
        assert key in snap, key
    assert snap["ae_title"] == "DICOMBOX_CD" and snap["counters"]["stored"] == 11
    assert snap["medium"]["usable"] is False  # the disc in the drive is written now


def _patient_records(root):
    ds = dcmread(root / "DICOMDIR")
    return [r for r in ds.DirectoryRecordSequence if r.DirectoryRecordType == "PATIENT"]


def _snapshot(state):
    conn = sqlite3.connect(state / "media" / "index.db")
    row = conn.execute("SELECT value FROM service_state WHERE key = 'media'").fetchone()
    conn.close()
    return json.loads(row[0]) if row else {}


def test_echo_and_grouping_by_study(box, tmp_path, studies):
    require("echoscu")
    config = media_config(tmp_path, grouping="study", auto_burn=False, idle_seconds=60)
    box("media", config=config)
    r = dcmtk("echoscu", "-aec", "DICOMBOX_CD", "127.0.0.1", media_port(config))
    assert r.returncode == 0, r.stderr
    send(config, *studies["japanese"][:2], *studies["compressed"][:2])
    state = tmp_path / "state"
    found = wait_job(state, "collecting", count=2)
    assert sorted(j["instances"] for j in found) == [2, 2]
    assert {j["patient_id"] for j in found} == {"JP1", "P2"}
    # The button (a command row) closes and starts the oldest job; auto_burn is off,
    # so the other stays collecting until its idle time.
    first = found[0]["id"]
    out = cli(config, "media", "burn").stdout
    assert f"job {first} will start" in out
    wait_job(state, "done")
    assert {j["id"]: j["state"] for j in jobs(state)}[found[1]["id"]] == "collecting"
