"""The processes a benchmark run starts: receivers, senders, and how they are measured.

Every receiver is a real program: DCMTK ``storescp``, Orthanc, and
``dicombox serve router`` (started like systemd would, with a real
NOTIFY_SOCKET, and measured only once it said READY=1).  DCMTK tools get
``TCP_NODELAY=1`` (Debian's DCMTK keeps Nagle's algorithm on otherwise).

Each process is stopped by its PID; peak memory is the kernel's own high-water
mark (``VmHWM``), reset between runs through ``/proc/PID/clear_refs``.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


#: Ports are picked below the kernel's ephemeral range (32768-60999 by
#: default), where no outgoing connection can take one between the probe
#: and the moment the service under test binds it.
PORT_RANGE = (20000, 32767)
_HANDED_OUT: set[int] = set()
_RANDOM = random.SystemRandom()  # unaffected by any seed a test sets


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


def peak_rss(pid: int) -> int:
    """Peak resident set size of ``pid`` in bytes (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def reset_peak_rss(pid: int) -> None:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        pass


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` (its threads included)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0


def _stop(proc: subprocess.Popen | None, timeout: float = 30) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


class Receiver:
    """A receiving program; subclasses start it and count what it holds."""

    name = "receiver"
    aet = "RECEIVER"
    ours = False

    def __init__(self, workdir: Path):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _popen(self, args, env=None) -> None:
        self._log = open(self.dir / f"{self.name}.log", "ab")  # noqa: SIM115 - closed in stop
        self.proc = subprocess.Popen([str(a) for a in args], stdout=self._log,
                                     stderr=subprocess.STDOUT, env=env, cwd=self.dir)

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: "
                               + self.log_tail())

    def log_tail(self, n: int = 2000) -> str:
        try:
            return (self.dir / f"{self.name}.log").read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def wait_echo(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            r = subprocess.run(["echoscu", "-aec", self.aet, "127.0.0.1", str(self.port)],
                               env=dcmtk_env(), capture_output=True)
            if r.returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not answer C-ECHO: {self.log_tail()}")

    def count(self) -> int:
        raise NotImplementedError

    def stop(self) -> None:
        _stop(self.proc)
        if self._log is not None:
            self._log.close()
            self._log = None


class StoreSCP(Receiver):
    """DCMTK storescp writing every received instance as a file (no fsync)."""

    name = "storescp"
    aet = "STORESCP"

    def start(self) -> StoreSCP:
        self.out = self.dir / "files"
        self.out.mkdir(exist_ok=True)
        self._popen(["storescp", "-aet", self.aet, "-od", self.out, "+xa", self.port],
                    env=dcmtk_env())
        self.wait_echo()
        return self

    def count(self) -> int:
        return sum(1 for _ in os.scandir(self.out))


class Orthanc(Receiver):
    """Orthanc with its own storage and index; REST on 127.0.0.1 only."""

    name = "orthanc"
    aet = "ORTHANC"

    def __init__(self, workdir: Path, modalities: dict | None = None):
        super().__init__(workdir)
        self.http_port = free_port()
        self.modalities = modalities or {}

    def start(self) -> Orthanc:
        cfg = {
            "Name": self.aet, "DicomAet": self.aet, "DicomPort": self.port,
            "HttpPort": self.http_port, "StorageDirectory": str(self.dir / "storage"),
            "IndexDirectory": str(self.dir / "storage"), "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "DicomCheckCalledAet": False,
            "OverwriteInstances": True, "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True, "Plugins": [], "LuaScripts": [],
            "DicomModalities": {k: list(v) for k, v in self.modalities.items()},
        }
        path = self.dir / "orthanc.json"
        path.write_text(json.dumps(cfg, indent=1))
        import shutil
        # Orthanc's DICOM network layer is DCMTK's: Nagle off, as for the tools.
        self._popen([shutil.which("Orthanc") or "/usr/sbin/Orthanc", path], env=dcmtk_env())
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                self.get("/system")
                return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"Orthanc did not start: {self.log_tail()}")

    def get(self, path: str):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}",
                                    timeout=10) as r:
            return json.loads(r.read())

    def count(self) -> int:
        return int(self.get("/statistics")["CountInstances"])

    def version(self) -> str:
        return str(self.get("/system").get("Version", ""))


class NotifySocket:
    """A real AF_UNIX datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self):
        self._dir = tempfile.mkdtemp(prefix="bench-notify-")
        self.path = os.path.join(self._dir, "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)

    def wait_ready(self, proc: subprocess.Popen, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            self.sock.settimeout(0.2)
            try:
                data = self.sock.recv(65536).decode(errors="replace")
            except (TimeoutError, OSError):
                continue
            if "READY=1" in data.split("\n"):
                return True
        return False

    def close(self) -> None:
        self.sock.close()
        try:
            os.unlink(self.path)
            os.rmdir(self._dir)
        except OSError:
            pass


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value))


def to_toml(sections: dict) -> str:
    """Tables (dicts) and arrays of tables (lists of dicts), one level deep."""
    lines = []
    for name, body in sections.items():
        items = body if isinstance(body, list) else [body]
        for item in items:
            lines.append(f"[[{name}]]" if isinstance(body, list) else f"[{name}]")
            lines += [f"{k} = {_toml(v)}" for k, v in item.items()]
            lines.append("")
    return "\n".join(lines)


class Router(Receiver):
    """``dicombox serve router`` as shipped (durability on), on a fresh state dir."""

    name = "router"
    aet = "DICOMBOX"
    ours = True

    def __init__(self, workdir: Path, extra: dict | None = None, src: Path | None = None):
        super().__init__(workdir)
        self.extra = extra or {}
        #: Another source tree of dicombox to run instead (before/after comparisons).
        self.src = src

    def config(self) -> dict:
        sections = {
            "box": {"state_dir": str(self.dir / "state"), "listen_address": "127.0.0.1",
                    "log_level": "warning"},
            "router": {"ae_title": self.aet, "port": self.port},
            "storage": {"reserve_mb": 0},
        }
        for key, value in self.extra.items():
            if isinstance(value, dict):
                sections.setdefault(key, {}).update(value)
            else:
                sections[key] = value
        return sections

    def start(self) -> Router:
        cfg = self.dir / "dicombox.toml"
        cfg.write_text(to_toml(self.config()))
        notify = NotifySocket()
        env = dict(os.environ, NOTIFY_SOCKET=notify.path)
        if self.src is not None:
            env["PYTHONPATH"] = os.pathsep.join([str(self.src), env.get("PYTHONPATH", "")])
        try:
            self._popen([sys.executable, "-m", "dicombox", "--config", cfg, "serve", "router"],
                        env=env)
            if not notify.wait_ready(self.proc, 60):
                self._check_alive()
                raise RuntimeError(f"router not ready: {self.log_tail()}")
        finally:
            notify.close()
        return self

    def count(self) -> int:
        import sqlite3
        conn = sqlite3.connect(f"file:{self.dir / 'state' / 'router' / 'index.db'}?mode=ro",
                               uri=True)
        try:
            return conn.execute("SELECT COUNT(*) FROM instances").fetchone()[0]
        finally:
            conn.close()


class MediaService(Router):
    """``dicombox serve media`` as shipped, writing each job as an ISO image to a folder
    (no drive on a benchmark machine): the burner AE receives, a job closes
    ``idle_seconds`` after its last instance, and is built, written and verified."""

    name = "media"
    aet = "DICOMBOX_CD"
    idle_seconds = 1.0

    def config(self) -> dict:
        return {
            "box": {"state_dir": str(self.dir / "state"), "listen_address": "127.0.0.1",
                    "log_level": "warning"},
            "router": {"port": free_port()},
            "mpps": {"port": free_port()},
            "media": {"ae_title": self.aet, "port": self.port, "writer": "folder",
                      "idle_seconds": self.idle_seconds},
            "media.folder": {"directory": str(self.dir / "out")},
            "storage": {"reserve_mb": 0},
        }

    def start(self) -> MediaService:
        cfg = self.dir / "dicombox.toml"
        cfg.write_text(to_toml(self.config()))
        notify = NotifySocket()
        try:
            self._popen([sys.executable, "-m", "dicombox", "--config", cfg, "serve", "media"],
                        env=dict(os.environ, NOTIFY_SOCKET=notify.path))
            if not notify.wait_ready(self.proc, 60):
                self._check_alive()
                raise RuntimeError(f"media service not ready: {self.log_tail()}")
        finally:
            notify.close()
        return self

    def _query(self, sql: str) -> list:
        import sqlite3
        conn = sqlite3.connect(f"file:{self.dir / 'state' / 'media' / 'index.db'}?mode=ro",
                               uri=True, timeout=10)
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()

    def count(self) -> int:
        return self._query("SELECT COUNT(*) FROM media_job_instances")[0][0]

    def wait_done(self, timeout: float) -> None:
        """Until every job is done (an error when one fails or time runs out)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            states = dict(self._query("SELECT state, COUNT(*) FROM media_jobs GROUP BY state"))
            if states.get("failed"):
                raise RuntimeError(f"a media job failed: {self.log_tail()}")
            if states and set(states) == {"done"}:
                return
            time.sleep(0.05)
        raise RuntimeError(f"media jobs not done after {timeout:.0f} s: {self.log_tail()}")


def storescu(port: int, aet: str, files_dir: Path, timeout: float = 1800,
             extra: list[str] | None = None) -> float:
    """Send every file of ``files_dir`` on one association; wall-clock seconds."""
    args = ["storescu", "-aet", "BENCH", "-aec", aet, *(extra or []), "+sd",
            "127.0.0.1", str(port), str(files_dir)]
    start = time.perf_counter()
    r = subprocess.run(args, env=dcmtk_env(), capture_output=True, text=True, timeout=timeout)
    elapsed = time.perf_counter() - start
    if r.returncode != 0:
        raise RuntimeError(f"storescu to {aet} failed ({r.returncode}): "
                           f"{(r.stdout + r.stderr)[-2000:]}")
    return elapsed


class Measured:
    """Wall time, peak RSS and CPU time of one finished child process."""

    def __init__(self, seconds: float, peak_rss: int | None, cpu: float, returncode: int,
                 output: str):
        self.seconds = seconds
        self.peak_rss = peak_rss
        self.cpu = cpu
        self.returncode = returncode
        self.output = output


#: GNU time reports the peak RSS of a process it forked itself; ``wait4``'s
#: ``ru_maxrss`` of our own child also counts the memory of this (large)
#: process, which the child was forked with.
GNU_TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None


def run_measured(args, env=None, cwd=None, timeout: float = 1800,
                 want_rss: bool = True) -> Measured:
    """Run ``args`` to completion: wall and CPU time from ``wait4``, peak RSS
    from GNU time when it is installed (else ``None``)."""
    args = [str(a) for a in args]
    with tempfile.TemporaryDirectory(prefix="bench-run-") as tmp:
        rss_file = os.path.join(tmp, "rss")
        if want_rss and GNU_TIME:
            args = [GNU_TIME, "-f", "%M", "-o", rss_file, *args]
        with open(os.path.join(tmp, "out"), "w+b") as out:
            start = time.perf_counter()
            proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env,
                                    cwd=cwd)
            killer = threading.Timer(timeout, proc.kill)
            killer.start()
            try:
                _pid, status, usage = os.wait4(proc.pid, 0)
            finally:
                killer.cancel()
            elapsed = time.perf_counter() - start
            proc.returncode = os.waitstatus_to_exitcode(status)
            out.seek(0)
            text = out.read().decode(errors="replace")
        rss = None
        try:
            rss = int(Path(rss_file).read_text().split()[-1]) * 1024
        except (OSError, ValueError, IndexError):
            pass
    return Measured(elapsed, rss, usage.ru_utime + usage.ru_stime, proc.returncode, text)
