"""The media service end to end: DCMTK sends to the burner AE, the job burns a disc.

The disc is an xorriso ``stdio:`` pseudo-drive; it is read back with
``xorriso -osirrox`` and checked with dicom3tools (dciodvfy, dcdirdmp,
dcentvfy), ``isoinfo -l`` and against the spool's checksums.
"""

import json
import os
import sqlite3
import subprocess

import pytest
from mediabox import (
    check_disc,
    check_fileset,
    cli,
    jobs,
    log_of,
    media_config,
    media_port,
    send,
    spool_rows,
    wait_for,
    wait_job,
)
from pydicom import dcmread

from datagen import compress, ct_series, sr_document
from helpers import dcmtk, dcmtk_env, require

JP_NAME = "Yamada^Tarou=山田^太郎=やまだ^たろう"
#: The Specific Character Set a Japanese modality sends (ISO 2022 with JIS X 0208).
JAPANESE = ["", "ISO 2022 IR 87"]


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


def test_usb_fat_image_receives_a_verified_copy(box, tmp_path, studies):
    require("mkfs.vfat", "mcopy", "fsck.vfat")
    image = tmp_path / "stick.img"
    with open(image, "wb") as f:
        f.truncate(64 * 1024 * 1024)
    subprocess.run(["mkfs.vfat", "-F", "32", "-n", "PDI", str(image)], check=True,
                   capture_output=True)
    config = media_config(tmp_path, writer="usb", usb={"image": str(image)})
    media = box("media", config=config)
    state = tmp_path / "state"
    send(config, *studies["japanese"], *studies["compressed"])
    [job] = wait_job(state, "done", box=media)
    assert job["profile"] == "STD-GEN-USB-JPEG"
    r = subprocess.run(["fsck.vfat", "-n", str(image)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    out = tmp_path / "stick"
    out.mkdir()
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
    subprocess.run(["mcopy", "-s", "-n", "-i", str(image), "::/*", str(out)], check=True,
                   capture_output=True, env=env)
    check_fileset(out, state, job["id"])


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
    out = cli(config, "media", "burn", "--follow").stdout
    assert f"job {first} will start" in out
    assert out.rstrip().endswith(f"{first} done: 100%"), out  # followed to the end
    wait_job(state, "done")
    assert {j["id"]: j["state"] for j in jobs(state)}[found[1]["id"]] == "collecting"


def test_concurrent_associations_make_one_job_each(box, tmp_path):
    """Grouping by association holds while several modalities send at once (the store
    commits their rows together)."""
    config = media_config(tmp_path, auto_burn=False, idle_seconds=3600)
    media = box("media", config=config)
    state = tmp_path / "state"
    series = [ct_series(tmp_path / f"s{i}", 40, rows=32, cols=32,
                        patient=(f"Parallel^{i}", f"PAR{i}")) for i in range(4)]
    procs = [subprocess.Popen(["storescu", "-aet", f"MOD{i}", "-aec", "DICOMBOX_CD",
                               "127.0.0.1", str(media_port(config)), *map(str, files)],
                              env=dcmtk_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for i, files in enumerate(series)]
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out
    found = wait_job(state, "ready", count=4, box=media)
    by_job = {j["id"]: {r["patient_id"] for r in spool_rows(state, j["id"])} for j in found}
    assert sorted(map(sorted, by_job.values())) == [[f"PAR{i}"] for i in range(4)]
    assert all(j["instances"] == 40 for j in found)
