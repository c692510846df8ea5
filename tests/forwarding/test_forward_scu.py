"""The synchronous Storage SCU the router forwards with, against real destinations.

Its encodings are checked against pynetdicom's (an independent implementation of
the same PS3.7 command sets); its behaviour against DCMTK storescp in the modes a
misbehaving PACS shows: refusing, aborting, answering late, small PDUs.
"""

from __future__ import annotations

import struct
import subprocess
import time
from io import BytesIO

import pytest
from fwdkit import (
    FAST,
    delivered,
    destination,
    queue_json,
    queue_rows,
    router_port,
    send,
    sop_uid,
    storescp_uids,
    wait_for,
)
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dicombox.router import scu
from dicombox.store import Database

from datagen import ct_series, tiny_instances

CT = "1.2.840.10008.5.1.4.1.1.2"


# -- encodings ------------------------------------------------------------------------


def _pynetdicom_command(primitive) -> bytes:
    """The command set pynetdicom sends for a DIMSE primitive (its own fragments joined)."""
    from pynetdicom.dimse_messages import C_STORE_RQ, C_STORE_RSP
    message = (C_STORE_RSP if primitive.MessageIDBeingRespondedTo is not None
               else C_STORE_RQ)()
    message.primitive_to_message(primitive)
    command = b""
    for pdata in message.encode_msg(1, 0):
        for _, pdv in pdata.presentation_data_value_list:
            if pdv[0] & 0x01:
                command += pdv[1:]
    return command


def test_c_store_request_is_what_pynetdicom_encodes():
    from pynetdicom.dimse_primitives import C_STORE
    sop = generate_uid()
    primitive = C_STORE()
    primitive.MessageID = 7
    primitive.AffectedSOPClassUID = CT
    primitive.AffectedSOPInstanceUID = sop
    primitive.Priority = 0
    primitive.DataSet = BytesIO(b"\0\0")
    theirs = _pynetdicom_command(primitive)
    ours = scu.c_store_rq(7, CT, sop)
    assert scu.read_command(ours) == scu.read_command(theirs)
    assert ours == theirs


@pytest.mark.parametrize("status,comment", [(0x0000, None), (0xA700, "disk full"),
                                            (0xB007, None), (0xC123, "odd length")])
def test_store_responses_encoded_by_pynetdicom_are_read(status, comment):
    from pynetdicom.dimse_primitives import C_STORE
    sop = generate_uid()
    primitive = C_STORE()
    primitive.MessageIDBeingRespondedTo = 3
    primitive.AffectedSOPClassUID = CT
    primitive.AffectedSOPInstanceUID = sop
    primitive.Status = status
    if comment:
        primitive.ErrorComment = comment
    fields = scu.read_command(_pynetdicom_command(primitive))
    assert struct.unpack("<H", fields[0x0100])[0] == scu.C_STORE_RSP
    assert struct.unpack("<H", fields[0x0120])[0] == 3
    assert struct.unpack("<H", fields[0x0900])[0] == status
    assert fields.get(0x0902, b"").decode().strip(" \0") == (comment or "")


def test_a_truncated_command_set_is_refused():
    command = scu.c_store_rq(1, CT, generate_uid())
    with pytest.raises(ValueError):
        scu.read_command(command[:-3])


def _without_group_length(raw: bytes) -> tuple[bytes, int]:
    """``raw`` with a File Meta Information that has no (0002,0000), and where its
    data set then starts."""
    end = scu.dataset_offset(raw)
    return raw[:132] + raw[132 + 12:], end - 12


def test_dataset_offset_with_and_without_group_length(tmp_path):
    from pynetdicom.dsutils import split_dataset
    path = ct_series(tmp_path / "ct", 1)[0]
    raw = path.read_bytes()
    assert scu.dataset_offset(raw) == split_dataset(path)[1]
    bare, expected = _without_group_length(raw)
    assert scu.dataset_offset(bare) == expected
    (tmp_path / "bare.dcm").write_bytes(bare)
    assert dcmread(tmp_path / "bare.dcm").SOPInstanceUID == dcmread(path).SOPInstanceUID
    with pytest.raises(ValueError, match="DICM"):
        scu.dataset_offset(b"\0" * 300)
    with pytest.raises(ValueError, match="truncated"):
        scu.dataset_offset(bare[:expected - 3])
    assert scu.dataset_offset(bare[:expected]) == expected     # no data set at all


def test_a_write_that_need_not_be_durable_restores_full_sync(tmp_path):
    """``Database.write(durable=False)`` commits like any other write and leaves the
    connection at synchronous=FULL for every later (durable) write, even after an error."""
    db = Database(tmp_path / "t.db")
    with db.write() as conn:
        conn.execute("CREATE TABLE t (x)")
    with db.write(durable=False) as conn:
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1      # NORMAL
        conn.execute("INSERT INTO t VALUES (1)")
    assert db.query_one("SELECT COUNT(*) FROM t")[0] == 1
    with pytest.raises(RuntimeError), db.write(durable=False) as conn:
        conn.execute("INSERT INTO t VALUES (2)")
        raise RuntimeError("rolled back")
    assert db.query_one("SELECT COUNT(*) FROM t")[0] == 1
    with db.write() as conn:
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2      # FULL
    db.close()


# -- against storescp -------------------------------------------------------------------


def _router(box, netns, scp, **dest):
    return box("router", netns=netns, destinations=[destination("pacs", scp, **dest)],
               forwarding={"default_destinations": ["pacs"], **FAST})


def _restart(scp, extra):
    scp.stop()
    scp.extra = extra
    scp.start()


def _start_refusing(scp):
    """storescp --refuse (``StoreSCP.start`` waits for a C-ECHO it never answers)."""
    from helpers import dcmtk_env
    scp._log = open(scp.dir.parent / f"storescp-{scp.port}.log", "ab")  # noqa: SIM115
    scp.proc = subprocess.Popen(
        [*scp.ns.prefix(), "storescp", "-aet", scp.aet, "-od", str(scp.dir), "+xa",
         "--refuse", str(scp.port)], stdout=scp._log, stderr=subprocess.STDOUT,
        env=dcmtk_env())
    wait_for(lambda: "Rejected" in scp.ns.run("echoscu", "-aec", scp.aet, "127.0.0.1",
                                               scp.port).stderr, what="storescp refusing")


def test_a_refused_association_pauses_the_destination(box, netns, peers, tmp_path):
    """A-ASSOCIATE-RJ: the destination's last error says who refused and why; no row is
    claimed or attempted; once it accepts, everything goes, each on its first attempt."""
    files = tiny_instances(tmp_path / "tiny", 5)
    scp = peers.storescp("scp", start=False)
    _start_refusing(scp)
    router = _router(box, netns, scp)
    send(netns, router_port(router), files)
    error = wait_for(lambda: queue_json(router.config)["pacs"]["last_error"],
                     what="the refusal noted")
    assert error.startswith(f"association rejected by STORESCP@127.0.0.1:{scp.port} ("), error
    assert {r["attempts"] for r in queue_rows(tmp_path / "state")} == {0}
    _restart(scp, ["+xa"])
    wait_for(lambda: delivered(router.config, "pacs", len(files)), what="all delivered")
    assert {r["attempts"] for r in queue_rows(tmp_path / "state")} == {1}
    assert sorted(storescp_uids(scp)) == sorted(sop_uid(f) for f in files)


@pytest.mark.parametrize("mode", ["--abort-during", "--abort-after"])
def test_a_destination_aborting_a_c_store_gets_it_again(box, netns, peers, tmp_path, mode):
    """A-ABORT in the middle of a C-STORE (while the data set arrives, or before the
    response): the attempt fails, the instance is retried, and delivered once the
    destination behaves."""
    files = tiny_instances(tmp_path / "tiny", 3)
    scp = peers.storescp("scp", extra=["+xa", mode])
    router = _router(box, netns, scp)
    send(netns, router_port(router), files)

    def failed():
        rows = queue_rows(tmp_path / "state")
        return [r for r in rows if r["attempts"] >= 1 and r["state"] != "delivered"]

    rows = wait_for(failed, what="a failed attempt")
    where = f"STORESCP@127.0.0.1:{scp.port}"
    assert all(f"association aborted by {where}" in r["last_error"]
               or f"connection to {where} lost" in r["last_error"] for r in rows), rows
    _restart(scp, ["+xa", "+uf"])
    wait_for(lambda: delivered(router.config, "pacs", len(files)), what="all delivered")
    assert set(storescp_uids(scp)) == {sop_uid(f) for f in files}


def test_no_response_within_dimse_timeout_is_a_failed_attempt(box, netns, peers, tmp_path):
    """A destination that does not answer within ``dimse_timeout``: the association is
    aborted, the attempt counted; the instance is delivered later (at least once)."""
    files = tiny_instances(tmp_path / "tiny", 1)
    scp = peers.storescp("scp", extra=["+xa", "+uf", "--sleep-during", "4"])
    router = _router(box, netns, scp, dimse_timeout=1.0)
    send(netns, router_port(router), files)
    row = wait_for(lambda: next((r for r in queue_rows(tmp_path / "state")
                                 if r["attempts"] >= 1), None), what="a timed-out attempt")
    assert "no C-STORE response within 1 s (dimse_timeout)" in row["last_error"]
    _restart(scp, ["+xa", "+uf"])
    wait_for(lambda: delivered(router.config, "pacs", 1), what="delivered")
    assert sop_uid(files[0]) in storescp_uids(scp)


def test_small_pdus_carry_the_data_set_unchanged(box, netns, peers, tmp_path):
    """A destination taking 4 KB PDUs gets a 160 KB data set in fragments, unchanged."""
    files = ct_series(tmp_path / "ct", 2, rows=320, cols=256)
    scp = peers.storescp("scp", extra=["+xa", "-pdu", "4096"])
    router = _router(box, netns, scp)
    send(netns, router_port(router), files, "-xe")
    wait_for(lambda: delivered(router.config, "pacs", len(files)), what="all delivered")
    got = {str(dcmread(p).SOPInstanceUID): dcmread(p) for p in scp.files()}
    for f in files:
        original = dcmread(f)
        received = got[str(original.SOPInstanceUID)]
        assert received.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert received.PixelData == original.PixelData
        assert received == original          # every data element, not only the pixels


def test_a_sender_is_woken_by_new_instances_not_by_its_poll(box, netns, peers, tmp_path):
    """With ``idle_poll`` at an hour, instances still go at once: the senders wait for
    the transaction that queues them, both before any association and after one was
    released (its linger over)."""
    first, second = tiny_instances(tmp_path / "a", 2), tiny_instances(tmp_path / "b", 2)
    scp = peers.storescp("scp", extra=["+xa", "+uf"])
    router = box("router", netns=netns, destinations=[destination("pacs", scp)],
                 forwarding={"default_destinations": ["pacs"], **FAST, "idle_poll": 3600})
    send(netns, router_port(router), first)
    wait_for(lambda: delivered(router.config, "pacs", 2), timeout=60, what="the first two")
    time.sleep(1.5)          # longer than the linger: the association is released
    send(netns, router_port(router), second)
    wait_for(lambda: delivered(router.config, "pacs", 4), timeout=60, what="the next two")
    assert sorted(storescp_uids(scp)) == sorted(sop_uid(f) for f in first + second)


@pytest.mark.parametrize("fragment", [4090, 16378, (1 << 20) - 6])
def test_a_data_set_is_cut_into_fragments_in_order(fragment):
    """Every byte once, in order, in fragments no longer than the peer takes, only the
    last one marked last, whether the data set is read whole at first or in blocks."""
    from io import BytesIO
    block = scu.BLOCK
    for size in (0, 1, fragment, fragment + 1, block - 1, block, block + 1, 3 * block + 17):
        data = bytes(i % 251 for i in range(size))
        first = min(size, block)
        f = BytesIO(data[first:])
        parts = list(scu._fragments(memoryview(data[:first]), f, size - first, fragment))
        assert b"".join(bytes(p) for p, _ in parts) == data
        assert all(len(p) <= fragment for p, _ in parts)
        assert [last for _, last in parts] == [False] * (len(parts) - 1) + [True]
        assert all(len(p) == fragment for p, _ in parts[:-1])
