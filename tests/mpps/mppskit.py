"""MPPS test peers: dcmjs-dimse SCU and SCPs (tests/peers/*.js) and MPPS datasets."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import tomllib
from pathlib import Path

import pytest

from helpers import DICOMBOX, REPO, free_port

PEERS = REPO / "tests" / "peers"
MPPS_CLASS = "1.2.840.10008.3.1.2.3.3"


def require(*tools) -> None:
    """Fail (not skip) when a peer program is missing. Kept here rather than
    imported from the top conftest: ``conftest`` names whichever conftest.py
    pytest loaded last."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.fail(f"missing test peers: {', '.join(missing)} (run scripts/install-peers.sh)")


def require_node_peers() -> None:
    if shutil.which("node") is None or not (PEERS / "node_modules" / "dcmjs-dimse").exists():
        pytest.fail("dcmjs-dimse is not installed (run scripts/install-peers.sh)")


def wait_for(predicate, timeout: float = 30, what: str = "condition"):
    """Poll ``predicate`` until it returns something true; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def mpps_port(proc) -> int:
    return tomllib.loads(Path(proc.config).read_text())["mpps"]["port"]


def router_port(proc) -> int:
    return tomllib.loads(Path(proc.config).read_text())["router"]["port"]


class MppsPeer:
    """tests/peers/mpps-scp.js: an order filler or report manager, in ``ns``."""

    def __init__(self, ns, workdir: Path, aet: str, port: int | None = None,
                 extra: list[str] | None = None):
        self.ns = ns
        self.aet = aet
        self.port = port or free_port()
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = self.dir / f"{aet}-messages.jsonl"
        self.extra = extra or []
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30) -> MppsPeer:
        self._out = open(self.dir / f"{self.aet}.out", "ab")  # noqa: SIM115 - closed in stop
        self.proc = subprocess.Popen(
            [*self.ns.prefix(), "node", str(PEERS / "mpps-scp.js"), str(self.port), self.aet,
             str(self.log), *self.extra], stdout=self._out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = self.ns.run("echoscu", "-aec", self.aet, "127.0.0.1", self.port)
            if r.returncode == 0:
                return self
            if self.proc.poll() is not None:
                raise RuntimeError("mpps-scp.js exited: " +
                                   (self.dir / f"{self.aet}.out").read_text())
            time.sleep(0.1)
        raise RuntimeError("mpps-scp.js did not start")

    def messages(self) -> list[dict]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if getattr(self, "_out", None):
            self._out.close()
            self._out = None


@pytest.fixture(name="mpps_peers")
def mpps_peers_fixture():
    """Start MPPS SCP peers; every one is stopped in teardown."""
    require_node_peers()
    started: list[MppsPeer] = []

    def start(ns, workdir, aet, port=None, extra=None):
        peer = MppsPeer(ns, workdir, aet, port, extra).start()
        started.append(peer)
        return peer

    yield start
    for p in started:
        p.stop()


def send_mpps(port: int, script: list[dict], workdir: Path, ns=None, called="DICOMBOX_PPS",
              calling="MODALITY", check: bool = True) -> list[dict]:
    """Run tests/peers/mpps-scu.js with ``script``; return one result per request."""
    require_node_peers()
    path = Path(workdir) / f"scu-{time.monotonic_ns()}.json"
    path.write_text(json.dumps(script))
    prefix = ns.prefix() if ns is not None else []
    r = subprocess.run([*prefix, "node", str(PEERS / "mpps-scu.js"), "127.0.0.1", str(port),
                        called, calling, str(path)], capture_output=True, text=True,
                       timeout=120)
    if check:
        assert r.returncode == 0, r.stdout + r.stderr
    return [json.loads(line) if line != "null" else None for line in r.stdout.splitlines()]


def plain(value):
    """A dcmjs naturalized value without its bookkeeping (``_vrMap``), person names
    as strings."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items() if k != "_vrMap"}
    if isinstance(value, list):
        if len(value) == 1 and isinstance(value[0], dict) and set(value[0]) == {"Alphabetic"}:
            return value[0]["Alphabetic"]
        return [plain(v) for v in value]
    return value


def cli(config: Path, *args, ns=None) -> subprocess.CompletedProcess:
    return subprocess.run([*DICOMBOX, "--config", str(config), *args], capture_output=True,
                          text=True, timeout=60)


# -- datasets (dcmjs "naturalized" JSON) --------------------------------------------

def n_create(study_uid: str = "1.2.826.0.1.3680043.8.498.1", accession: str = "ACC1",
             patient_id: str = "PID1", **override) -> dict:
    """A complete N-CREATE Attribute List (IN PROGRESS), Table F.7.2-1."""
    ds = {
        # dcmjs encodes text as UTF-8 whatever the dataset says: declare it.
        "SpecificCharacterSet": "ISO_IR 192",
        "ScheduledStepAttributesSequence": [{
            "StudyInstanceUID": study_uid,
            "ReferencedStudySequence": [],
            "AccessionNumber": accession,
            "RequestedProcedureID": "RP1",
            "RequestedProcedureDescription": "CT CHEST",
            "ScheduledProcedureStepID": "SPS1",
            "ScheduledProcedureStepDescription": "CT CHEST W/O",
            "ScheduledProtocolCodeSequence": [],
        }],
        "PatientName": "Müller^Jürgen",
        "PatientID": patient_id,
        "PatientBirthDate": "19700101",
        "PatientSex": "M",
        "ReferencedPatientSequence": [],
        "PerformedProcedureStepID": "PPS1",
        "PerformedStationAETitle": "MODALITY",
        "PerformedStationName": "CT1",
        "PerformedLocation": "ROOM 1",
        "PerformedProcedureStepStartDate": "20240102",
        "PerformedProcedureStepStartTime": "101500",
        "PerformedProcedureStepStatus": "IN PROGRESS",
        "PerformedProcedureStepDescription": "CT CHEST",
        "PerformedProcedureTypeDescription": "",
        "ProcedureCodeSequence": [],
        "PerformedProcedureStepEndDate": "",
        "PerformedProcedureStepEndTime": "",
        "Modality": "CT",
        "StudyID": "S1",
        "PerformedProtocolCodeSequence": [],
        "PerformedSeriesSequence": [],
    }
    ds.update(override)
    return ds


def series_item(series_uid: str, instances: list[tuple[str, str]]) -> dict:
    return {
        "PerformingPhysicianName": "DR^WHO",
        "ProtocolName": "CHEST",
        "OperatorsName": "TECH^ONE",
        "SeriesInstanceUID": series_uid,
        "SeriesDescription": "AXIAL",
        "RetrieveAETitle": "",
        "ReferencedImageSequence": [
            {"ReferencedSOPClassUID": c, "ReferencedSOPInstanceUID": i} for c, i in instances],
        "ReferencedNonImageCompositeSOPInstanceSequence": [],
    }


def n_set_completed(series: list[dict] | None = None, status: str = "COMPLETED") -> dict:
    return {
        "PerformedProcedureStepStatus": status,
        "PerformedProcedureStepEndDate": "20240102",
        "PerformedProcedureStepEndTime": "103000",
        "PerformedSeriesSequence": series if series is not None else [
            series_item("1.2.826.0.1.3680043.8.498.2", [
                ("1.2.840.10008.5.1.4.1.1.2", "1.2.826.0.1.3680043.8.498.3")])],
    }
