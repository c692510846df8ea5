"""Upstream mode with a destination that reports on the request's own association.

Orthanc always reports on a new association, so this destination is a
pynetdicom Storage and Storage Commitment SCP (no independent tool plays
this role): it commits what it received, except the instances it is told
to "lose", and sends its N-EVENT-REPORT on the association the box keeps
open (`keep_open`).
"""

import sqlite3
import threading
import time

from commitpeers import CommitSCU, action_dataset, refs_of, router_port, store, wait_until
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt

from conftest import require
from datagen import ct_series

CT = "1.2.840.10008.5.1.4.1.1.2"
SC_PUSH = "1.2.840.10008.1.20.1"


class CommittingPacs:
    def __init__(self, lose: set[str]):
        self.stored: set[str] = set()
        self.lose = lose
        self.requests: list[tuple[str, str]] = []  # (calling AE, Transaction UID)
        ae = AE(ae_title="PACS")
        ae.add_supported_context(CT, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        ae.add_supported_context(SC_PUSH, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        self.server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[
            (evt.EVT_C_STORE, self._store), (evt.EVT_N_ACTION, self._action)])
        self.port = self.server.server_address[1]

    def _store(self, event):
        self.stored.add(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    def _action(self, event):
        ds = event.action_information
        self.requests.append((event.assoc.requestor.ae_title, str(ds.TransactionUID)))
        report = Dataset()
        report.TransactionUID = ds.TransactionUID
        ok, failed = [], []
        for ref in ds.ReferencedSOPSequence:
            item = Dataset()
            item.ReferencedSOPClassUID = ref.ReferencedSOPClassUID
            item.ReferencedSOPInstanceUID = ref.ReferencedSOPInstanceUID
            uid = str(ref.ReferencedSOPInstanceUID)
            if uid in self.stored and uid not in self.lose:
                ok.append(item)
            else:
                item.FailureReason = 0x0112
                failed.append(item)
        if ok:
            report.ReferencedSOPSequence = ok
        if failed:
            report.FailedSOPSequence = failed
        assoc = event.assoc

        def send():
            time.sleep(0.3)  # after our N-ACTION response has gone out
            assoc.send_n_event_report(report, 2 if failed else 1, SC_PUSH,
                                      "1.2.840.10008.1.20.1.1")

        threading.Thread(target=send, daemon=True).start()
        return 0x0000, None

    def stop(self):
        self.server.shutdown()


def test_upstream_report_on_the_kept_association(box, tmp_path):
    require("storescu")
    files = ct_series(tmp_path / "ct", 3)
    refs = refs_of(files)
    lost = refs[2][1]
    pacs = CommittingPacs(lose={lost})
    try:
        router = box("router",
                     destinations=[{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1",
                                    "port": pacs.port}],
                     forwarding={"default_destinations": ["pacs"], "idle_poll": 0.5},
                     commitment={"mode": "upstream", "timeout": 120,
                                 "upstream": [{"destination": "pacs", "keep_open": 20}]})
        port = router_port(router)
        store(port, files)
        status, report = CommitSCU(port).request(action_dataset(refs), wait=60)
        assert status.Status == 0
        assert report is not None, router.output()[-3000:]
        assert report.event_type == 2
        assert sorted(report.committed) == sorted(r for r in refs if r[1] != lost)
        assert report.failed == {lost: 0x0110}
        assert pacs.requests and all(aet == "DICOMBOX" for aet, _ in pacs.requests)
        conn = sqlite3.connect(tmp_path / "state" / "router" / "index.db")
        try:
            answered = wait_until(lambda: conn.execute(
                "SELECT COUNT(*) FROM commit_upstream WHERE state = 'answered'"
            ).fetchone()[0], 30)
            assert answered == len(pacs.requests)
        finally:
            conn.close()
    finally:
        pacs.stop()
