"""Media detection in the running service, under umockdev: a blank disc starts the waiting
job; pulling the USB stick mid-copy fails the job cleanly and plugging it in again retries.

The test bed runs in its own process (``umockdev-wrapper`` with python3-gi); the media
service gets its ``UMOCKDEV_DIR`` and the preload library in its environment, so pyudev in
the service sees the test bed's devices and events.
"""

import os
import sqlite3
import subprocess

import pytest
from mediabox import (
    UMockdevBed,
    check_disc,
    check_fileset,
    jobs,
    log_of,
    media_config,
    send,
    wait_for,
    wait_job,
)

from datagen import ct_series
from helpers import BoxProcess, require


@pytest.fixture
def bed():
    require("umockdev-wrapper", "xorriso", "storescu")
    b = UMockdevBed()
    yield b
    b.close()


@pytest.fixture
def start_media():
    started: list[BoxProcess] = []

    def start(config, env):
        proc = BoxProcess("media", config, env=env)
        started.append(proc)
        return proc.start()

    yield start
    for proc in started:
        proc.stop(timeout=30)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return ct_series(tmp_path_factory.mktemp("udev") / "ct", 6, rows=128, cols=128,
                     patient=("Udev^Test", "U1"))


def one_job(state):
    found = jobs(state)
    return found[0] if len(found) == 1 else None


def test_blank_disc_starts_the_waiting_job(bed, start_media, tmp_path, study):
    sr0 = bed.add_cdrom("sr0")
    config = media_config(tmp_path, udev=True, optical={"udev_node": "/dev/sr0"})
    state = tmp_path / "state"
    media = start_media(config, bed.env())
    send(config, *study)
    # No disc: the job waits and says why.
    wait_for(lambda: (j := one_job(state)) and j["state"] == "ready"
             and j["note"] == "insert a blank disc into /dev/sr0", 30,
             what=lambda: jobs(state), box=media)
    # A closed disc is refused before anything is written.
    bed.insert_disc(sr0, "complete")
    job = wait_for(lambda: (j := one_job(state)) and j["error"] and j, 30,
                   what=lambda: jobs(state), box=media)
    assert job["state"] == "ready"
    assert job["error"].startswith("the disc in /dev/sr0 is closed (CD-R (complete))")
    # A blank disc goes in: udev's change event starts the job.
    bed.insert_disc(sr0, "blank")
    [done] = wait_job(state, "done", box=media)
    check_disc(tmp_path / "disc.iso", state, done["id"], tmp_path / "read")
    # udev repeats itself: nothing happens twice.
    bed.change(sr0)
    bed.insert_disc(sr0, "blank")
    send(config, *study[:1])  # and a job after them sees the disc as it is: written
    wait_for(lambda: len(jobs(state)) == 2 and jobs(state)[1]["state"] == "ready"
             and jobs(state)[1]["error"], 30, what=lambda: jobs(state), box=media)
    assert jobs(state)[0]["state"] == "done"
    assert "not blank" in jobs(state)[1]["error"]
    history = log_of(state, done["id"])
    assert sum(h.startswith("building: started on") for h in history) == 1, history


MCOPY_GATE = """#!/bin/sh
# Holds every copy to the stick until the test removes the gate file.
touch "$MCOPY_STARTED"
while [ -e "$MCOPY_GATE" ]; do sleep 0.05; done
exec /usr/bin/mcopy "$@"
"""


def test_stick_pulled_mid_copy_fails_cleanly_and_a_reinsert_retries(
        bed, start_media, tmp_path, study):
    require("mkfs.vfat", "mcopy")
    image = tmp_path / "stick.img"
    with open(image, "wb") as f:
        f.truncate(64 * 1024 * 1024)
    subprocess.run(["mkfs.vfat", "-F", "32", "-n", "PDI", str(image)], check=True,
                   capture_output=True)
    # A gate in front of the real mcopy makes "mid-copy" a fact, not a race.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "mcopy").write_text(MCOPY_GATE)
    (bin_dir / "mcopy").chmod(0o755)
    gate, started = tmp_path / "gate", tmp_path / "copy-started"
    gate.touch()
    env = {**bed.env(), "PATH": f"{bin_dir}:{os.environ['PATH']}",
           "MCOPY_GATE": str(gate), "MCOPY_STARTED": str(started)}
    config = media_config(tmp_path, udev=True, writer="usb", usb={"image": str(image)})
    state = tmp_path / "state"
    media = start_media(config, env)
    send(config, *study)
    wait_for(lambda: (j := one_job(state)) and j["note"] == "insert a USB stick", 30,
             what=lambda: jobs(state), box=media)
    stick = bed.add_usb_stick("sdb1")
    wait_for(started.exists, 30, what="the copy to the stick", box=media)
    assert one_job(state)["state"] == "writing"
    bed.remove(stick)
    [failed] = wait_job(state, "failed", box=media)
    assert failed["error"].startswith("the medium was removed while the job was running")
    assert failed["auto_retry"] == 1 and failed["attempts"] == 1
    conn = sqlite3.connect(state / "media" / "index.db")
    assert conn.execute("SELECT COUNT(*) FROM instances").fetchone()[0] == len(study)
    conn.close()
    for row in jobs(state):
        assert row["state"] == "failed"
    # The stick comes back: the job starts again by itself and completes.
    gate.unlink()
    bed.add_usb_stick("sdc1")  # plugged in again, it gets the next node name
    [done] = wait_job(state, "done", box=media, fail_fast=False)
    assert done["id"] == failed["id"]
    history = log_of(state, done["id"])
    assert "ready: retrying on a fresh medium" in history, history
    out = tmp_path / "stick"
    out.mkdir()
    subprocess.run(["/usr/bin/mcopy", "-s", "-n", "-i", str(image), "::/*", str(out)],
                   check=True, capture_output=True,
                   env=dict(os.environ, MTOOLS_SKIP_CHECK="1"))
    check_fileset(out, state, done["id"])
