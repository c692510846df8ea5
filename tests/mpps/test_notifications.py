"""Study-arrived notifications: DCMTK storescu sends a study to the router; the
mpps service tells the RIS (a pynetdicom IAN SCP, or DCMTK storescp for the
Basic Study Content Notification) exactly which instances arrived."""

import json
import sqlite3
import threading

import pytest
from mppskit import (
    cli,
    mpps_port,
    n_create,
    n_set_completed,
    require,
    router_port,
    send_mpps,
    series_item,
    wait_for,
)
from pydicom import dcmread
from pynetdicom import AE, evt

from datagen import cr_image, ct_series
from helpers import dcmtk, free_port
from peers import StoreSCP

IAN = "1.2.840.10008.5.1.4.33"


class IanRis:
    """A RIS accepting Instance Availability Notifications (pynetdicom: no
    independent IAN SCP exists in Debian or npm)."""

    def __init__(self):
        self.received: list = []
        self._lock = threading.Lock()
        self.ae = AE(ae_title="RIS")
        self.ae.add_supported_context(IAN)
        self.port = free_port()
        self.server = self.ae.start_server(
            ("127.0.0.1", self.port), block=False,
            evt_handlers=[(evt.EVT_N_CREATE, self._on_create)])

    def _on_create(self, event):
        ds = event.attribute_list
        with self._lock:
            self.received.append((str(event.request.AffectedSOPInstanceUID), ds,
                                  event.assoc.requestor.ae_title))
        return 0x0000, None

    def stop(self):
        self.server.shutdown()


@pytest.fixture
def ris():
    peer = IanRis()
    yield peer
    peer.stop()


def notifications(port, **kw):
    return {"notifications": {"enabled": True, "ae_title": "RIS", "host": "127.0.0.1",
                              "port": port, "poll_seconds": 0.3, **kw},
            "retry_initial_seconds": 0.2, "retry_max_seconds": 1.0}


def sent_instances(files):
    out = {}
    for f in files:
        ds = dcmread(f, stop_before_pixels=True)
        out.setdefault(ds.SeriesInstanceUID, set()).add((ds.SOPClassUID, ds.SOPInstanceUID))
    return out


def listed(ian):
    return {s.SeriesInstanceUID: {(r.ReferencedSOPClassUID, r.ReferencedSOPInstanceUID)
                                  for r in s.ReferencedSOPSequence}
            for s in ian.ReferencedSeriesSequence}


def storescu(router, files):
    r = dcmtk("storescu", "-aec", "DICOMBOX", "127.0.0.1", router_port(router), *files)
    assert r.returncode == 0, r.stdout + r.stderr


def test_ian_lists_exactly_the_study_received_by_the_router(box, ris, tmp_path):
    require("storescu")
    files = ct_series(tmp_path / "ct", 3)
    study = dcmread(files[0]).StudyInstanceUID
    files.append(cr_image(tmp_path / "cr", study=study))
    other = ct_series(tmp_path / "other", 1)
    mpps = box("mpps", mpps=notifications(ris.port, quiet_seconds=1))
    router = box("router", config=mpps.config)
    storescu(router, files + other)
    wait_for(lambda: len(ris.received) >= 2, 60, "two notifications")
    by_study = {ds.StudyInstanceUID: (uid, ds, aet) for uid, ds, aet in ris.received}
    _, ian, calling = by_study[study]
    assert calling.strip() == "DICOMBOX_PPS"
    assert listed(ian) == sent_instances(files)
    assert listed(by_study[dcmread(other[0]).StudyInstanceUID][1]) == sent_instances(other)
    for s in ian.ReferencedSeriesSequence:
        for r in s.ReferencedSOPSequence:
            assert r.InstanceAvailability == "ONLINE"
            assert r.RetrieveAETitle == "DICOMBOX"
    assert "PatientID" not in ian  # optional attributes are forbidden in an IAN
    rows = json.loads(cli(mpps.config, "mpps", "list", "--notifications", "--json").stdout)
    assert {r["state"] for r in rows} == {"done"} and len(rows) == 2


def test_ian_when_the_completed_procedure_step_has_all_its_instances(box, ris, tmp_path):
    require("storescu")
    files = ct_series(tmp_path / "ct", 2)
    first, second = (dcmread(f, stop_before_pixels=True) for f in files)
    mpps = box("mpps", mpps=notifications(ris.port, quiet_seconds=3600))
    router = box("router", config=mpps.config)
    step = "1.2.826.0.1.3680043.8.498.401"
    series = [series_item(first.SeriesInstanceUID, [(d.SOPClassUID, d.SOPInstanceUID)
                                                    for d in (first, second)])]
    r = send_mpps(mpps_port(mpps), [
        {"op": "create", "uid": step, "dataset": n_create(study_uid=first.StudyInstanceUID)},
        {"op": "set", "uid": step, "dataset": n_set_completed(series)},
    ], tmp_path)
    assert [x["status"] for x in r] == [0, 0]
    storescu(router, files[:1])
    state = tmp_path / "state" / "mpps" / "index.db"
    wait_for(lambda: sqlite3.connect(state).execute(
        "SELECT 1 FROM watched_studies").fetchone(), 60, "the study to be seen")
    assert not ris.received  # one referenced instance is still missing
    storescu(router, files[1:])
    wait_for(lambda: ris.received, 60, "the notification")
    _, ian, _ = ris.received[0]
    assert listed(ian) == sent_instances(files)
    pps = ian.ReferencedPerformedProcedureStepSequence
    assert [p.ReferencedSOPInstanceUID for p in pps] == [step]
    assert pps[0].ReferencedSOPClassUID == "1.2.840.10008.3.1.2.3.3"


def test_ris_down_then_up_gets_the_notification(box, tmp_path):
    require("storescu")
    port = free_port()
    mpps = box("mpps", mpps=notifications(port, quiet_seconds=1))
    router = box("router", config=mpps.config)
    files = ct_series(tmp_path / "ct", 2)
    storescu(router, files)

    def failed_once():
        rows = json.loads(cli(mpps.config, "mpps", "list", "--notifications",
                              "--json").stdout)
        return rows and rows[0]["attempts"] >= 1 and rows[0]

    row = wait_for(failed_once, 60, "a failed attempt")
    assert row["state"] == "pending" and "cannot associate" in row["last_error"]
    mpps.kill()  # and the queue survives a crash
    box("mpps", config=mpps.config)
    peer = IanRis.__new__(IanRis)
    peer.received, peer._lock = [], threading.Lock()
    peer.ae = AE(ae_title="RIS")
    peer.ae.add_supported_context(IAN)
    peer.port = port
    peer.server = peer.ae.start_server(("127.0.0.1", port), block=False,
                                       evt_handlers=[(evt.EVT_N_CREATE, peer._on_create)])
    try:
        wait_for(lambda: peer.received, 60, "the notification after the RIS came up")
        assert listed(peer.received[0][1]) == sent_instances(files)
    finally:
        peer.stop()


SCN_PROFILE = """
[[TransferSyntaxes]]
[Uncompressed]
TransferSyntax1 = LocalEndianExplicit
TransferSyntax2 = LittleEndianImplicit

[[PresentationContexts]]
[StudyContent]
PresentationContext1 = 1.2.840.10008.1.9\\Uncompressed
PresentationContext2 = 1.2.840.10008.1.1\\Uncompressed

[[Profiles]]
[StudyContent]
PresentationContexts = StudyContent
"""


def test_basic_study_content_notification_to_storescp(box, netns, tmp_path):
    require("storescu", "storescp")
    # storescp accepts the (retired, non-storage) SCN SOP Class only through an
    # association configuration profile.
    cfg = tmp_path / "scn.cfg"
    cfg.write_text(SCN_PROFILE)
    scp = StoreSCP(netns, tmp_path / "ris", aet="RIS",
                   extra=["-xf", str(cfg), "StudyContent"]).start()
    try:
        mpps = box("mpps", netns=netns, mpps=notifications(scp.port, kind="scn",
                                                            quiet_seconds=1))
        router = box("router", config=mpps.config, netns=netns)
        files = ct_series(tmp_path / "ct", 2, patient=("Roe^Jane", "PID9"))
        r = netns.run("storescu", "-aec", "DICOMBOX", "127.0.0.1", router_port(router), *files)
        assert r.returncode == 0, r.stderr
        wait_for(scp.files, 60, "the study content notification")
        ds = dcmread(scp.files()[0])
        assert ds.SOPClassUID == "1.2.840.10008.1.9"
        assert ds.PatientID == "PID9" and ds.StudyInstanceUID == dcmread(files[0]).StudyInstanceUID
        got = {(i.ReferencedSOPClassUID, i.ReferencedSOPInstanceUID)
               for s in ds.ReferencedSeriesSequence for i in s.ReferencedImageSequence}
        assert got == set().union(*sent_instances(files).values())
    finally:
        scp.stop()
