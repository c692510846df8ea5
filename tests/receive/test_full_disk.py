"""A disk that fills up while an instance arrives: the sender gets an
out-of-resources status for that instance, nothing half-written stays behind,
what was acknowledged before is intact, and the router goes on serving."""

import hashlib
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from datagen import ct_series, tiny_instances
from helpers import BoxProcess, dcmtk, dcmtk_env, tmp_leftovers, write_config


def test_disk_full_mid_instance_gets_a_clear_status(tmp_path):
    for tool in ("storescu", "echoscu", "unshare"):
        if shutil.which(tool) is None:
            pytest.fail(f"missing test peer: {tool} (run scripts/install-peers.sh)")
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root")
    small = tiny_instances(tmp_path / "tiny", 3)
    big = ct_series(tmp_path / "ct", 6, rows=512, cols=512)  # 512 KiB each
    cfg = write_config(tmp_path / "box")
    state = tmp_path / "box" / "state"
    state.mkdir(parents=True)
    # The state directory is a 2 MiB file system of the router's own mount namespace.
    prefix = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
              'mount -t tmpfs -o size=2m tmpfs "$0" && exec "$@"', str(state)]
    router = BoxProcess("router", cfg, prefix=prefix).start()
    port = int(cfg.read_text().split("[router]")[1].split("port = ")[1].split()[0])
    try:
        ok = subprocess.run(["storescu", "-aet", "MODALITY", "-aec", "DICOMBOX",
                             "127.0.0.1", str(port), *map(str, small)],
                            capture_output=True, text=True, env=dcmtk_env(), timeout=60)
        assert ok.returncode == 0, ok.stderr
        full = subprocess.run(["storescu", "-v", "-aet", "MODALITY", "-aec", "DICOMBOX",
                               "127.0.0.1", str(port), *map(str, big)],
                              capture_output=True, text=True, env=dcmtk_env(), timeout=60)
        out = full.stdout + full.stderr
        assert "Refused: OutOfResources" in out, out
        log = router.log.read_text()
        assert "No space left on device" in log, log
        assert "Traceback" not in log
        # Still serving: an echo succeeds, and the first instances are intact.
        echo = dcmtk("echoscu", "-aet", "MODALITY", "-aec", "DICOMBOX", "127.0.0.1", str(port))
        assert echo.returncode == 0, echo.stderr
        root = f"/proc/{router.pid}/root{state}/router"
        # (SQLite resolves /proc/PID/root to "/": read a copy of the index.)
        for suffix in ("", "-wal"):
            if os.path.exists(f"{root}/index.db{suffix}"):
                shutil.copyfile(f"{root}/index.db{suffix}", tmp_path / f"index.db{suffix}")
        conn = sqlite3.connect(tmp_path / "index.db")
        rows = conn.execute("SELECT path, sha256, size FROM instances").fetchall()
        conn.close()
        for path, sha, size in rows:
            data = Path(f"{root}/spool/{path}").read_bytes()
            assert (hashlib.sha256(data).hexdigest(), len(data)) == (sha, size)
        assert len(rows) >= len(small)
        assert len(rows) < len(small) + len(big)
        # Nothing half-written is left behind.
        assert not tmp_leftovers(Path(f"{root}/tmp"))
    finally:
        assert router.stop() == 0
