"""Transfer-syntax conversions done by a child process of the service.

The services themselves never decode pixel data: they receive, index, copy
and send bytes.  Decoding needs numpy and the codecs, which cost some 15 MB
of resident memory in every process that imports them (pydicom imports numpy
as soon as it is installed), and a codec that crashes on a malformed
fragment would take the whole service with it.  So each service starts
without numpy (:func:`without_numpy`, called by ``dicombox serve`` before
anything imports pydicom), and :func:`convert` hands each conversion to a
worker: ``python -m dicombox.transcoder``, started on first use, which runs
:func:`dicombox.transcode.convert` and answers on a pipe.

- Up to :data:`MAX_WORKERS` conversions run at once (each in its own
  worker); a caller beyond that waits for a free worker.
- A worker left idle for :data:`IDLE_SECONDS` is stopped: its memory goes
  back to the box until the next conversion.
- A worker that dies during a conversion (a codec crash, the kernel's OOM
  killer) fails that conversion with a :class:`~dicombox.transcode.TranscodeError`
  naming the signal; the next conversion starts a fresh worker.
- A conversion that takes longer than :data:`TIMEOUT_BASE` seconds plus
  :data:`TIMEOUT_PER_MB` per megabyte of the source (a codec looping on
  crafted data) has its worker killed and fails the same way: it never
  holds a sender or a media job forever.
- The parent creates the output file and removes it on any failure, so a
  killed worker leaves nothing behind; a worker whose parent dies reads the
  end of its pipe and exits.

Errors come back as they were raised in the worker: ``TranscodeError``
(retrying will not help) or ``OSError`` with its errno (a retry may).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path

from .transcode import Converted, Policy, TranscodeError

LOGGER = logging.getLogger("dicombox.transcoder")

MAX_WORKERS = 2
IDLE_SECONDS = 60.0
#: A conversion's time limit: base + per MB of the source (a Pi decodes JPEG
#: lossless at some 10-20 MB/s; these leave a wide margin).
TIMEOUT_BASE = 120.0
TIMEOUT_PER_MB = 1.0


def without_numpy() -> None:
    """Make ``import numpy`` fail in this process (call before pydicom is imported).

    pydicom then runs without its pixel-data helpers, which the services do
    not use; conversions go to the worker, which has numpy.
    """
    sys.modules.setdefault("numpy", None)  # type: ignore[arg-type]


class _Worker:
    def __init__(self):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dicombox.transcoder"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True)
        self.idle_since = time.monotonic()

    def request(self, message: dict, timeout: float) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(json.dumps(message).encode() + b"\n")
            self.proc.stdin.flush()
            ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
            if not ready:
                self.proc.kill()
                self.proc.wait()
                raise _WorkerDied(f"was stopped after {timeout:.0f} s")
            line = self.proc.stdout.readline()
        except (BrokenPipeError, ConnectionResetError):
            line = b""
        if not line:
            raise _WorkerDied(self._exit_text())
        return json.loads(line)

    def _exit_text(self) -> str:
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exited with status {code}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class _WorkerDied(Exception):
    pass


class Transcoder:
    """A small pool of conversion workers (see the module's description)."""

    def __init__(self, max_workers: int = MAX_WORKERS, idle_seconds: float = IDLE_SECONDS,
                 timeout_base: float = TIMEOUT_BASE, timeout_per_mb: float = TIMEOUT_PER_MB):
        self.max_workers = max_workers
        self.idle_seconds = idle_seconds
        self.timeout_base = timeout_base
        self.timeout_per_mb = timeout_per_mb
        self._cond = threading.Condition()
        self._idle: list[_Worker] = []
        self._busy = 0
        self._closed = False
        self._reaper: threading.Timer | None = None
        #: Workers started so far (a crash starts a new one).
        self.started = 0

    def convert(self, src: Path, target: str, tmp_dir: Path, policy: Policy | None = None,
                implementation: tuple[str, str] | None = None) -> Converted:
        """:func:`dicombox.transcode.convert`, run by a worker."""
        src = Path(src)
        fd, name = tempfile.mkstemp(dir=tmp_dir, prefix="convert-", suffix=".dcm")
        os.close(fd)
        out = Path(name)
        message = {"src": str(src), "target": target, "out": str(out),
                   "policy": asdict(policy or Policy()),
                   "implementation": list(implementation) if implementation else None}
        try:
            reply = self._run(message, src)
            if "error" in reply:
                raise _rebuild_error(reply)
            return Converted(**{**reply["ok"], "path": out})
        except BaseException:
            out.unlink(missing_ok=True)
            raise

    def _run(self, message: dict, src: Path) -> dict:
        try:
            size = src.stat().st_size
        except OSError:
            size = 0            # the worker reports the missing file
        timeout = self.timeout_base + self.timeout_per_mb * size / 1e6
        worker = self._acquire()
        try:
            reply = worker.request(message, timeout)
        except _WorkerDied as exc:
            self._release(worker, dead=True)
            LOGGER.error("the transcoder %s while converting %s", exc, src.name)
            raise TranscodeError(f"the transcoder {exc} while converting this instance") \
                from None
        except BaseException:
            worker.proc.kill()
            self._release(worker, dead=True)
            raise
        self._release(worker)
        return reply

    def _acquire(self) -> _Worker:
        with self._cond:
            while True:
                if self._closed:
                    raise TranscodeError("the box is stopping")
                while self._idle:
                    worker = self._idle.pop()
                    if worker.alive():
                        self._busy += 1
                        return worker
                    worker.stop()
                if self._busy < self.max_workers:
                    self._busy += 1
                    break
                self._cond.wait()
        try:
            worker = _Worker()
        except OSError as exc:
            with self._cond:
                self._busy -= 1
                self._cond.notify()
            raise OSError(exc.errno, f"cannot start the transcoder: {exc.strerror}") from exc
        self.started += 1
        return worker

    def _release(self, worker: _Worker, dead: bool = False) -> None:
        if dead:
            worker.stop()
        with self._cond:
            self._busy -= 1
            if not dead:
                if self._closed:
                    worker.stop()
                else:
                    worker.idle_since = time.monotonic()
                    self._idle.append(worker)
                    self._schedule_reap()
            self._cond.notify()

    def _schedule_reap(self) -> None:
        if self._reaper is not None or self.idle_seconds <= 0:
            return
        self._reaper = threading.Timer(self.idle_seconds, self._reap)
        self._reaper.daemon = True
        self._reaper.start()

    def _reap(self) -> None:
        now = time.monotonic()
        with self._cond:
            self._reaper = None
            stale = [w for w in self._idle if now - w.idle_since >= self.idle_seconds]
            self._idle = [w for w in self._idle if w not in stale]
            if self._idle:
                self._schedule_reap()
        for worker in stale:
            worker.stop()

    def workers(self) -> int:
        """Worker processes running now (idle or converting)."""
        with self._cond:
            return self._busy + sum(w.alive() for w in self._idle)

    def close(self) -> None:
        """Stop every idle worker; busy ones stop when their conversion ends."""
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            if self._reaper is not None:
                self._reaper.cancel()
                self._reaper = None
            self._cond.notify_all()
        for worker in idle:
            worker.stop()


def _rebuild_error(reply: dict) -> BaseException:
    if reply["error"] == "os":
        return OSError(reply.get("errno") or 0, reply["message"])
    return TranscodeError(reply["message"])


_DEFAULT: Transcoder | None = None
_DEFAULT_LOCK = threading.Lock()


def default() -> Transcoder:
    """The process's pool, created on first use and closed at exit."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = Transcoder()
            atexit.register(_DEFAULT.close)
        return _DEFAULT


def convert(src: Path, target: str, tmp_dir: Path, policy: Policy | None = None,
            implementation: tuple[str, str] | None = None) -> Converted:
    """Convert ``src`` in a worker of the process's pool (see :class:`Transcoder`)."""
    return default().convert(src, target, tmp_dir, policy, implementation)


# -- the worker ---------------------------------------------------------------

def _serve(requests, replies) -> None:
    from . import transcode

    for line in requests:
        message = json.loads(line)
        try:
            converted = transcode.convert(
                Path(message["src"]), message["target"], Path(message["out"]).parent,
                Policy(**message["policy"]),
                tuple(message["implementation"]) if message["implementation"] else None,
                out=Path(message["out"]))
            reply = {"ok": {**asdict(converted), "path": str(converted.path)}}
        except TranscodeError as exc:
            reply = {"error": "transcode", "message": str(exc)}
        except OSError as exc:
            reply = {"error": "os", "errno": exc.errno,
                     "message": exc.strerror or str(exc)}
        except Exception as exc:  # noqa: BLE001 - a codec's own error: this instance only
            reply = {"error": "transcode", "message": f"{type(exc).__name__}: {exc}"}
        replies.write(json.dumps(reply).encode() + b"\n")
        replies.flush()


def main() -> int:
    # Replies go to the real stdout; anything a library prints goes to stderr.
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the parent decides when to stop
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="dicombox-transcoder: %(message)s")
    _serve(sys.stdin.buffer, replies)
    return 0


if __name__ == "__main__":
    sys.exit(main())
