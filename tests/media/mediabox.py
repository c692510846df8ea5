"""Helpers for the media service's tests: a umockdev test bed, job polling, disc checks."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.fileset import FileSet

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from helpers import DICOMBOX, dcmtk, require, write_config  # noqa: E402

#: ISO 9660 level 1 names as isoinfo lists them: FILENAME.EXT;1 (8.3) and DIRNAME.
ISO_NAME = re.compile(r"^(?:[A-Z0-9_]{1,8}\.[A-Z0-9_]{0,3};1|[A-Z0-9_]{1,8}|\.|\.\.)$")

HERE = Path(__file__).resolve().parent
SYSTEM_PYTHON = "/usr/bin/python3"
GI_PATH = "/usr/lib/python3/dist-packages"


class UMockdevBed:
    """A umockdev test bed in its own process (``umockdev-wrapper`` + python3-gi).

    Processes that should see it get :meth:`env` in their environment.
    """

    def __init__(self):
        env = dict(os.environ, PYTHONPATH=GI_PATH)
        env.pop("UMOCKDEV_DIR", None)
        self.proc = subprocess.Popen(
            ["umockdev-wrapper", SYSTEM_PYTHON, str(HERE / "umockdev_driver.py")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.root = self._read()["root"]

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the umockdev driver exited")
        return json.loads(line)

    def _call(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        reply = self._read()
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return reply

    def env(self) -> dict:
        return {"UMOCKDEV_DIR": self.root, "LD_PRELOAD": "libumockdev-preload.so.0"}

    # -- devices -----------------------------------------------------------------------

    def add(self, subsystem: str, name: str, attrs: dict, props: dict, parent=None) -> str:
        flat_attrs = [x for kv in attrs.items() for x in kv]
        flat_props = [x for kv in props.items() for x in kv]
        return self._call(op="add", subsystem=subsystem, name=name, parent=parent,
                          attrs=flat_attrs, props=flat_props)["syspath"]

    def add_cdrom(self, name: str = "sr0") -> str:
        return self.add("block", name, {"removable": "1"},
                        {"DEVNAME": f"/dev/{name}", "DEVTYPE": "disk", "ID_CDROM": "1",
                         "ID_CDROM_CD_R": "1", "ID_CDROM_DVD_PLUS_R": "1"})

    def insert_disc(self, syspath: str, state: str = "blank", kind: str = "CD_R") -> None:
        """A disc goes into the drive: udev's change event with the media properties."""
        self._call(op="set", syspath=syspath, props={
            "ID_CDROM_MEDIA": "1", "ID_CDROM_MEDIA_STATE": state,
            f"ID_CDROM_MEDIA_{kind}": "1"})
        self._call(op="uevent", syspath=syspath, action="change")

    def change(self, syspath: str) -> None:
        self._call(op="uevent", syspath=syspath, action="change")

    def add_usb_stick(self, name: str = "sdb1", fs_type: str = "vfat") -> str:
        return self.add("block", name, {"partition": "1"},
                        {"DEVNAME": f"/dev/{name}", "DEVTYPE": "partition", "ID_BUS": "usb",
                         "ID_VENDOR": "Acme", "ID_MODEL": "Stick", "ID_FS_TYPE": fs_type,
                         "ID_FS_USAGE": "filesystem", "ID_FS_LABEL": "PDI"})

    def remove(self, syspath: str) -> None:
        """The device goes away: udev's remove event, then the device itself."""
        self._call(op="uevent", syspath=syspath, action="remove")
        self._call(op="remove", syspath=syspath)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.root, ignore_errors=True)


# -- the media index --------------------------------------------------------------------

def index(state: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(Path(state) / "media" / "index.db", timeout=30)
    conn.row_factory = sqlite3.Row
    return conn


def jobs(state: Path) -> list[dict]:
    path = Path(state) / "media" / "index.db"
    if not path.exists():
        return []
    conn = index(state)
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM media_jobs ORDER BY created_at, id")]
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def wait_for(predicate, timeout: float = 60, interval: float = 0.05, what: str = "condition",
             box=None):
    """Poll ``predicate`` until it returns something truthy; fail with context."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if box is not None and box.proc is not None and box.proc.poll() is not None:
            what = what() if callable(what) else what
            raise AssertionError(f"the service exited while waiting for {what}:\n"
                                 + box.output()[-4000:])
        time.sleep(interval)
    what = what() if callable(what) else what
    raise AssertionError(f"timed out waiting for {what}"
                         + (f":\n{box.output()[-4000:]}" if box is not None else ""))


def wait_job(state: Path, states, timeout: float = 90, box=None, count: int = 1,
             fail_fast: bool = True) -> list[dict]:
    """Wait until ``count`` jobs are in one of ``states``; return them.  A failed job
    ends the wait at once unless ``fail_fast`` is false (a retry is expected)."""
    states = (states,) if isinstance(states, str) else tuple(states)

    def check():
        current = jobs(state)
        if fail_fast and "failed" not in states:
            failed = [j for j in current if j["state"] == "failed"]
            if failed:
                raise AssertionError(f"job failed: {failed}"
                                     + (f"\n{box.output()[-4000:]}" if box else ""))
        found = [j for j in current if j["state"] in states]
        return found if len(found) >= count else None

    return wait_for(check, timeout, what=lambda: f"{count} job(s) in {states}: {jobs(state)}",
                    box=box)


def log_of(state: Path, job_id: str) -> list[str]:
    conn = index(state)
    try:
        return [f"{r['state']}: {r['message']}" for r in conn.execute(
            "SELECT state, message FROM media_log WHERE job_id = ? ORDER BY id", (job_id,))]
    finally:
        conn.close()


# -- discs -------------------------------------------------------------------------------

def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def extract(image: Path, out: Path) -> Path:
    """Read a disc (image or stdio: pseudo-drive file) back with xorriso -osirrox."""
    out.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["xorriso", "-osirrox", "on", "-indev", str(image), "-extract", "/",
                        str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


# -- killing the service as a power cut (or systemd's cgroup kill) would ------------------

def kill_hard(box, *markers: str) -> None:
    """kill -9 the service, then any helper it started (xorriso, mtools) that names one
    of ``markers``: systemd kills the whole unit, a power cut kills everything."""
    import psutil

    try:
        children = psutil.Process(box.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    box.kill()
    leftovers = list(children)
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if markers and any(m in cmd for m in markers) and proc not in leftovers:
            leftovers.append(proc)
    for proc in leftovers:
        try:
            proc.kill()
            proc.wait(10)
        except psutil.NoSuchProcess:
            pass


def job_detail(job: dict) -> dict:
    return json.loads(job["detail"]) if job.get("detail") else {}


# -- the media service under test ---------------------------------------------------------

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
    require("isoinfo")
    listing = subprocess.run(["isoinfo", "-l", "-i", str(disc)], capture_output=True,
                             text=True, check=True).stdout
    names = [line.split()[-1] for line in listing.splitlines()
             if line[:1] in "-d" and line[1:2] in "-r" and "[" in line]
    assert names and all(ISO_NAME.match(n) for n in names), [
        n for n in names if not ISO_NAME.match(n)]
    return check_fileset(extract(disc, out), state, job_id, volume)


def check_fileset(root, state, job_id, volume=1):
    """The file-set read back from a medium: DICOMDIR and instances valid for dicom3tools,
    every file as built, every instance as spooled."""
    require("dciodvfy", "dcdirdmp", "dcentvfy")
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
