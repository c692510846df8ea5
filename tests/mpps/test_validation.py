"""Every invalid MPPS sequence gets its standard status, seen from dcmjs-dimse."""

import sqlite3

import pytest
from mppskit import mpps_port, n_create, n_set_completed, send_mpps, series_item
from pydicom.dataset import Dataset

from dicombox.mpps import model

UID = "1.2.826.0.1.3680043.8.498.100"


def _ds(**kw) -> Dataset:
    ds = Dataset()
    for k, v in kw.items():
        setattr(ds, k, v)
    return ds


# -- the state machine itself ----------------------------------------------------------

def test_transition_table_is_complete():
    states = (model.ABSENT, model.IN_PROGRESS, model.COMPLETED, model.DISCONTINUED)
    requested = (model.NOT_GIVEN, model.IN_PROGRESS, model.COMPLETED, model.DISCONTINUED,
                 model.OTHER)
    for s in states:
        for op in (model.N_CREATE, model.N_SET):
            for r in requested:
                assert (s, op, r) in model.TRANSITIONS


@pytest.mark.parametrize("current,op,req,expected", [
    (model.ABSENT, model.N_CREATE, model.IN_PROGRESS, model.IN_PROGRESS),
    (model.ABSENT, model.N_CREATE, model.COMPLETED, 0x0106),
    (model.ABSENT, model.N_CREATE, model.NOT_GIVEN, 0x0106),
    (model.IN_PROGRESS, model.N_CREATE, model.IN_PROGRESS, 0x0111),
    (model.ABSENT, model.N_SET, model.COMPLETED, 0x0112),
    (model.IN_PROGRESS, model.N_SET, model.NOT_GIVEN, model.IN_PROGRESS),
    (model.IN_PROGRESS, model.N_SET, model.COMPLETED, model.COMPLETED),
    (model.IN_PROGRESS, model.N_SET, model.DISCONTINUED, model.DISCONTINUED),
    (model.IN_PROGRESS, model.N_SET, model.OTHER, 0x0106),
    (model.COMPLETED, model.N_SET, model.NOT_GIVEN, 0x0110),
    (model.DISCONTINUED, model.N_SET, model.COMPLETED, 0x0110),
])
def test_transitions(current, op, req, expected):
    outcome = model.TRANSITIONS[(current, op, req)]
    if isinstance(expected, int):
        assert outcome.status == expected
        if expected == 0x0110:
            assert outcome.error_id == 0xA710
    else:
        assert outcome.new_state == expected


def test_final_state_requirements():
    merged = _ds(PerformedProcedureStepStatus="COMPLETED", PerformedProcedureStepEndDate="",
                 PerformedProcedureStepEndTime="1030", PerformedSeriesSequence=[])
    v = model.check(model.IN_PROGRESS, model.N_SET, _ds(PerformedProcedureStepStatus="COMPLETED"),
                    merged)
    assert v.refusal.status == 0x0121 and v.refusal.tag == 0x00400250
    merged.PerformedProcedureStepEndDate = "20240102"
    v = model.check(model.IN_PROGRESS, model.N_SET, _ds(PerformedProcedureStepStatus="COMPLETED"),
                    merged)
    assert v.refusal.status == 0x0121 and v.refusal.tag == 0x00400340
    del merged.PerformedSeriesSequence
    v = model.check(model.IN_PROGRESS, model.N_SET, _ds(PerformedProcedureStepStatus="COMPLETED"),
                    merged)
    assert v.refusal.status == 0x0120 and v.refusal.tag == 0x00400340


def test_not_allowed_change_only_when_the_value_differs():
    current = _ds(PatientID="P1", Modality="CT")
    assert model.not_allowed_change(current, _ds(PatientID="P1")) is None
    refusal = model.not_allowed_change(current, _ds(PatientID="P2"))
    assert refusal.status == 0x0106 and refusal.tag == 0x00100020


# -- against the running service ---------------------------------------------------------

def _status(result):
    return result["status"], result["command"].get("AttributeIdentifierList")


def test_invalid_sequences_get_their_standard_status(box, tmp_path):
    proc = box("mpps")
    port = mpps_port(proc)
    other = "1.2.826.0.1.3680043.8.498.101"
    script = [
        # N-CREATE with a status other than IN PROGRESS: 0106 naming (0040,0252)
        {"op": "create", "uid": other,
         "dataset": n_create(PerformedProcedureStepStatus="COMPLETED")},
        # missing Type 1 attribute: 0120 naming Modality (0008,0060)
        {"op": "create", "uid": other, "dataset": {k: v for k, v in n_create().items()
                                                    if k != "Modality"}},
        # missing Type 2 attribute: 0120 naming Patient ID (0010,0020)
        {"op": "create", "uid": other, "dataset": {k: v for k, v in n_create().items()
                                                    if k != "PatientID"}},
        # N-SET of an unknown instance: 0112
        {"op": "set", "uid": other, "dataset": n_set_completed()},
        # a valid N-CREATE, then the same UID again: 0111
        {"op": "create", "uid": UID, "dataset": n_create()},
        {"op": "create", "uid": UID, "dataset": n_create()},
        # COMPLETED without the final-state attributes: 0121 naming the end date
        {"op": "set", "uid": UID, "dataset": {"PerformedProcedureStepStatus": "COMPLETED"}},
        # an N-SET changing the patient: 0106 naming Patient ID
        {"op": "set", "uid": UID, "dataset": {"PatientID": "SOMEONE ELSE"}},
        # an unknown status value: 0106
        {"op": "set", "uid": UID, "dataset": {"PerformedProcedureStepStatus": "PAUSED"}},
        # the valid completion, then any N-SET: 0110 with Error ID A710
        {"op": "set", "uid": UID, "dataset": n_set_completed()},
        {"op": "set", "uid": UID, "dataset": {"PerformedProcedureStepDescription": "late"}},
    ]
    r = send_mpps(port, script, tmp_path)
    assert _status(r[0]) == (0x0106, 0x00400252)
    assert r[0]["dataset"]["PerformedProcedureStepStatus"] == "COMPLETED"
    assert _status(r[1]) == (0x0120, 0x00080060)
    assert _status(r[2]) == (0x0120, 0x00100020)
    assert r[3]["status"] == 0x0112
    assert r[4]["status"] == 0x0000
    assert r[5]["status"] == 0x0111
    assert _status(r[6]) == (0x0121, 0x00400250)
    assert _status(r[7]) == (0x0106, 0x00100020)
    assert _status(r[8]) == (0x0106, 0x00400252)
    assert r[9]["status"] == 0x0000
    assert r[10]["status"] == 0x0110
    assert r[10]["command"]["ErrorID"] == 0xA710
    assert r[10]["command"]["ErrorComment"] == \
        "Performed Procedure Step Object may no longer be updated"
    # Only the accepted requests are journaled.
    conn = sqlite3.connect(tmp_path / "state" / "mpps" / "index.db")
    ops = conn.execute("SELECT operation, state_after FROM messages ORDER BY id").fetchall()
    assert ops == [("N-CREATE", "IN PROGRESS"), ("N-SET", "COMPLETED")]
    assert conn.execute("SELECT state FROM steps").fetchall() == [("COMPLETED",)]


def test_discontinued_needs_its_attributes_too_and_is_final(box, tmp_path):
    proc = box("mpps")
    r = send_mpps(mpps_port(proc), [
        {"op": "create", "uid": UID, "dataset": n_create()},
        {"op": "set", "uid": UID, "dataset": n_set_completed(series=[], status="DISCONTINUED")},
        {"op": "set", "uid": UID, "dataset": n_set_completed(
            series=[series_item("1.2.3.4", [])], status="DISCONTINUED")},
        {"op": "set", "uid": UID, "dataset": n_set_completed(status="COMPLETED")},
    ], tmp_path)
    assert [x["status"] for x in r] == [0, 0x0121, 0, 0x0110]


def test_type2_can_be_relaxed_and_uid_assigned_by_the_scp(box, tmp_path):
    proc = box("mpps", mpps={"require_type2": False})
    lean = {k: v for k, v in n_create().items() if k not in ("PatientID", "StudyID")}
    r = send_mpps(mpps_port(proc), [{"op": "create", "uid": "", "dataset": lean}], tmp_path)
    assert r[0]["status"] == 0
    created = r[0]["command"]["AffectedSOPInstanceUID"]
    conn = sqlite3.connect(tmp_path / "state" / "mpps" / "index.db")
    assert conn.execute("SELECT sop_instance_uid FROM steps").fetchall() == [(created,)]
