"""kill -9 the media service while a job collects and while it writes: nothing is lost,
the job resumes from its last completed step, and the disc it finally burns is complete."""

import sqlite3
from pathlib import Path

import pytest
from mediabox import (
    check_disc,
    cli,
    job_detail,
    jobs,
    kill_hard,
    log_of,
    media_config,
    send,
    wait_for,
    wait_job,
)
from pydicom import dcmread

from datagen import ct_series
from helpers import require


@pytest.fixture(scope="module")
def big_study(tmp_path_factory):
    """Forty 512x512 CT images (20 MB): written at 4 MB/s (xorriso's speed limit on a
    pseudo-drive), the write takes seconds."""
    require("storescu", "xorriso")
    return ct_series(tmp_path_factory.mktemp("big") / "ct", 40, rows=512, cols=512,
                     patient=("Kill^Test", "K1"))


def spool_count(state: Path) -> int:
    conn = sqlite3.connect(state / "media" / "index.db")
    n = conn.execute("SELECT COUNT(*) FROM instances").fetchone()[0]
    conn.close()
    return n


def test_kill_while_collecting(box, tmp_path, big_study):
    config = media_config(tmp_path, grouping="study", idle_seconds=3600)
    state = tmp_path / "state"
    media = box("media", config=config)
    send(config, *big_study[:5])
    [job] = wait_job(state, "collecting", box=media)
    assert job["instances"] == 5
    kill_hard(media)
    media = box("media", config=config)
    # The rest of the study joins the same job after the restart.
    send(config, *big_study[5:])
    [job2] = wait_job(state, "collecting", box=media)
    assert job2["id"] == job["id"] and job2["instances"] == 40
    assert spool_count(state) == 40
    cli(config, "media", "burn", job["id"])
    [done] = wait_job(state, "done", box=media)
    assert done["id"] == job["id"]
    check_disc(tmp_path / "disc.iso", state, job["id"], tmp_path / "read")


@pytest.mark.parametrize("rewritable", [True, False], ids=["same-disc", "fresh-disc"])
def test_kill_while_writing(box, tmp_path, big_study, rewritable):
    """With ``overwrite`` the interrupted write is redone on the same (rewritable) disc;
    without, the job asks for a blank disc and resumes on it, without rebuilding."""
    disc = tmp_path / "disc.iso"
    config = media_config(tmp_path, optical={"speed": "4000k", "overwrite": rewritable})
    state = tmp_path / "state"
    media = box("media", config=config)
    send(config, *big_study)

    def writing():
        found = [j for j in jobs(state) if j["state"] == "writing"
                 and job_detail(j).get("step") == "writing"
                 and 0 < job_detail(j).get("done_bytes", 0) < job_detail(j)["total_bytes"]]
        return found[0] if found else None

    job = wait_for(writing, 60, what="the job writing its disc", box=media)
    kill_hard(media, str(disc))
    built = _volume(state, job["id"])
    assert built["state"] == "built"
    assert disc.exists() and disc.stat().st_size > 0  # a partly written disc

    # The box comes back with its drive at full speed.
    config = media_config(tmp_path, optical={"overwrite": rewritable})
    media = box("media", config=config)
    if not rewritable:
        [waiting] = wait_job(state, "ready", box=media)
        assert "insert a blank disc" in waiting["error"], waiting
        disc.unlink()  # the spoilt disc out, a blank one in
    [done] = wait_job(state, "done", box=media)
    assert done["id"] == job["id"] and done["attempts"] == 0
    history = log_of(state, job["id"])
    assert "writing: resuming from writing after a restart" in history
    assert sum("volume 1 built" in h for h in history) == 1, history
    assert _volume(state, job["id"])["built_at"] == built["built_at"]  # not rebuilt
    check_disc(disc, state, job["id"], tmp_path / "read")
    uids = {dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in big_study}
    conn = sqlite3.connect(state / "media" / "index.db")
    on_job = {r[0] for r in conn.execute(
        "SELECT sop_instance_uid FROM media_job_instances WHERE job_id = ?", (job["id"],))}
    conn.close()
    assert on_job == uids


def _volume(state: Path, job_id: str) -> dict:
    conn = sqlite3.connect(state / "media" / "index.db")
    conn.row_factory = sqlite3.Row
    row = dict(conn.execute("SELECT * FROM media_volumes WHERE job_id = ? AND volume = 1",
                            (job_id,)).fetchone())
    conn.close()
    return row
