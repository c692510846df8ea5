"""A job larger than the disc spans several discs, each a complete file-set.

The drive is an xorriso pseudo-drive on a 6 MB loop device (a 3072-block "disc",
TESTING.md): the media service learns its size from the drive, splits the job at
study boundaries, and asks for the next blank disc after each one.
"""

import os
import shutil
import subprocess

import pytest
from mediabox import check_disc, jobs, log_of, media_config, send, wait_for

from datagen import ct_series
from helpers import require


@pytest.fixture
def small_disc(tmp_path):
    require("losetup", "xorriso")
    backing = tmp_path / "small-disc.img"
    with open(backing, "wb") as f:
        f.truncate(6 * 1024 * 1024)
    r = subprocess.run(["losetup", "--find", "--show", str(backing)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        pytest.fail(f"losetup cannot attach a loop device here: {r.stderr.strip()}")
    device = r.stdout.strip()
    yield device
    subprocess.run(["losetup", "-d", device], capture_output=True)


def insert_blank(device: str) -> None:
    """A blank disc in place of the written one: no volume descriptors any more."""
    fd = os.open(device, os.O_WRONLY)
    try:
        os.write(fd, bytes(64 * 1024))
        os.fsync(fd)
    finally:
        os.close(fd)


def test_a_job_larger_than_the_disc_spans_discs(box, tmp_path, small_disc):
    first = ct_series(tmp_path / "a", 6, rows=512, cols=512, patient=("Span^Test", "S1"))
    second = ct_series(tmp_path / "b", 6, rows=512, cols=512, patient=("Span^Test", "S1"))
    config = media_config(tmp_path, optical={"device": f"stdio:{small_disc}"})
    media = box("media", config=config)
    state = tmp_path / "state"
    send(config, *first, *second)
    volumes = None
    n = 1
    while True:
        job = wait_for(lambda n=n: (j := jobs(state)) and (
            j[0]["state"] == "done" or (j[0]["state"] == "ready" and j[0]["volume"] == n + 1))
            and j[0], 120, what=lambda: jobs(state), box=media)
        volumes = job["volumes"]
        disc = tmp_path / f"disc{n}.iso"
        with open(small_disc, "rb") as src, open(disc, "wb") as dst:
            shutil.copyfileobj(src, dst)
        root, fs = check_disc(disc, state, job["id"], tmp_path / f"read{n}", volume=n)
        readme = (root / "README.TXT").read_text("ascii")
        assert f"Disc {n} of {volumes}" in readme
        studies = {i.StudyInstanceUID for i in fs}
        assert len(studies) == 1, "a study that fits a disc is not split"
        if job["state"] == "done":
            break
        assert job["note"] == f"disc {n + 1} of {volumes}: insert the next medium"
        insert_blank(small_disc)
        n += 1
    assert n == volumes == 2
    history = log_of(state, job["id"])
    assert "ready: volume 1 of 2 done" in history
