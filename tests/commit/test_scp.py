"""Storage commitment in local mode, with modalities that keep their association
open for the report and modalities that listen for it on a new association."""

import json
import socket
import subprocess
import warnings

import pytest
from commitpeers import (
    CommitSCU,
    action_dataset,
    listener_fixture,  # noqa: F401 - provides the `listener` fixture
    refs_of,
    requests_table,
    router_port,
    store,
    wait_until,
)
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from datagen import ct_series, sr_document
from helpers import DICOMBOX, require, write_config

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    require("storescu")
    d = tmp_path_factory.mktemp("commit-data")
    return ct_series(d / "ct", 3) + [sr_document(d / "sr")]


def test_report_on_the_open_association(box, files):
    router = box("router", commitment={"local_timeout": 1.0})
    port = router_port(router)
    store(port, files)
    scu = CommitSCU(port)
    refs = refs_of(files)
    status, report = scu.request(action_dataset(refs), wait=30)
    assert status.Status == 0x0000
    assert report is not None, router.output()[-2000:]
    assert report.event_type == 1
    assert report.class_uid == "1.2.840.10008.1.20.1"
    assert report.instance_uid == "1.2.840.10008.1.20.1.1"
    assert report.committed == refs and report.failed == {}

    unknown = (CT, generate_uid())
    status, report = scu.request(action_dataset([refs[0], unknown]), wait=30)
    assert status.Status == 0x0000
    assert report.event_type == 2
    assert report.committed == [refs[0]]
    assert report.failed == {unknown[1]: 0x0112}


def test_class_mismatch_is_0119(box, files):
    router = box("router", commitment={"local_timeout": 1.0})
    port = router_port(router)
    store(port, files[:1])
    cls, inst = refs_of(files[:1])[0]
    status, report = CommitSCU(port).request(action_dataset([(MR, inst)]), wait=30)
    assert status.Status == 0x0000
    assert report.event_type == 2 and report.failed == {inst: 0x0119}
    assert report.committed == []


def test_new_association_with_role_selection(box, files, listener, tmp_path):
    """The modality releases right after the N-ACTION: the report comes on a new
    association to its address from [[remote_aes]], the box proposing the SCP role."""
    modality = listener(aet="MODALITY")
    # Reports always on a new association, so that every one is counted here
    # (on the requester's association they would race its release).
    router = box("router", commitment={"same_association": False},
                 remote_aes=[{"ae_title": "MODALITY", "host": "127.0.0.1",
                              "port": modality.port}])
    port = router_port(router)
    store(port, files)
    refs = refs_of(files)
    ds = action_dataset(refs)
    status, same = CommitSCU(port).request(ds)
    assert status.Status == 0x0000 and same is None
    report = modality.wait_for(ds.TransactionUID, 60)
    assert report is not None, router.output()[-2000:]
    assert report.event_type == 1 and report.committed == refs
    assert report.calling_aet == "DICOMBOX"
    assert report.role_selection == {"1.2.840.10008.1.20.1": (False, True)}
    row = wait_until(lambda: next((r for r in requests_table(tmp_path / "state")
                                   if r["state"] == "reported"), None), 30)
    assert row["reported_via"] == "new association"


def test_same_association_off_reports_on_a_new_one(box, files, listener):
    modality = listener(aet="MODALITY")
    router = box("router", commitment={"same_association": False},
                 remote_aes=[{"ae_title": "MODALITY", "host": "127.0.0.1",
                              "port": modality.port, "role_selection": False}])
    port = router_port(router)
    store(port, files[:1])
    ds = action_dataset(refs_of(files[:1]))
    scu = CommitSCU(port)
    got = {}
    status, _ = scu.request(ds, hold=lambda: got.update(r=modality.wait_for(
        ds.TransactionUID, 60)))
    assert status.Status == 0x0000
    assert got["r"] is not None and got["r"].event_type == 1
    assert got["r"].role_selection == {}
    assert scu.reports == []


def _without(ds: Dataset, keyword: str) -> Dataset:
    delattr(ds, keyword)
    return ds


def _bad_item(ds: Dataset) -> Dataset:
    del ds.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
    return ds


def _set(ds: Dataset, keyword: str, value) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns of the invalid UID we want to send
        setattr(ds, keyword, value)
    return ds


BAD = [
    ("no Transaction UID", lambda ds: _without(ds, "TransactionUID"), {}, 0x0120),
    ("empty Transaction UID", lambda ds: _set(ds, "TransactionUID", ""), {}, 0x0121),
    ("invalid Transaction UID", lambda ds: _set(ds, "TransactionUID", "1.2.abc"), {}, 0x0106),
    ("no Referenced SOP Sequence", lambda ds: _without(ds, "ReferencedSOPSequence"), {},
     0x0120),
    ("empty Referenced SOP Sequence", lambda ds: _set(ds, "ReferencedSOPSequence", []), {},
     0x0121),
    ("item without instance UID", _bad_item, {}, 0x0120),
    ("no Action Information", lambda ds: None, {}, 0x0120),
    ("action type 2", lambda ds: ds, {"action_type": 2}, 0x0123),
    ("other SOP instance", lambda ds: ds, {"instance_uid": "1.2.3.4"}, 0x0112),
    ("too many references", lambda ds: action_dataset([(CT, generate_uid())] * 3), {},
     0x0213),
]


def test_bad_requests_get_a_status_and_leave_nothing(box, tmp_path):
    router = box("router", commitment={"max_references": 2})
    port = router_port(router)
    scu = CommitSCU(port)
    for name, change, kw, expected in BAD:
        ds = change(action_dataset([(CT, generate_uid())]))
        status, _ = scu.request(ds, **kw)
        assert status.Status == expected, name
        assert "ErrorComment" in status, name
    assert requests_table(tmp_path / "state") == []
    # Still serving: a good request after all the bad ones is accepted.
    status, _ = scu.request(action_dataset([(CT, generate_uid())]))
    assert status.Status == 0x0000
    assert len(requests_table(tmp_path / "state")) == 1


def test_same_request_again_is_reported_again(box, files, listener, tmp_path):
    """A modality that missed the report asks again with the same Transaction UID:
    one request, reported twice.  Other references under that UID fail with 0131H."""
    modality = listener(aet="MODALITY")
    # Reports always on a new association, so that every one is counted here
    # (on the requester's association they would race its release).
    router = box("router", commitment={"same_association": False},
                 remote_aes=[{"ae_title": "MODALITY", "host": "127.0.0.1",
                              "port": modality.port}])
    port = router_port(router)
    store(port, files)
    refs = refs_of(files)
    ds = action_dataset(refs)
    scu = CommitSCU(port)
    assert scu.request(ds)[0].Status == 0
    assert modality.wait_for(ds.TransactionUID, 60) is not None
    assert scu.request(action_dataset(refs, ds.TransactionUID))[0].Status == 0
    assert wait_until(lambda: len(modality.reports) == 2, 60)
    assert modality.reports[1].event_type == 1
    rows = requests_table(tmp_path / "state")
    assert len(rows) == 1
    assert scu.request(action_dataset(refs[:1], ds.TransactionUID))[0].Status == 0
    assert wait_until(lambda: len(modality.reports) == 3, 60)
    third = modality.reports[2]
    assert third.event_type == 2 and third.failed == {refs[0][1]: 0x0131}
    assert third.committed == []


def test_report_retried_across_a_restart_until_the_modality_listens(box, files, listener, tmp_path):
    # The modality's port is held (bound, not listening) so that nothing else
    # takes it: every attempt meets a refused connection until it listens.
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    port_of_modality = holder.getsockname()[1]
    router = box("router", commitment={"report_retry": 0.2, "report_retry_max": 0.5},
                 remote_aes=[{"ae_title": "MODALITY", "host": "127.0.0.1",
                              "port": port_of_modality}])
    port = router_port(router)
    store(port, files[:1])
    ds = action_dataset(refs_of(files[:1]))
    assert CommitSCU(port).request(ds)[0].Status == 0
    state = tmp_path / "state"
    row = wait_until(lambda: next((r for r in requests_table(state)
                                   if r["report_attempts"] >= 2), None), 60)
    assert row is not None and row["state"] == "ready", \
        (requests_table(state), router.output()[-3000:])
    assert "cannot connect" in row["last_error"] or "association" in row["last_error"]
    # The queue of reports is on disk: a power cut does not lose the owed report.
    router.kill()
    holder.close()
    router = box("router", config=router.config)
    modality = listener(aet="MODALITY", port=port_of_modality)
    report = modality.wait_for(ds.TransactionUID, 60)
    assert report is not None and report.event_type == 1
    assert wait_until(lambda: requests_table(state)[0]["state"] == "reported", 30)


def test_restart_between_request_and_report(box, files, listener, tmp_path):
    """kill -9 after the N-ACTION was acknowledged and before its report: the
    restarted router still owes it and sends it."""
    modality = listener(aet="MODALITY")
    sections = {"commitment": {"local_timeout": 600},
                "remote_aes": [{"ae_title": "MODALITY", "host": "127.0.0.1",
                                "port": modality.port}]}
    router = box("router", **sections)
    port = router_port(router)
    ds = action_dataset(refs_of(files[:2]))
    assert CommitSCU(port).request(ds)[0].Status == 0
    assert requests_table(tmp_path / "state")[0]["state"] == "waiting"
    router.kill()
    router = box("router", config=router.config)
    store(port, files[:2])
    report = modality.wait_for(ds.TransactionUID, 60)
    assert report is not None, router.output()[-2000:]
    assert report.event_type == 1 and report.committed == refs_of(files[:2])


def _cli(config, *args):
    r = subprocess.run([*DICOMBOX, "--config", str(config), *args], capture_output=True,
                       text=True, timeout=60)
    assert "Traceback" not in r.stderr, r.stderr
    return r


def test_commit_list_and_show(box, files, tmp_path):
    r = _cli(write_config(tmp_path / "nothing"), "commit", "list")
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1
    router = box("router", commitment={"local_timeout": 600})
    port = router_port(router)
    store(port, files[:2])
    scu = CommitSCU(port)
    done = action_dataset(refs_of(files[:2]))
    assert scu.request(done, wait=30)[1].event_type == 1
    waiting = action_dataset(refs_of(files[:1]) + [(CT, generate_uid())])
    assert scu.request(waiting)[0].Status == 0
    assert wait_until(lambda: requests_table(tmp_path / "state")[-1]["committed"] == 1, 30)

    rows = json.loads(_cli(router.config, "commit", "list", "--json").stdout)
    assert [(r["transaction_uid"], r["state"], r["items"], r["committed"], r["failed"],
             r["pending"]) for r in rows] == [
        (done.TransactionUID, "reported", 2, 2, 0, 0),
        (waiting.TransactionUID, "waiting", 2, 1, 0, 1)]
    assert rows[0]["reported_via"] == "same association"
    only = json.loads(_cli(router.config, "commit", "list", "--state", "waiting",
                           "--json").stdout)
    assert [r["transaction_uid"] for r in only] == [waiting.TransactionUID]

    text = _cli(router.config, "commit", "list").stdout
    assert "reported" in text and "waiting" in text and waiting.TransactionUID in text

    shown = json.loads(_cli(router.config, "commit", "show", waiting.TransactionUID,
                            "--json").stdout)
    assert [i["state"] for i in shown["instances"]] == ["committed", "pending"]
    r = _cli(router.config, "commit", "show", "1.2.3")
    assert r.returncode != 0 and "no storage commitment request 1.2.3" in r.stderr
