"""kill -9 the router while a modality streams: nothing acknowledged is lost."""

import hashlib
import random
import sqlite3
import subprocess
import time

from pydicom import dcmread

from datagen import dataset_bytes, tiny_instances
from helpers import BoxProcess, dcmtk_env, require, write_config


def _acked(output: str) -> set[str]:
    """Files whose C-STORE got Success, from storescu -v output."""
    acked, current = set(), None
    for line in output.splitlines():
        if line.startswith("I: Sending file: "):
            current = line[len("I: Sending file: "):].strip()
        elif line.startswith("I: Received Store Response (Success)") and current:
            acked.add(current)
            current = None
    return acked


def _send(port, files):
    return subprocess.Popen(["storescu", "-v", "-aet", "MODALITY", "-aec", "DICOMBOX",
                             "127.0.0.1", str(port), *[str(f) for f in files]],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dcmtk_env())


def test_kill_9_while_receiving_loses_nothing_acknowledged(tmp_path):
    require("storescu")
    files = tiny_instances(tmp_path / "data", 800)
    cfg = write_config(tmp_path)
    port = cfg.read_text().split("[router]")[1].split("port = ")[1].split()[0]
    rng = random.Random(1234)
    pending = [str(f) for f in files]
    acked: set[str] = set()
    kills = 0
    while pending and kills < 6:
        router = BoxProcess("router", cfg).start()
        sender = _send(port, pending)
        time.sleep(rng.uniform(0.05, 0.35))
        router.kill()
        kills += 1
        out, _ = sender.communicate(timeout=120)
        got = _acked(out)
        acked |= got
        pending = [f for f in pending if f not in got]
    assert kills >= 5
    # The sender resends whatever did not get Success, with the router up.
    router = BoxProcess("router", cfg).start()
    try:
        sender = _send(port, pending)
        out, _ = sender.communicate(timeout=300)
        acked |= _acked(out)
    finally:
        assert router.stop() == 0
    assert acked == {str(f) for f in files}, "the final pass must deliver everything"

    state = tmp_path / "state" / "router"
    conn = sqlite3.connect(state / "index.db")
    conn.row_factory = sqlite3.Row
    rows = {r["sop_instance_uid"]: r for r in conn.execute("SELECT * FROM instances")}
    for f in files:
        uid = dcmread(f, stop_before_pixels=True).SOPInstanceUID
        row = rows[uid]
        stored = state / "spool" / row["path"]
        assert hashlib.sha256(stored.read_bytes()).hexdigest() == row["sha256"]
        assert dataset_bytes(stored) == dataset_bytes(f)
    # Exactly one file per indexed instance, and no temporary leftovers.
    on_disk = {p.relative_to(state / "spool").as_posix()
               for p in (state / "spool").rglob("*") if p.is_file()}
    assert on_disk == {r["path"] for r in rows.values()}
    assert not list((state / "tmp").iterdir())


def test_sigterm_drains_and_keeps_every_acknowledged_instance(tmp_path):
    require("storescu")
    files = tiny_instances(tmp_path / "data", 300)
    cfg = write_config(tmp_path)
    port = cfg.read_text().split("[router]")[1].split("port = ")[1].split()[0]
    router = BoxProcess("router", cfg).start()
    sender = _send(port, files)
    time.sleep(0.5)
    assert router.stop() == 0
    out, _ = sender.communicate(timeout=120)
    acked = _acked(out)
    state = tmp_path / "state" / "router"
    conn = sqlite3.connect(state / "index.db")
    stored = {r[0] for r in conn.execute("SELECT sop_instance_uid FROM instances")}
    for f in acked:
        assert dcmread(f, stop_before_pixels=True).SOPInstanceUID in stored
    assert (state / "clean-shutdown").exists()
    assert "Traceback" not in router.output()
