"""Run a writer's helper program (xorriso, mtools) so that it can be cancelled.

The caller's thread reads the program's output as it comes (progress lines,
or a data stream on stdout that is hashed on the fly) and checks its cancel
event between reads; a cancelled program gets SIGINT (xorriso then stops the
burn the way libburn wants), then SIGKILL if it does not end.  Nothing here
starts a thread.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .errors import MediaError

#: How often a blocked read looks at the cancel event.
POLL_SECONDS = 0.25
#: How long a cancelled program may take to stop before it is killed.
GRACE_SECONDS = 15.0


@dataclass
class Finished:
    returncode: int
    lines: list[str]    # the last lines of its messages (stderr, and stdout unless sunk)

    def text(self) -> str:
        return "\n".join(self.lines)


def run(argv: Sequence[str], *, on_line: Callable[[str], None] | None = None,
        stdout_sink: Callable[[bytes], None] | None = None,
        cancel: threading.Event | None = None, env: dict | None = None,
        keep_lines: int = 400, missing_kind: str = "no-drive") -> Finished:
    """Run ``argv`` to its end; return its exit status and last message lines.

    ``on_line`` sees every message line as it arrives; ``stdout_sink``, when
    given, receives stdout as raw bytes instead of lines (it may raise to stop
    the program).  Raises ``MediaError("cancelled")`` when ``cancel`` is set.
    """
    try:
        proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env, start_new_session=True)
    except FileNotFoundError:
        raise MediaError(missing_kind, f"{argv[0]} is not installed") from None
    lines: deque[str] = deque(maxlen=keep_lines)
    partial = {proc.stdout.fileno(): b"", proc.stderr.fileno(): b""}
    binary = {proc.stdout.fileno()} if stdout_sink is not None else set()
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    sel.register(proc.stderr, selectors.EVENT_READ)
    open_streams = 2

    def emit(raw: bytes) -> None:
        line = raw.decode("utf-8", "replace").rstrip()
        if line:
            lines.append(line)
            if on_line is not None:
                on_line(line)

    try:
        while open_streams:
            if cancel is not None and cancel.is_set():
                raise MediaError("cancelled", "cancelled by the operator")
            for key, _ in sel.select(timeout=POLL_SECONDS):
                fd = key.fileobj.fileno()
                data = os.read(fd, 1 << 16)
                if not data:
                    sel.unregister(key.fileobj)
                    open_streams -= 1
                    if partial[fd]:
                        emit(partial[fd])
                    continue
                if fd in binary:
                    stdout_sink(data)
                    continue
                buf = partial[fd] + data.replace(b"\r", b"\n")
                *complete, partial[fd] = buf.split(b"\n")
                for raw in complete:
                    emit(raw)
        while True:
            try:
                rc = proc.wait(timeout=POLL_SECONDS)
                break
            except subprocess.TimeoutExpired:
                if cancel is not None and cancel.is_set():
                    raise MediaError("cancelled", "cancelled by the operator") from None
        return Finished(rc, list(lines))
    except BaseException:
        _stop(proc)
        raise
    finally:
        sel.close()
        proc.stdout.close()
        proc.stderr.close()


def _stop(proc: subprocess.Popen) -> None:
    """SIGINT, then SIGKILL after a grace period; always reaps the process."""
    if proc.poll() is not None:
        return
    try:
        proc.send_signal(signal.SIGINT)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + GRACE_SECONDS
    while time.monotonic() < deadline:
        try:
            proc.wait(timeout=POLL_SECONDS)
            return
        except subprocess.TimeoutExpired:
            # Keep its pipes flowing so it is not blocked writing output.
            for stream in (proc.stdout, proc.stderr):
                try:
                    os.set_blocking(stream.fileno(), False)
                    stream.read()
                except (OSError, ValueError, TypeError):
                    pass
    proc.kill()
    proc.wait()
