"""A real systemd booted in a container (systemd-nspawn) with the box's units.

The container's root is the host's own ``/usr`` under a fresh tmpfs
(``--volatile=yes``), so it boots in about a second with the host's Python,
DCMTK and systemd.  The repository is bound read-only at its own path and its
``.venv`` at ``/opt/dicombox/venv``, which is where the units run
``dicombox`` from; ``/etc`` starts empty and gets only what the image would
have: the units (enabled as the image enables them), the production
configuration, the sysusers and tmpfiles entries of ``rootfs/``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]
UNITS = ["dicombox-router", "dicombox-mpps", "dicombox-media", "dicombox-panel"]
VENV = "/opt/dicombox/venv"

#: The panel's pins are gpiozero mock pins in a container (no GPIO header).
MOCK_PINS = """# Test container: no GPIO header; gpiozero drives mock pins instead.
[Service]
Environment=GPIOZERO_PIN_FACTORY=mock GPIOZERO_MOCK_PIN_CLASS=mockpwmpin
"""


def debian_12_root() -> bool:
    """Where CI runs: here the container must work, or the test fails."""
    try:
        release = dict(line.split("=", 1) for line in
                       Path("/etc/os-release").read_text().splitlines() if "=" in line)
    except OSError:
        return False
    return (os.geteuid() == 0 and release.get("ID") == "debian"
            and release.get("VERSION_ID", "").strip('"') == "12")


def nspawn_problem() -> str | None:
    """Why systemd-nspawn cannot boot a container here (None: it can)."""
    if os.geteuid() != 0:
        return "systemd-nspawn needs root"
    for tool in ("systemd-nspawn", "nsenter", "systemctl"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt package systemd-container / util-linux)"
    if not Path("/sys/fs/cgroup").is_dir():
        return "no cgroup file system"
    return None


def _hidden_by_hardening(path: Path) -> str | None:
    """The units' own sandbox hides these trees; the repository may live there."""
    for top, setting in (("/home", "ProtectHome"), ("/root", "ProtectHome"),
                         ("/run/user", "ProtectHome"), ("/tmp", "PrivateTmp"),
                         ("/var/tmp", "PrivateTmp")):
        if path == Path(top) or Path(top) in path.parents:
            return setting
    return None


def python_prefix() -> Path | None:
    """Where the venv's base interpreter lives, if not in ``/usr`` (which the
    container shares): it must be visible inside too."""
    home = None
    for line in (REPO / ".venv" / "pyvenv.cfg").read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "home":
            home = Path(value.strip()).resolve()
    if home is None:
        return None
    prefix = home.parent
    if prefix == Path("/usr") or Path("/usr") in prefix.parents:
        return None
    return prefix


def make_traversable(path: Path) -> None:
    """Let the units' unprivileged user reach ``path`` (the venv lives under
    the repository): a clone in a ``mktemp -d`` folder is mode 0700.  Only
    search (x) permission is added, never read."""
    for p in [path, *path.parents]:
        mode = p.stat().st_mode
        if not mode & 0o001:
            p.chmod(mode | 0o011)


def host_paths() -> list[Path]:
    """Host trees the container (and the units in it) must see at their own path."""
    return [p for p in (REPO, python_prefix()) if p is not None]


def prepare_etc(work: Path) -> Path:
    """``/etc/systemd/system`` of the container: our units, enabled."""
    root = work / "root"
    system = root / "etc" / "systemd" / "system"
    system.mkdir(parents=True)
    for unit in sorted((REPO / "systemd").iterdir()):
        if unit.is_file():
            shutil.copy(unit, system / unit.name)
    dropin = system / "dicombox-panel.service.d"
    dropin.mkdir()
    (dropin / "50-mock-pins.conf").write_text(MOCK_PINS)
    hidden = {p: _hidden_by_hardening(p) for p in host_paths()}
    hidden = {p: h for p, h in hidden.items() if h}
    if hidden:
        # Only for the test: the venv (its interpreter, the sources) lives in
        # trees the units' sandbox hides; on the image it is all under /opt
        # and /usr.
        lines = ["[Service]"]
        if "ProtectHome" in hidden.values():
            lines.append("ProtectHome=tmpfs")
        lines += [f"BindReadOnlyPaths={p}" for p in hidden]
        for unit in UNITS:
            d = system / f"{unit}.service.d"
            d.mkdir(exist_ok=True)
            (d / "60-development-venv.conf").write_text("\n".join(lines) + "\n")
    enable = [u.name for u in (REPO / "systemd").iterdir()
              if u.is_file() and "[Install]" in u.read_text()]
    subprocess.run(["systemctl", f"--root={root}", "--quiet", "enable", *enable],
                   check=True, capture_output=True, text=True, timeout=60)
    return system


_UNITS_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0}


def seconds(text: str) -> float:
    """A systemd time span as `systemctl show` prints it ("20s", "1min 30s")."""
    import re
    total = 0.0
    for number, unit in re.findall(r"([\d.]+)\s*(us|ms|min|s|h)", text):
        total += float(number) * _UNITS_S[unit]
    if total == 0.0 and text.strip().isdigit():
        total = int(text) / 1e6
    return total


class Container:
    """One booted container; :meth:`close` always ends it."""

    def __init__(self, work: Path):
        self.work = Path(work)
        self.name = f"dbx-{uuid.uuid4().hex[:10]}"
        self.log = self.work / "boot.log"
        self.proc: subprocess.Popen | None = None
        self.leader: int | None = None

    def boot(self, timeout: float = 30) -> Container:
        system = prepare_etc(self.work)
        rootfs = REPO / "rootfs"
        for p in host_paths():
            make_traversable(p)
        binds = [
            *[f"--bind-ro={p}" for p in host_paths()],
            f"--bind-ro={REPO / '.venv'}:{VENV}",
            f"--bind-ro={system}:/etc/systemd/system",
            f"--bind-ro={rootfs / 'etc/dicombox'}:/etc/dicombox",
            f"--bind-ro={rootfs / 'usr/lib/sysusers.d/dicombox.conf'}"
            ":/etc/sysusers.d/dicombox.conf",
            f"--bind-ro={rootfs / 'usr/lib/tmpfiles.d/dicombox.conf'}"
            ":/etc/tmpfiles.d/dicombox.conf",
        ]
        cmd = ["systemd-nspawn", "--quiet", "--register=no", "--keep-unit",
               f"--machine={self.name}", "-D", "/", "--volatile=yes", "--private-network",
               *binds, "-b", "systemd.firstboot=off", "systemd.mask=orthanc.service"]
        self._logf = open(self.log, "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._logf,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"systemd-nspawn exited with {self.proc.returncode}:\n"
                                   + self.output())
            try:
                for child in psutil.Process(self.proc.pid).children():
                    if child.name() == "systemd":
                        self.leader = child.pid
            except psutil.NoSuchProcess:
                pass
            if self.leader and self.run("systemctl", "is-system-running",
                                        check=False).stdout.strip() not in ("", "offline"):
                return self
            time.sleep(0.2)
        raise RuntimeError(f"the container's systemd did not come up in {timeout} s:\n"
                           + self.output())

    def run(self, *args: str, check: bool = True, namespaces: str = "-a",
            timeout: float = 60) -> subprocess.CompletedProcess:
        """Run a command inside the container (all its namespaces by default)."""
        assert self.leader is not None
        return subprocess.run(["nsenter", "-t", str(self.leader), namespaces, *args],
                              capture_output=True, text=True, check=check, timeout=timeout,
                              env={**os.environ, "SYSTEMD_PAGER": "", "TCP_NODELAY": "1"})

    def show(self, unit: str) -> dict[str, str]:
        out = self.run("systemctl", "show", "-p",
                       "ActiveState,SubState,MainPID,NRestarts,Result,WatchdogUSec,User",
                       f"{unit}.service").stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def wait(self, predicate, timeout: float, interval: float = 0.25):
        """Poll ``predicate()`` until it returns something true; return the last value."""
        deadline = time.monotonic() + timeout
        value = predicate()
        while not value and time.monotonic() < deadline:
            time.sleep(interval)
            value = predicate()
        return value

    def diagnostics(self) -> str:
        parts = []
        for args in (("systemctl", "--no-pager", "--failed"),
                     ("systemctl", "--no-pager", "status", *[f"{u}.service" for u in UNITS]),
                     ("journalctl", "--no-pager", "-n", "120", "-o", "short-monotonic",
                      *[f"-u{u}.service" for u in UNITS])):
            try:
                r = self.run(*args, check=False)
                parts.append(f"$ {' '.join(args)}\n{r.stdout}{r.stderr}")
            except Exception as exc:  # noqa: BLE001 - diagnostics must not raise
                parts.append(f"$ {' '.join(args)}: {exc}")
        return "\n".join(parts)

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def close(self, timeout: float = 30) -> None:
        """Power the container off (SIGTERM to nspawn), kill it if it hangs."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                # Killing a PID namespace's init kills everything in it.
                for pid in (self.leader, self.proc.pid):
                    if pid:
                        try:
                            os.kill(pid, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                self.proc.wait(10)
        if getattr(self, "_logf", None):
            self._logf.close()
            self._logf = None
