"""Conversions run by the transcoder's worker processes: same result, errors carried
back, a killed worker fails only its own conversion and leaves no file behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from fwdkit import multiframe
from pydicom import dcmread

from dicombox import transcode as tc
from dicombox.transcoder import Transcoder

from datagen import compress, ct_series
from helpers import require


@pytest.fixture
def pool():
    t = Transcoder(max_workers=2, idle_seconds=60)
    yield t
    t.close()


@pytest.fixture(scope="module")
def jpeg(tmp_path_factory):
    require("dcmcjpeg")
    d = tmp_path_factory.mktemp("jpeg")
    sources = ct_series(d / "src", 3, rows=100, cols=90)
    return [(compress(s, d / f"{i}.dcm", "jpeg-lossless"), s) for i, s in enumerate(sources)]


def _workers(pool: Transcoder) -> list:
    return [w.proc for w in pool._idle]


def test_worker_converts_like_the_transcoder_and_is_reused(pool, jpeg, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for stored, source in jpeg:
        got = pool.convert(stored, tc.EXPLICIT_LE, out)
        ref = tc.convert(stored, tc.EXPLICIT_LE, tmp_path)
        assert got.path.parent == out and not got.new_uid
        assert got.transfer_syntax_uid == tc.EXPLICIT_LE
        assert got.path.read_bytes() == ref.path.read_bytes()
        ds = dcmread(got.path)
        assert np.array_equal(ds.pixel_array, dcmread(source).pixel_array)
        assert ds.SOPInstanceUID == got.sop_instance_uid == dcmread(source).SOPInstanceUID
    assert pool.started == 1 and pool.workers() == 1


def test_errors_come_back_as_raised_and_leave_no_file(pool, jpeg, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    stored, _ = jpeg[0]
    broken = tmp_path / "broken.dcm"
    data = bytearray(stored.read_bytes())
    data[-200:] = b"\xff" * 200
    broken.write_bytes(bytes(data))
    with pytest.raises(tc.TranscodeError, match="cannot decode|fragment|JPEG|decode"):
        pool.convert(broken, tc.EXPLICIT_LE, out)
    with pytest.raises(tc.TranscodeError, match="Table N.5-9"):
        pool.convert(stored, "1.2.840.10008.1.2.4.50", out)    # to JPEG baseline: never
    with pytest.raises(FileNotFoundError):
        pool.convert(tmp_path / "gone.dcm", tc.EXPLICIT_LE, out)
    assert list(out.iterdir()) == []
    # The worker survived its errors.
    assert pool.started == 1
    assert pool.convert(stored, tc.EXPLICIT_LE, out).path.exists()


def test_a_killed_worker_fails_its_conversion_only(pool, tmp_path):
    big = tmp_path / "big.dcm"
    multiframe(big, 96, 512, 512)
    rle = tc.convert(big, tc.RLE, tmp_path)                     # slow to decode
    out = tmp_path / "out"
    out.mkdir()
    errors: list[BaseException] = []

    def run():
        try:
            pool.convert(rle.path, tc.EXPLICIT_LE, out)
        except BaseException as exc:  # noqa: BLE001 - looked at below
            errors.append(exc)

    # Killed while it writes the converted file.  On a busy machine the
    # conversion may end between seeing its file grow and the kill: such an
    # attempt succeeds (its worker dies idle) and another one is made.
    for _attempt in range(5):
        t = threading.Thread(target=run)
        t.start()
        deadline = time.monotonic() + 30
        while t.is_alive() and not any(p.stat().st_size > 0 for p in out.iterdir()):
            assert time.monotonic() < deadline, "the conversion never started"
            time.sleep(0.005)
        workers = [p for p in _all_children() if "dicombox.transcoder" in _cmdline(p)]
        if t.is_alive() and workers:
            os.kill(workers[0], signal.SIGKILL)
        t.join(30)
        if errors:
            break
        for p in out.iterdir():
            p.unlink()
    else:
        pytest.fail("every conversion ended before its worker could be killed")
    assert len(errors) == 1 and isinstance(errors[0], tc.TranscodeError), errors
    assert "killed by SIGKILL" in str(errors[0])
    assert list(out.iterdir()) == []
    started = pool.started
    # The next conversion gets a new worker.
    got = pool.convert(rle.path, tc.EXPLICIT_LE, out)
    assert got.path.read_bytes() == tc.convert(rle.path, tc.EXPLICIT_LE, tmp_path).path.read_bytes()
    assert pool.started == started + 1


def test_a_conversion_over_its_time_limit_is_stopped(tmp_path):
    big = tmp_path / "big.dcm"
    multiframe(big, 96, 512, 512)
    rle = tc.convert(big, tc.RLE, tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    pool = Transcoder(timeout_base=0.0, timeout_per_mb=0.0001)   # a few microseconds
    try:
        with pytest.raises(tc.TranscodeError, match=r"transcoder was stopped after \d+ s"):
            pool.convert(rle.path, tc.EXPLICIT_LE, out)
        assert list(out.iterdir()) == []
        assert pool.workers() == 0
        pool.timeout_per_mb = 1.0
        assert pool.convert(rle.path, tc.EXPLICIT_LE, out).path.exists()
        assert pool.started == 2
    finally:
        pool.close()


def test_idle_workers_stop_and_a_dead_idle_one_is_replaced(jpeg, tmp_path):
    pool = Transcoder(max_workers=1, idle_seconds=0.3)
    try:
        stored, _ = jpeg[0]
        pool.convert(stored, tc.EXPLICIT_LE, tmp_path)
        [proc] = _workers(pool)
        proc.wait(10)                               # stopped once idle for 0.3 s
        assert pool.workers() == 0
        pool.idle_seconds = 60
        pool.convert(stored, tc.EXPLICIT_LE, tmp_path)
        [proc] = _workers(pool)
        proc.kill()
        proc.wait()
        pool.convert(stored, tc.EXPLICIT_LE, tmp_path)
        assert pool.started == 3
    finally:
        pool.close()
    assert pool.workers() == 0


def test_workers_convert_in_parallel_up_to_the_limit(pool, jpeg, tmp_path):
    stored = [s for s, _ in jpeg] * 4
    results: list = []
    threads = [threading.Thread(target=lambda s=s: results.append(
        pool.convert(s, tc.EXPLICIT_LE, tmp_path))) for s in stored]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == len(stored)
    assert 1 <= pool.started <= 2


def test_serve_runs_without_numpy():
    """`dicombox serve` (the console script, as the units run it) blocks numpy before
    anything imports pydicom; other commands do not."""
    code = ("import sys, dicombox.cli as c; "
            "c.build_parser = lambda: sys.exit(print(sys.modules.get('numpy', 0) is None)); "
            "sys.argv = ['dicombox', *sys.argv[1:]]; c.main()")
    for argv, blocked in ((["--config", "serve.toml", "serve", "router"], "True"),
                          (["serve", "media", "--port", "0"], "True"),
                          (["--config", "serve", "status"], "False"),
                          (["media", "list"], "False")):
        r = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True,
                           text=True, timeout=60)
        assert r.stdout.strip() == blocked, (argv, r.stdout, r.stderr)


def _all_children() -> list[int]:
    me = str(os.getpid())
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[1] == me:
                out.append(int(pid))
    return out


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode()
    except OSError:
        return ""
