"""Real peers for the tests: a private network namespace, Orthanc, DCMTK storescp.

Orthanc and storescp bind every address with no option to change that, so
they run inside a network namespace that has only ``lo``; the box's own
processes and DCMTK senders join the same namespace through
:meth:`NetNS.prefix`.  Orthanc's REST API is reached with curl inside it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path

from helpers import dcmtk_env, free_port


class NetNS:
    """A named network namespace with loopback up; deleted by :meth:`close`."""

    def __init__(self):
        self.name = f"dbx-{secrets.token_hex(4)}"
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        subprocess.run(["ip", "netns", "exec", self.name, "ip", "link", "set", "lo", "up"],
                       check=True)

    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def run(self, *args, **kw) -> subprocess.CompletedProcess:
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        kw.setdefault("env", dcmtk_env())
        return subprocess.run([*self.prefix(), *[str(a) for a in args]], **kw)

    def close(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


def _stop(proc: subprocess.Popen | None, timeout: float = 15) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


class Orthanc:
    """An Orthanc PACS with its own storage, in ``ns``.

    ``modalities`` maps a name to (AE title, host, port) for its
    ``DicomModalities`` (the box, for storage commitment reports).
    """

    def __init__(self, ns: NetNS, workdir: Path, aet: str = "ORTHANC",
                 modalities: dict | None = None, overwrite: bool = True,
                 dicom_port: int | None = None):
        self.ns = ns
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.aet = aet
        self.dicom_port = dicom_port or free_port()
        self.http_port = free_port()
        self.modalities = modalities or {}
        self.overwrite = overwrite
        self.proc: subprocess.Popen | None = None

    def config(self) -> dict:
        return {
            "Name": self.aet,
            "StorageDirectory": str(self.dir / "storage"),
            "IndexDirectory": str(self.dir / "storage"),
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "OverwriteInstances": self.overwrite,
            "DicomModalities": {k: list(v) for k, v in self.modalities.items()},
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "StorageCommitmentReportsSize": 100,
            "Plugins": [],
            "LuaScripts": [],
            "HttpServerEnabled": True,
            "StableAge": 1,
        }

    def start(self, timeout: float = 30) -> Orthanc:
        cfg = self.dir / "orthanc.json"
        cfg.write_text(json.dumps(self.config(), indent=1))
        self._log = open(self.dir / "orthanc.log", "ab")  # noqa: SIM115 - closed in stop
        self.proc = subprocess.Popen([*self.ns.prefix(), shutil.which("Orthanc") or
                                      "/usr/sbin/Orthanc", str(cfg)],
                                     stdout=self._log, stderr=subprocess.STDOUT,
                                     env=dcmtk_env())  # Orthanc's DCMTK: Nagle off
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("Orthanc exited:\n" +
                                   (self.dir / "orthanc.log").read_text(errors="replace")[-3000:])
            r = self.ns.run("curl", "-sf", f"http://127.0.0.1:{self.http_port}/system")
            if r.returncode == 0:
                return self
            time.sleep(0.2)
        raise RuntimeError("Orthanc did not start")

    def rest(self, method: str, path: str, body=None):
        args = ["curl", "-sf", "-X", method, f"http://127.0.0.1:{self.http_port}{path}"]
        if body is not None:
            args += ["-H", "Content-Type: application/json", "--data-binary", json.dumps(body)]
        r = self.ns.run(*args)
        if r.returncode != 0:
            raise RuntimeError(f"Orthanc {method} {path} failed: rc={r.returncode} {r.stderr}")
        return json.loads(r.stdout) if r.stdout.strip() else None

    def get(self, path: str):
        return self.rest("GET", path)

    def post(self, path: str, body=None):
        return self.rest("POST", path, body if body is not None else {})

    def sop_instance_uids(self) -> set[str]:
        out = set()
        for iid in self.get("/instances"):
            tags = self.get(f"/instances/{iid}/simplified-tags")
            out.add(tags["SOPInstanceUID"])
        return out

    def instance_count(self) -> int:
        return self.get("/statistics")["CountInstances"]

    def file_of(self, sop_instance_uid: str) -> bytes:
        r = self.ns.run("curl", "-sf", "-X", "POST", "--data-binary", sop_instance_uid,
                        f"http://127.0.0.1:{self.http_port}/tools/lookup")
        found = json.loads(r.stdout)
        iid = next(x["ID"] for x in found if x["Type"] == "Instance")
        r = self.ns.run("curl", "-sf", f"http://127.0.0.1:{self.http_port}/instances/{iid}/file",
                        text=False)
        return r.stdout

    def stop(self) -> None:
        _stop(self.proc)
        if getattr(self, "_log", None):
            self._log.close()
            self._log = None


class StoreSCP:
    """DCMTK storescp writing every received file into ``directory``, in ``ns``.

    ``extra`` passes options (e.g. ``["+xa"]`` to accept every syntax, or
    ``["-xe"]`` ... to restrict them).
    """

    def __init__(self, ns: NetNS, directory: Path, aet: str = "STORESCP",
                 extra: list[str] | None = None, port: int | None = None):
        self.ns = ns
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.aet = aet
        self.port = port or free_port()
        self.extra = extra if extra is not None else ["+xa"]
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 15) -> StoreSCP:
        self._log = open(self.dir.parent / f"storescp-{self.port}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [*self.ns.prefix(), "storescp", "-aet", self.aet, "-od", str(self.dir),
             *self.extra, str(self.port)],
            stdout=self._log, stderr=subprocess.STDOUT, env=dcmtk_env())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = self.ns.run("echoscu", "-aec", self.aet, "127.0.0.1", self.port)
            if r.returncode == 0:
                return self
            if self.proc.poll() is not None:
                raise RuntimeError("storescp exited")
            time.sleep(0.1)
        raise RuntimeError("storescp did not start")

    def files(self) -> list[Path]:
        return sorted(p for p in self.dir.iterdir() if p.is_file())

    def stop(self) -> None:
        _stop(self.proc)
        if getattr(self, "_log", None):
            self._log.close()
            self._log = None


def in_ns_env() -> dict:
    return dict(os.environ)
