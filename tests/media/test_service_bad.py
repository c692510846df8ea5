"""Bad inputs to the media service: no drive, a failing drive, cancel, wrong commands,
wrong configuration.  Each gets a clear job state and message; nothing is lost."""

import sqlite3
import subprocess

import pytest
from mediabox import (
    cli,
    job_detail,
    jobs,
    log_of,
    media_config,
    send,
    wait_for,
    wait_job,
)

from datagen import ct_series
from helpers import DICOMBOX, require, write_config


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    require("storescu", "xorriso")
    return ct_series(tmp_path_factory.mktemp("bad") / "ct", 4, rows=128, cols=128,
                     patient=("Bad^Input", "B1"))


@pytest.fixture(scope="module")
def large_study(tmp_path_factory):
    """20 MB: written at 4 MB/s, the write lasts long enough to be cancelled."""
    return ct_series(tmp_path_factory.mktemp("large") / "ct", 40, rows=512, cols=512,
                     patient=("Cancel^Me", "C1"))


def spool(state):
    conn = sqlite3.connect(state / "media" / "index.db")
    rows = conn.execute("SELECT path FROM instances").fetchall()
    conn.close()
    return [state / "media" / "spool" / r[0] for r in rows]


def test_no_drive(box, tmp_path, study):
    config = media_config(tmp_path, optical={"device": f"stdio:{tmp_path}/no/such/dir/d.iso"})
    media = box("media", config=config)
    state = tmp_path / "state"
    send(config, *study)
    job = wait_for(lambda: (j := jobs(state)) and j[0]["error"] and j[0], 30,
                   what=lambda: jobs(state), box=media)
    assert job["state"] == "ready"
    assert job["error"].startswith(f"cannot use the drive stdio:{tmp_path}/no/such/dir/d.iso")
    out = cli(config, "media", "list").stdout
    assert "cannot use the drive" in out
    assert len(spool(state)) == len(study)


def test_a_failing_write_is_a_clear_job_error_and_loses_nothing(box, tmp_path, study):
    """``stdio:/dev/full`` fails mid-write with ENOSPC."""
    config = media_config(tmp_path, optical={"device": "stdio:/dev/full"})
    media = box("media", config=config)
    state = tmp_path / "state"
    send(config, *study)
    [job] = wait_job(state, "failed", box=media)
    assert job["error"].startswith("writing to stdio:/dev/full failed"), job["error"]
    assert job["error"].endswith("(attempt 1 of 3; insert a fresh medium to retry)")
    assert job["attempts"] == 1 and job["auto_retry"] == 1
    files = spool(state)
    assert len(files) == len(study) and all(f.exists() for f in files)
    # The same medium is not retried by itself; the operator may.
    out = cli(config, "media", "retry", job["id"]).stdout
    assert f"job {job['id']} is ready again" in out
    wait_for(lambda: (j := jobs(state)[0])["state"] == "failed" and j["attempts"] == 1
             and len(log_of(state, j["id"])) > 8, 60, what=lambda: jobs(state), box=media)
    assert "retry requested" in " ".join(log_of(state, job["id"]))
    # Deleting the job removes the instances only it held.
    out = cli(config, "media", "delete", job["id"]).stdout
    assert f"job {job['id']} deleted" in out
    assert jobs(state) == [] and not any(f.exists() for f in files)


def test_cancel_while_writing_then_retry(box, tmp_path, large_study):
    config = media_config(tmp_path, optical={"speed": "4000k"})
    media = box("media", config=config)
    state = tmp_path / "state"
    send(config, *large_study)
    job = wait_for(lambda: (j := jobs(state)) and j[0]["state"] == "writing"
                   and job_detail(j[0]).get("done_bytes", 0) > 0 and j[0], 60,
                   what=lambda: jobs(state), box=media)
    r = cli(config, "media", "show", job["id"])
    assert "writing volume 1/1:" in r.stdout and "MB/s" in r.stdout and "ETA" in r.stdout
    out = cli(config, "media", "cancel").stdout
    assert f"job {job['id']} is being cancelled (was writing)" in out
    [cancelled] = wait_job(state, "cancelled", box=media)
    assert cancelled["error"] is None
    assert len(spool(state)) == len(large_study)
    # Nothing runs now; cancelling again is refused with a reason.
    r = cli(config, "media", "cancel", check=False)
    assert r.returncode == 1 and r.stdout.strip() == "refused: no job is running"
    # A retry writes it after all (over the half-written pseudo-disc: a new blank one).
    (tmp_path / "disc.iso").unlink()
    cli(config, "media", "retry", job["id"])
    wait_job(state, "done", box=media)


def test_cancel_a_collecting_job_and_commands_that_make_no_sense(box, tmp_path, study):
    config = media_config(tmp_path, grouping="study", idle_seconds=3600)
    media = box("media", config=config)
    state = tmp_path / "state"
    send(config, *study)
    [job] = wait_job(state, "collecting", box=media)
    r = cli(config, "media", "show", "no-such-job", check=False)
    assert r.returncode == 1 and r.stderr.strip() == "dicombox: no media job no-such-job"
    r = cli(config, "media", "delete", "no-such-job", check=False)
    assert r.returncode == 1 and "no media job no-such-job" in r.stderr
    r = cli(config, "media", "retry", job["id"], check=False)
    assert r.returncode == 1
    assert r.stdout.strip() == f"refused: job {job['id']} is collecting: cannot retry it"
    out = cli(config, "media", "cancel", job["id"]).stdout
    assert f"job {job['id']} cancelled (was collecting)" in out
    assert jobs(state)[0]["state"] == "cancelled"
    r = cli(config, "media", "burn", check=False)
    assert r.stdout.strip() == "refused: no job is waiting"
    # Bad command rows from another process are refused, not fatal.
    conn = sqlite3.connect(state / "media" / "index.db")
    conn.execute("INSERT INTO media_commands (command, job_id, created_at) VALUES "
                 "('format', NULL, 0), ('retry', NULL, 0)")
    conn.commit()
    results = wait_for(lambda: len(r := [row[0] for row in conn.execute(
        "SELECT result FROM media_commands WHERE job_id IS NULL AND command IN "
        "('format', 'retry') AND handled_at IS NOT NULL")]) == 2 and r, 10, box=media)
    conn.close()
    assert sorted(results) == ["refused: retry needs a job id",
                               "refused: unknown command 'format'"]
    assert media.proc.poll() is None


@pytest.mark.parametrize("media_section, key, problem", [
    ({"writer": "usb"}, "media.usb.mount_point", "required when media.writer is 'usb'"),
    ({"writer": "usb", "usb": {"mount_point": "/m", "image": "/i"}}, "media.usb.image",
     "set either mount_point or image, not both"),
    ({"grouping": "modality"}, "media.grouping", "must be one of"),
    ({"idle_seconds": 0}, "media.idle_seconds", "must be at least"),
    ({"optical": {"device": "stdio:"}}, "media.optical.device", "stdio: needs a path"),
    ({"optical": {"speed": "fast"}}, "media.optical.speed", "is not a burn speed"),
    ({"profile": "STD-GEN-FLOPPY"}, "media.profile", "must be one of"),
])
def test_bad_media_configuration(tmp_path, media_section, key, problem):
    config = write_config(tmp_path, media=media_section)
    r = subprocess.run([*DICOMBOX, "--config", str(config), "serve", "media"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    line = r.stderr.strip()
    assert "\n" not in line and f"{key}: " in line and problem in line, line


def test_profiles_known_to_the_configuration_are_the_pipeline_s():
    from dicombox.config.media import PROFILES
    from dicombox.media.profiles import PROFILES as PIPELINE
    assert set(PROFILES) == {"auto", *PIPELINE}
