"""Test helpers: free ports, real processes of the box, a real NOTIFY_SOCKET, DCMTK."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DICOMBOX = [sys.executable, "-m", "dicombox"]


def require(*tools):
    """Fail (never skip) when a real peer the test needs is not installed."""
    import shutil

    import pytest

    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.fail(f"missing test peers: {', '.join(missing)} (run scripts/install-peers.sh)")


#: Ports are picked below the kernel's ephemeral range (32768-60999 by
#: default), where no outgoing connection can take one between the probe
#: and the moment the service under test binds it.
PORT_RANGE = (20000, 32767)
_HANDED_OUT: set[int] = set()
_RANDOM = random.SystemRandom()  # unaffected by any seed a test sets


def tmp_leftovers(tmp_dir: Path) -> list[str]:
    """What a running service's ``tmp/`` holds besides the few empty receive
    files it keeps created ahead (``dicombox.dimse.receive``): anything
    here is a half-written or forgotten file."""
    from dicombox.dimse import receive

    ahead = [p for p in Path(tmp_dir).iterdir()
             if p.name.startswith("rx-") and p.is_file() and p.stat().st_size == 0]
    assert len(ahead) <= receive.POOL_FILES, ahead
    return sorted(p.name for p in Path(tmp_dir).iterdir() if p not in ahead)


def free_port() -> int:
    """A free loopback port, never one this process handed out before (one
    configuration asks for several ports in a row)."""
    while True:
        port = _RANDOM.randint(*PORT_RANGE)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port


def dcmtk_env() -> dict:
    env = dict(os.environ)
    env["TCP_NODELAY"] = "1"
    return env


def dcmtk(*args, check=False, timeout=300, **kw) -> subprocess.CompletedProcess:
    """Run a DCMTK tool with Nagle off; capture its output."""
    return subprocess.run([str(a) for a in args], env=dcmtk_env(), capture_output=True,
                          text=True, check=check, timeout=timeout, **kw)


class NotifySocket:
    """A real AF_UNIX datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self):
        self._dir = tempfile.mkdtemp(prefix="notify-")
        self.path = os.path.join(self._dir, "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: list[str] = []
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop:
            try:
                data = self.sock.recv(65536)
            except (TimeoutError, OSError):
                continue
            with self._cond:
                self.messages.extend(data.decode().split("\n"))
                self._cond.notify_all()

    def wait_for(self, line: str, timeout: float = 30, start: int = 0) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while line not in self.messages[start:]:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self):
        self._stop = True
        self._thread.join(2)
        self.sock.close()
        try:
            os.unlink(self.path)
            os.rmdir(self._dir)
        except OSError:
            pass


class BoxProcess:
    """One ``dicombox serve SERVICE`` process, started for real."""

    def __init__(self, service: str, config: Path, port: int | None = None,
                 log: Path | None = None, env: dict | None = None,
                 prefix: list[str] | None = None):
        self.prefix = prefix or []  # e.g. NetNS.prefix() to run inside a namespace
        self.service = service
        self.config = Path(config)
        self.port = port
        self.log = log or self.config.parent / f"{service}.log"
        self.env = env or {}
        self.proc: subprocess.Popen | None = None
        self.notify: NotifySocket | None = None

    def start(self, wait: bool = True, watchdog_usec: int | None = None) -> BoxProcess:
        self.notify = NotifySocket()
        env = dict(os.environ, NOTIFY_SOCKET=self.notify.path, **self.env)
        if watchdog_usec:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
        args = [*self.prefix, *DICOMBOX, "--config", str(self.config), "serve", self.service]
        if self.port is not None:
            args += ["--port", str(self.port)]
        self._logf = open(self.log, "ab")  # noqa: SIM115 - closed in _cleanup
        self.proc = subprocess.Popen(args, stdout=self._logf, stderr=subprocess.STDOUT,
                                     env=env, cwd=self.config.parent)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30) -> None:
        assert self.notify is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.notify.wait_for("READY=1", timeout=0.2):
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.service} exited with {self.proc.returncode}:\n"
                                   + self.log.read_text(errors="replace")[-3000:])
        raise RuntimeError(f"{self.service} not ready after {timeout} s:\n"
                           + self.log.read_text(errors="replace")[-3000:])

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self) -> None:
        """kill -9, as a power cut would."""
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._cleanup()

    def stop(self, timeout: float = 60) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._cleanup()
        return self.proc.returncode

    def _cleanup(self):
        if self.notify is not None:
            self.notify.close()
            self.notify = None
        if getattr(self, "_logf", None):
            self._logf.close()
            self._logf = None

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (str, Path)):
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(v)


def to_toml(data: dict) -> str:
    """Serialise nested dicts (tables) and lists of dicts (arrays of tables)."""
    lines: list[str] = []

    def table(prefix: str, d: dict, header: str | None):
        scalars = {k: v for k, v in d.items() if not isinstance(v, dict)
                   and not (isinstance(v, list) and v and isinstance(v[0], dict))}
        if header:
            lines.append(header)
        for k, v in scalars.items():
            lines.append(f"{k} = {_toml_value(v)}")
        lines.append("")
        for k, v in d.items():
            key = f"{prefix}.{k}" if prefix else k
            if isinstance(v, dict):
                table(key, v, f"[{key}]")
            elif isinstance(v, list) and v and isinstance(v[0], dict):
                for item in v:
                    table(key, item, f"[[{key}]]")

    table("", data, None)
    return "\n".join(lines)


def deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def config_data(**sections) -> dict:
    """The tests' base configuration (loopback, free ports, state under the
    config's folder) merged with ``sections``."""
    base = {
        "box": {"state_dir": "state", "listen_address": "127.0.0.1"},
        "router": {"port": free_port()},
        "mpps": {"port": free_port()},
        "media": {"port": free_port()},
        "storage": {"reserve_mb": 0},
    }
    return deep_merge(base, sections)


def write_config(directory: Path, data: dict | None = None, name: str = "dicombox.toml",
                 **sections) -> Path:
    """Write a test configuration; ``sections`` override :func:`config_data`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(to_toml(data if data is not None else config_data(**sections)))
    return path
