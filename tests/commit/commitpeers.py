"""Peers for the storage commitment tests.

Orthanc plays the modality (SCU) and the committing PACS (SCP); where no
independent tool can play a role (an SCU that keeps its association open
for the report, a modality listening for reports with role selection), a
pynetdicom peer does.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt

from helpers import dcmtk

SC_PUSH = "1.2.840.10008.1.20.1"
SC_INSTANCE = "1.2.840.10008.1.20.1.1"


def refs_of(files) -> list[tuple[str, str]]:
    """(SOP Class UID, SOP Instance UID) of each file."""
    out = []
    for f in files:
        ds = dcmread(f, stop_before_pixels=True)
        out.append((str(ds.SOPClassUID), str(ds.SOPInstanceUID)))
    return out


def action_dataset(refs, transaction_uid: str | None = None) -> Dataset:
    ds = Dataset()
    ds.TransactionUID = transaction_uid or generate_uid()
    items = []
    for cls, inst in refs:
        item = Dataset()
        item.ReferencedSOPClassUID = cls
        item.ReferencedSOPInstanceUID = inst
        items.append(item)
    ds.ReferencedSOPSequence = items
    return ds


def store(port, files, aet="MODALITY"):
    r = dcmtk("storescu", "-aet", aet, "-aec", "DICOMBOX", "127.0.0.1", port, *files)
    assert r.returncode == 0, r.stdout + r.stderr


class Report:
    """An N-EVENT-REPORT as the modality received it."""

    def __init__(self, event, via: str):
        self.event_type = event.request.EventTypeID
        self.class_uid = str(event.request.AffectedSOPClassUID)
        self.instance_uid = str(event.request.AffectedSOPInstanceUID)
        ds = event.event_information
        self.transaction_uid = str(ds.TransactionUID)
        self.committed = [(str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID))
                          for i in ds.get("ReferencedSOPSequence", [])]
        self.failed = {str(i.ReferencedSOPInstanceUID): int(i.FailureReason)
                       for i in ds.get("FailedSOPSequence", [])}
        self.via = via
        self.calling_aet = event.assoc.requestor.ae_title
        self.role_selection = {
            str(uid): (item.scu_role, item.scp_role)
            for uid, item in event.assoc.requestor.role_selection.items()}


class CommitSCU:
    """A modality that sends N-ACTION and may keep its association open for the
    report (pynetdicom: no independent tool does that)."""

    def __init__(self, port: int, aet: str = "MODALITY"):
        self.port = port
        self.aet = aet
        self.reports: list[Report] = []
        self._cond = threading.Condition()

    def _on_report(self, event):
        with self._cond:
            self.reports.append(Report(event, "same association"))
            self._cond.notify_all()
        return 0x0000, None

    def request(self, dataset: Dataset | None, wait: float = 0.0, action_type: int = 1,
                instance_uid: str = SC_INSTANCE, hold=None):
        """Send one N-ACTION; keep the association open up to ``wait`` seconds for the
        report on it (or while ``hold()`` runs).  Returns (status, report or None)."""
        ae = AE(ae_title=self.aet)
        ae.add_requested_context(SC_PUSH, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        assoc = ae.associate("127.0.0.1", self.port, ae_title="DICOMBOX",
                             evt_handlers=[(evt.EVT_N_EVENT_REPORT, self._on_report)])
        assert assoc.is_established
        try:
            status, _ = assoc.send_n_action(dataset, action_type, SC_PUSH, instance_uid)
            report = None
            if wait and status.Status == 0:
                report = self.wait_for(dataset.TransactionUID, wait)
            if hold is not None:
                hold()
            return status, report
        finally:
            assoc.release()

    def wait_for(self, transaction_uid: str, timeout: float) -> Report | None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for r in self.reports:
                    if r.transaction_uid == transaction_uid:
                        return r
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)


class ReportListener:
    """A modality listening for reports on new associations (pynetdicom, bound to
    127.0.0.1 only), accepting the box's SCP role through role selection."""

    def __init__(self, aet: str = "MODALITY", port: int = 0):
        self.aet = aet
        self.reports: list[Report] = []
        self._cond = threading.Condition()
        ae = AE(ae_title=aet)
        ae.add_supported_context(SC_PUSH, [ExplicitVRLittleEndian, ImplicitVRLittleEndian],
                                 scu_role=True, scp_role=True)
        self.server = ae.start_server(("127.0.0.1", port), block=False,
                                      evt_handlers=[(evt.EVT_N_EVENT_REPORT, self._on_report)])
        self.port = self.server.server_address[1]

    def _on_report(self, event):
        with self._cond:
            self.reports.append(Report(event, "new association"))
            self._cond.notify_all()
        return 0x0000, None

    def wait_for(self, transaction_uid: str, timeout: float = 60) -> Report | None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for r in self.reports:
                    if r.transaction_uid == transaction_uid:
                        return r
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    def stop(self):
        self.server.shutdown()


def router_port(router) -> int:
    text = router.config.read_text()
    return int(text.split("[router]")[1].split("port = ")[1].split()[0])


def requests_table(state: Path) -> list[dict]:
    conn = sqlite3.connect(state / "router" / "index.db")
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM commit_requests ORDER BY id")]
    finally:
        conn.close()


def wait_until(predicate, timeout: float = 60, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


# -- Orthanc as the Storage Commitment SCU --------------------------------------

def ask(orthanc, refs) -> str:
    """POST /modalities/box/storage-commitment and poll until Orthanc has the report."""
    job = orthanc.post("/modalities/box/storage-commitment", {
        "DicomInstances": [{"SOPClassUID": c, "SOPInstanceUID": i} for c, i in refs],
        "Timeout": 30})
    return job["ID"]


def result(orthanc, job_id: str, timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        report = orthanc.get(f"/storage-commitment/{job_id}")
        if report["Status"] != "Pending" or time.monotonic() > deadline:
            return report
        time.sleep(0.2)


def committed(report) -> list[tuple[str, str]]:
    return [(s["SOPClassUID"], s["SOPInstanceUID"]) for s in report.get("Success", [])]


def failures(report) -> dict[str, int]:
    return {f["SOPInstanceUID"]: f["FailureReason"] for f in report.get("Failures", [])}


@pytest.fixture(name="listener")
def listener_fixture():
    """Start pynetdicom report listeners; each is stopped in teardown.

    (Here rather than in a conftest.py of this folder, where a second module
    named ``conftest`` would shadow the suite's own; test modules import
    ``listener_fixture``.)
    """
    started = []

    def start(**kw):
        lst = ReportListener(**kw)
        started.append(lst)
        return lst

    yield start
    for lst in started:
        lst.stop()
