"""Relay: dcmjs-dimse SCU -> the box -> two dcmjs-dimse SCPs, in order, intact;
a destination that is down queues without delaying the other; dead-letter and retry."""

import json

from mppskit import (
    cli,
    mpps_peers_fixture,  # noqa: F401 - the mpps_peers fixture
    mpps_port,
    n_create,
    n_set_completed,
    plain,
    send_mpps,
    wait_for,
)

from helpers import free_port

STEP_A = "1.2.826.0.1.3680043.8.498.201"
STEP_B = "1.2.826.0.1.3680043.8.498.202"


def destinations(filler_port, report_port, **report_options):
    return [
        {"name": "ris", "role": "order-filler", "ae_title": "RIS", "host": "127.0.0.1",
         "port": filler_port},
        {"name": "reports", "role": "report-manager", "ae_title": "REPORTS",
         "host": "127.0.0.1", "port": report_port, **report_options},
    ]


def fast_retry(dests):
    return {"destinations": dests, "retry_initial_seconds": 0.2, "retry_max_seconds": 1.0}


def script_for(uid, accession="ACC1", private=False):
    create = n_create(accession=accession)
    if private:
        create["00091001"] = {"vr": "LO", "Value": ["vendor data"]}
    return [
        {"op": "create", "uid": uid, "dataset": create},
        {"op": "set", "uid": uid, "dataset": {"PerformedProcedureStepDescription": "CT CHEST+"}},
        {"op": "set", "uid": uid, "dataset": n_set_completed()},
    ]


def ops(peer, uid=None):
    return [(m["op"], m["uid"]) for m in peer.messages() if uid is None or m["uid"] == uid]


def test_relayed_in_order_to_both_destinations_attributes_intact(box, netns, mpps_peers,
                                                                 tmp_path):
    ris = mpps_peers(netns, tmp_path / "ris", "RIS")
    reports = mpps_peers(netns, tmp_path / "reports", "REPORTS")
    proc = box("mpps", netns=netns,
               mpps=fast_retry(destinations(ris.port, reports.port,
                                            remove=["PerformedLocation"])))
    sent = script_for(STEP_A)
    results = send_mpps(mpps_port(proc), sent, tmp_path, ns=netns)
    assert [r["status"] for r in results] == [0, 0, 0]
    expected = [("N-CREATE", STEP_A), ("N-SET", STEP_A), ("N-SET", STEP_A)]
    wait_for(lambda: len(ris.messages()) >= 3 and len(reports.messages()) >= 3, 60,
             "both destinations to receive the procedure step")
    assert ops(ris) == expected
    assert ops(reports) == expected
    for peer in (ris, reports):
        assert [m["status"] for m in peer.messages()] == [0, 0, 0]
        assert all(m["calling"] == "DICOMBOX_PPS" for m in peer.messages())
        for got, want in zip(peer.messages(), sent):
            ds = plain(got["dataset"])
            want = dict(want["dataset"])
            if peer is reports:
                want.pop("PerformedLocation", None)
            assert ds == want
    # The relay state is visible from the CLI.
    r = cli(proc.config, "mpps", "list", "--json")
    steps = json.loads(r.stdout)
    assert steps[0]["state"] == "COMPLETED"
    assert steps[0]["destinations"]["ris"] == {"done": 3, "pending": 0, "dead": 0,
                                               "last_error": ""}
    r = cli(proc.config, "mpps", "show", STEP_A)
    assert r.returncode == 0 and "Müller^Jürgen" in r.stdout


def test_first_destination_down_queues_and_the_second_is_not_delayed(box, netns, mpps_peers,
                                                                     tmp_path):
    down_port = free_port()
    reports = mpps_peers(netns, tmp_path / "reports", "REPORTS")
    proc = box("mpps", netns=netns, mpps=fast_retry(destinations(down_port, reports.port)))
    port = mpps_port(proc)
    send_mpps(port, script_for(STEP_A, "ACC1")[:2], tmp_path, ns=netns)
    send_mpps(port, script_for(STEP_B, "ACC2"), tmp_path, ns=netns)
    send_mpps(port, script_for(STEP_A, "ACC1")[2:], tmp_path, ns=netns)
    # Everything reaches the report manager while the order filler is still down.
    wait_for(lambda: len(reports.messages()) >= 6, 60, "the report manager")
    r = cli(proc.config, "mpps", "list", "--undelivered", "--json")
    pending = {s["sop_instance_uid"]: s["destinations"]["ris"] for s in json.loads(r.stdout)}
    assert pending[STEP_A]["pending"] == 3 and pending[STEP_B]["pending"] == 3
    assert "cannot connect" in pending[STEP_A]["last_error"] or \
        "association" in pending[STEP_A]["last_error"]
    # The order filler comes up: everything arrives, in order per procedure step.
    ris = mpps_peers(netns, tmp_path / "ris", "RIS", port=down_port)
    wait_for(lambda: len(ris.messages()) >= 6, 60, "the order filler")
    for uid in (STEP_A, STEP_B):
        assert ops(ris, uid) == [("N-CREATE", uid), ("N-SET", uid), ("N-SET", uid)]
        assert ops(reports, uid) == [("N-CREATE", uid), ("N-SET", uid), ("N-SET", uid)]
    assert all(m["status"] == 0 for m in ris.messages())


def test_permanent_refusal_goes_to_dead_letter_and_retry_sends_it(box, netns, mpps_peers,
                                                                  tmp_path):
    port = free_port()
    ris = mpps_peers(netns, tmp_path / "ris1", "RIS", port=port,
                     extra=["--fail-create", "0120"])
    proc = box("mpps", netns=netns, mpps=fast_retry(destinations(port, free_port())[:1]))
    send_mpps(mpps_port(proc), script_for(STEP_A), tmp_path, ns=netns)

    def dead():
        steps = json.loads(cli(proc.config, "mpps", "list", "--dead", "--json").stdout)
        return steps and steps[0]["destinations"]["ris"]["dead"] == 1 and steps[0]

    step = wait_for(dead, 60, "the N-CREATE to be dead-lettered")
    d = step["destinations"]["ris"]
    assert d["pending"] == 2  # the N-SETs wait behind their N-CREATE
    assert "0x0120" in d["last_error"]
    assert ops(ris) == [("N-CREATE", STEP_A)]
    out = cli(proc.config, "mpps", "show", STEP_A).stdout
    assert "dead-letter" in out and "0x0120" in out
    # The order filler is fixed; the operator retries.
    ris.stop()
    ris = mpps_peers(netns, tmp_path / "ris2", "RIS", port=port)
    r = cli(proc.config, "mpps", "retry", "--destination", "ris")
    assert r.returncode == 0 and "3 message(s)" in r.stdout
    wait_for(lambda: len(ris.messages()) >= 3, 60, "the retried messages")
    assert ops(ris) == [("N-CREATE", STEP_A), ("N-SET", STEP_A), ("N-SET", STEP_A)]
    r = cli(proc.config, "mpps", "retry", "--destination", "nowhere")
    assert r.returncode == 2 and "unknown destination" in r.stderr


PYNETDICOM_SCU = """
import sys
from pydicom.dataset import Dataset
from pynetdicom import AE
port, uid = int(sys.argv[1]), sys.argv[2]
ds = Dataset()
ds.SpecificCharacterSet = "ISO_IR 100"
ds.add_new(0x00090010, "LO", "ACME")
ds.add_new(0x00091001, "LO", "vendor data")
ae = AE(ae_title="MODALITY")
ae.add_requested_context("1.2.840.10008.3.1.2.3.3")
assoc = ae.associate("127.0.0.1", port, ae_title="DICOMBOX_PPS")
status, _ = assoc.send_n_create(ds, "1.2.840.10008.3.1.2.3.3", uid)
assoc.release()
print(f"{status.Status:04X}")
"""


def test_private_attributes_stripped_for_one_destination_only(box, netns, mpps_peers,
                                                              tmp_path):
    """dcmjs-dimse cannot send private attributes: a pynetdicom SCU plays the
    modality here (its N-CREATE is otherwise minimal: Type 2 not enforced)."""
    import sys

    ris = mpps_peers(netns, tmp_path / "ris", "RIS")
    reports = mpps_peers(netns, tmp_path / "reports", "REPORTS")
    proc = box("mpps", netns=netns,
               mpps={**fast_retry(destinations(ris.port, reports.port, strip_private=True)),
                     "require_type2": False})
    # The usual N-CREATE's text attributes, plus the private ones.
    base = n_create()
    code = PYNETDICOM_SCU.replace('ds.SpecificCharacterSet = "ISO_IR 100"\n', "".join(
        f"ds.{k} = {v!r}\n" for k, v in base.items()
        if isinstance(v, str) and k != "SpecificCharacterSet") +
        "ds.ScheduledStepAttributesSequence = [Dataset()]\n"
        "ds.ScheduledStepAttributesSequence[0].StudyInstanceUID = '1.2.3'\n")
    r = netns.run(sys.executable, "-c", code, mpps_port(proc), STEP_A)
    assert r.returncode == 0 and r.stdout.strip() == "0000", r.stdout + r.stderr
    wait_for(lambda: ris.messages() and reports.messages(), 60, "both destinations")
    assert any(k.upper().startswith("0009") for k in ris.messages()[0]["dataset"])
    assert not any(k.upper().startswith("0009") for k in reports.messages()[0]["dataset"])
    assert ris.messages()[0]["dataset"]["PatientID"] == "PID1"
    assert reports.messages()[0]["dataset"]["PatientID"] == "PID1"
