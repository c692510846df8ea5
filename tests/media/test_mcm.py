"""Media Creation Management SCP on the burner AE: DCMTK sends the instances, a
pynetdicom SCU (no independent Media Creation Management SCU exists in Debian) asks for
a disc of some of them, and the disc (an xorriso ``stdio:`` pseudo-drive) is read back."""

import tomllib

import pytest
from mediabox import (
    check_disc,
    cli,
    jobs,
    kill_hard,
    log_of,
    media_config,
    media_port,
    send,
    spool_rows,
    wait_for,
    wait_job,
)
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE

from datagen import ct_series
from helpers import require

MCM = "1.2.840.10008.5.1.1.33"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    require("storescu", "xorriso")
    return ct_series(tmp_path_factory.mktemp("mcm") / "ct", 6, rows=64, cols=64,
                     patient=("Burn^Request", "MCM1"))


class Scu:
    """One association to the burner AE proposing the Media Creation Management class."""

    def __init__(self, config, called="DICOMBOX_CD", port=None):
        ae = AE(ae_title="WORKSTATION")
        ae.add_requested_context(MCM)
        self.assoc = ae.associate("127.0.0.1", port or media_port(config), ae_title=called)

    def __enter__(self):
        assert self.assoc.is_established
        return self

    def __exit__(self, *exc):
        self.assoc.release()

    def create(self, ds, uid=None):
        status, attrs = self.assoc.send_n_create(ds, MCM, uid or generate_uid())
        return status, attrs

    def action(self, uid, action, info=None):
        status, _ = self.assoc.send_n_action(info, action, MCM, uid)
        return status

    def get(self, uid, tags=None):
        return self.assoc.send_n_get(tags or [], MCM, uid)


def request(files, profile=None, **attrs) -> Dataset:
    ds = Dataset()
    items = []
    for f in files:
        inst = dcmread(f, stop_before_pixels=True)
        item = Dataset()
        item.ReferencedSOPClassUID = inst.SOPClassUID
        item.ReferencedSOPInstanceUID = inst.SOPInstanceUID
        if profile:
            item.RequestedMediaApplicationProfile = profile
        items.append(item)
    if files:
        ds.ReferencedSOPSequence = items
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def execution(scu, uid) -> str:
    status, ds = scu.get(uid)
    assert status.Status == 0x0000
    return ds.ExecutionStatus


def config_for(tmp_path):
    # Grouping by study with a long idle time: received instances wait in their job
    # until a request takes them.
    return media_config(tmp_path, grouping="study", idle_seconds=3600, profile="STD-GEN-CD")


def test_create_initiate_burns_exactly_the_referenced_instances(box, tmp_path, study):
    config = config_for(tmp_path)
    state = tmp_path / "state"
    media = box("media", config=config)
    send(config, *study)
    wait_job(state, "collecting", box=media)
    chosen = study[1:4]
    uid = generate_uid()
    with Scu(config) as scu:
        status, attrs = scu.create(request(chosen, SpecificCharacterSet="ISO_IR 192",
                                           LabelText="Kopie für Müller",
                                           LabelUsingInformationExtractedFromInstances="YES",
                                           profile="STD-GEN-CD"),
                                   uid)
        assert status.Status == 0x0000
        assert attrs.ExecutionStatus == "IDLE"
        assert execution(scu, uid) == "IDLE"
        status = scu.action(uid, 1)
        assert status.Status == 0x0000
        # A second Initiate is refused (A510).
        assert scu.action(uid, 1).Status == 0xA510
        wait_for(lambda: execution(scu, uid) in ("DONE", "FAILURE"), 90, box=media)
        status, ds = scu.get(uid)
        assert ds.ExecutionStatus == "DONE" and ds.TotalNumberOfPiecesOfMediaCreated == 1
        assert ds.LabelText == "Kopie für Müller"
        # Only what was asked for.
        status, ds = scu.get(uid, [0x21000020])
        assert status.Status == 0x0000 and list(ds.keys()) == [0x00080005, 0x21000020]
        # Cancelling a finished request: C201.
        assert scu.action(uid, 2).Status == 0xC201
    [job] = [j for j in jobs(state) if j["group_kind"] == "request"]
    assert job["state"] == "done" and job["instances"] == 3
    wanted = {dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in chosen}
    assert {r["sop_instance_uid"] for r in spool_rows(state, job["id"])} == wanted
    _, fs = check_disc(tmp_path / "disc.iso", state, job["id"], tmp_path / "read")
    assert {i.SOPInstanceUID for i in fs} == wanted
    # The rest of the study stays in its own job, not burned.
    [rest] = [j for j in jobs(state) if j["group_kind"] == "study"]
    assert rest["state"] == "collecting" and rest["instances"] == 3


def test_cancel_before_and_bad_requests(box, tmp_path, study):
    config = config_for(tmp_path)
    state = tmp_path / "state"
    media = box("media", config=config, wait=True)
    send(config, *study[:2])
    wait_job(state, "collecting", box=media)
    uid = generate_uid()
    with Scu(config) as scu:
        assert scu.create(request(study[:2]), uid)[0].Status == 0x0000
        assert scu.action(uid, 2).Status == 0x0000
        wait_for(lambda: execution(scu, uid) == "FAILURE", 30, box=media)
        status, ds = scu.get(uid)
        assert ds.ExecutionStatusInfo == "CANCELLED"
        # Initiate after cancel: processing failure; unknown action type.
        assert scu.action(uid, 1).Status == 0x0110
        assert scu.action(uid, 7).Status == 0x0123
        # Unknown request.
        other = generate_uid()
        assert scu.get(other)[0].Status == 0x0112
        assert scu.action(other, 1).Status == 0x0112
        # A duplicate request UID.
        assert scu.create(request(study[:1]), uid)[0].Status == 0x0111
        # Unknown instance (never sent to the burner AE).
        unknown = request(study[:1])
        unknown.ReferencedSOPSequence[0].ReferencedSOPInstanceUID = generate_uid()
        status, _ = scu.create(unknown)
        assert status.Status == 0x0106 and "not received" in status.ErrorComment
        # Missing attributes.
        status, _ = scu.create(request([], LabelText="no instances"))
        assert status.Status == 0x0120 and "Referenced SOP Sequence" in status.ErrorComment
        empty = request([], LabelText="empty")
        empty.ReferencedSOPSequence = []
        assert scu.create(empty)[0].Status == 0x0121
        no_uid = request(study[:1])
        del no_uid.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        status, _ = scu.create(no_uid)
        assert status.Status == 0x0120 and "ReferencedSOPInstanceUID" in status.ErrorComment
        # Invalid values.
        bad = request(study[:1], LabelUsingInformationExtractedFromInstances="MAYBE")
        assert scu.create(bad)[0].Status == 0x0106
        bad = request(study[:1], RequestedMediaApplicationProfile="STD-GEN-DVD-J2K")
        assert scu.create(bad)[0].Status == 0x0106
        uid2 = generate_uid()
        assert scu.create(request(study[:1]), uid2)[0].Status == 0x0000
        copies = Dataset()
        copies.NumberOfCopies = 3
        assert scu.action(uid2, 1, copies).Status == 0x0106
        prio = Dataset()
        prio.RequestPriority = "URGENT"
        assert scu.action(uid2, 1, prio).Status == 0x0106
        assert execution(scu, uid2) == "IDLE"
        # A request whose job an operator deleted is gone.
        [job] = [j for j in jobs(state) if j["state"] == "cancelled"]
        cli(config, "media", "delete", job["id"])
        wait_for(lambda: scu.get(uid)[0].Status == 0x0112, 30, box=media)
    # Another called AE title on this port is rejected.
    scu = Scu(config, called="DICOMBOX")
    assert not scu.assoc.is_established
    assert media.proc.poll() is None
    # The router's AE does not offer the class: the association proposing only it fails.
    box("router", config=config)
    port = tomllib.loads(config.read_text())["router"]["port"]
    scu = Scu(config, called="DICOMBOX", port=port)
    assert not scu.assoc.is_established


def test_request_survives_kill_9(box, tmp_path, study):
    config = config_for(tmp_path)
    state = tmp_path / "state"
    media = box("media", config=config)
    send(config, *study)
    wait_job(state, "collecting", box=media)
    uid = generate_uid()
    with Scu(config) as scu:
        assert scu.create(request(study[:2]), uid)[0].Status == 0x0000
    kill_hard(media, str(tmp_path))
    media = box("media", config=config)
    with Scu(config) as scu:
        assert execution(scu, uid) == "IDLE"
        assert scu.action(uid, 1).Status == 0x0000
        wait_for(lambda: execution(scu, uid) == "DONE", 90, box=media)
    [job] = [j for j in jobs(state) if j["group_kind"] == "request"]
    assert job["instances"] == 2
    assert any("media creation request" in line for line in log_of(state, job["id"]))
    check_disc(tmp_path / "disc.iso", state, job["id"], tmp_path / "read")
