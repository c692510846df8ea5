"""The event-driven receive path against real senders: parallel associations,
kill -9 under load, senders that vanish or go quiet, and the fall-back to
pynetdicom's own reactors on another pynetdicom version."""

import hashlib
import random
import shutil
import socket
import sqlite3
import subprocess
import time
from pathlib import Path

import pynetdicom
import pytest
from pydicom import dcmread

from dicombox.dimse import reactor, receive

from datagen import ct_series, dataset_bytes, tiny_instances
from helpers import BoxProcess, dcmtk, dcmtk_env, write_config


def require(*tools):
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.fail(f"missing test peers: {', '.join(missing)} (run scripts/install-peers.sh)")


def _port(cfg) -> int:
    return int(cfg.read_text().split("[router]")[1].split("port = ")[1].split()[0])


def _send(port, files, verbose=True):
    return subprocess.Popen(["storescu", *(["-v"] if verbose else []), "-aet", "MODALITY",
                             "-aec", "DICOMBOX", "127.0.0.1", str(port),
                             *[str(f) for f in files]],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dcmtk_env())


def _acked(output: str) -> set[str]:
    acked, current = set(), None
    for line in output.splitlines():
        if line.startswith("I: Sending file: "):
            current = line[len("I: Sending file: "):].strip()
        elif line.startswith("I: Received Store Response (Success)") and current:
            acked.add(current)
            current = None
    return acked


def _check_spool(state, files):
    conn = sqlite3.connect(state / "index.db")
    conn.row_factory = sqlite3.Row
    rows = {r["sop_instance_uid"]: r for r in conn.execute("SELECT * FROM instances")}
    for f in files:
        row = rows[dcmread(f, stop_before_pixels=True).SOPInstanceUID]
        stored = state / "spool" / row["path"]
        data = stored.read_bytes()
        assert hashlib.sha256(data).hexdigest() == row["sha256"]
        assert len(data) == row["size"]
        assert dataset_bytes(stored) == dataset_bytes(f)
    on_disk = {p.relative_to(state / "spool").as_posix()
               for p in (state / "spool").rglob("*") if p.is_file()}
    assert on_disk == {r["path"] for r in rows.values()}
    return rows


def test_parallel_associations_are_all_stored(tmp_path):
    require("storescu")
    groups = [tiny_instances(tmp_path / f"tiny{k}", 60) for k in range(4)]
    groups.append(ct_series(tmp_path / "ct", 6, rows=512, cols=512))
    cfg = write_config(tmp_path)
    router = BoxProcess("router", cfg).start()
    try:
        senders = [_send(_port(cfg), g) for g in groups]
        outs = [s.communicate(timeout=120)[0] for s in senders]
        assert all(s.returncode == 0 for s in senders), outs
        for g, out in zip(groups, outs):
            assert _acked(out) == {str(f) for f in g}
    finally:
        assert router.stop() == 0
    state = tmp_path / "state" / "router"
    rows = _check_spool(state, [f for g in groups for f in g])
    assert len(rows) == sum(len(g) for g in groups)
    assert not list((state / "tmp").iterdir())
    assert "Traceback" not in router.output()


def test_kill_9_under_parallel_load_loses_nothing_acknowledged(tmp_path):
    """Group commit answers each C-STORE only once its own data is durable."""
    require("storescu")
    groups = [[str(f) for f in tiny_instances(tmp_path / f"d{k}", 150)] for k in range(3)]
    cfg = write_config(tmp_path)
    rng = random.Random(77)
    acked: set[str] = set()
    for _ in range(3):
        router = BoxProcess("router", cfg).start()
        senders = [_send(_port(cfg), [f for f in g if f not in acked]) for g in groups]
        time.sleep(rng.uniform(0.1, 0.4))
        router.kill()
        for s in senders:
            acked |= _acked(s.communicate(timeout=120)[0])
    router = BoxProcess("router", cfg).start()
    try:
        rest = [f for g in groups for f in g if f not in acked]
        if rest:
            out = _send(_port(cfg), rest).communicate(timeout=300)[0]
            acked |= _acked(out)
    finally:
        assert router.stop() == 0
    everything = {f for g in groups for f in g}
    assert acked == everything
    state = tmp_path / "state" / "router"
    _check_spool(state, sorted(everything))
    assert not list((state / "tmp").iterdir())


def test_sender_killed_mid_transfer_leaves_the_router_serving(tmp_path):
    require("storescu", "echoscu")
    big = ct_series(tmp_path / "big", 1, rows=4096, cols=4096)  # 32 MiB
    small = tiny_instances(tmp_path / "small", 3)
    cfg = write_config(tmp_path)
    router = BoxProcess("router", cfg).start()
    try:
        for delay in (0.05, 0.15):
            sender = _send(_port(cfg), big, verbose=False)
            time.sleep(delay)
            sender.kill()
            sender.wait(10)
        r = dcmtk("echoscu", "-aec", "DICOMBOX", "127.0.0.1", _port(cfg))
        assert r.returncode == 0, r.stderr
        out = _send(_port(cfg), small).communicate(timeout=60)[0]
        assert _acked(out) == {str(f) for f in small}
    finally:
        assert router.stop() == 0
    assert "Traceback" not in router.output()


def test_silent_connection_is_closed_after_the_acse_timeout(tmp_path):
    """Nothing but a TCP connect: the ARTIM timer ends it (the DUL must wake
    up for the timer, not only for data)."""
    cfg = write_config(tmp_path, network={"acse_timeout": 1})
    router = BoxProcess("router", cfg).start()
    try:
        with socket.create_connection(("127.0.0.1", _port(cfg))) as s:
            s.settimeout(60)
            assert s.recv(1) == b""  # closed by the router
    finally:
        assert router.stop() == 0


def test_idle_association_is_aborted_after_the_network_timeout(tmp_path):
    """An established association that goes quiet (pynetdicom as the peer:
    no DCMTK tool idles on purpose)."""
    from pynetdicom import AE
    cfg = write_config(tmp_path, network={"network_timeout": 1})
    router = BoxProcess("router", cfg).start()
    try:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context("1.2.840.10008.1.1")
        assoc = ae.associate("127.0.0.1", _port(cfg), ae_title="DICOMBOX")
        assert assoc.is_established
        deadline = time.monotonic() + 60
        while assoc.is_established and time.monotonic() < deadline:
            time.sleep(0.1)
        assert assoc.is_aborted
        ae.shutdown()
    finally:
        assert router.stop() == 0


def test_spool_writer_hashes_counts_and_keeps_the_head(tmp_path):
    w = receive.SpoolWriter(tmp_path)
    chunks = [b"a" * 100, b"b" * (receive.HEAD_BYTES), b"c" * 5000]
    for c in chunks:
        w.write(c)
    w.file.flush()
    w.close()
    w.close()
    data = b"".join(chunks)
    assert Path(w.name).read_bytes() == data
    assert w.size == len(data)
    assert w.hexdigest() == hashlib.sha256(data).hexdigest()
    assert w.head == data[:receive.HEAD_BYTES]
    assert not w.complete_in_head
    assert receive.writer_for(w.name) is w
    small = receive.SpoolWriter(tmp_path)
    small.write(b"xyz")
    assert small.complete_in_head and small.head == b"xyz"


def test_spool_writer_hashes_large_files_in_order_within_its_bound(tmp_path):
    """Beyond the inline bytes a lane hashes; more than PENDING_BYTES given
    at once makes the writer wait instead of queueing without bound."""
    rng = random.Random(7)
    blocks = [rng.randbytes(256 * 1024) for _ in range(48)]  # 12 MiB > PENDING_BYTES
    w = receive.SpoolWriter(tmp_path)
    for b in blocks:
        w.write(bytearray(b))
        assert w._pending <= receive.PENDING_BYTES
    w.close()
    data = b"".join(blocks)
    assert w.hexdigest() == hashlib.sha256(data).hexdigest()
    assert Path(w.name).read_bytes() == data and w.error is None


def test_other_pynetdicom_versions_get_pynetdicom_own_reactors(tmp_path, monkeypatch):
    """The copied loops are tied to one pynetdicom version: on any other the
    listener uses pynetdicom's server and the files pynetdicom writes."""
    require("echoscu", "storescu")
    monkeypatch.setattr(pynetdicom, "__version__", "9.9.9")
    assert not reactor.supported()
    assert receive.install(tmp_path) is False
    from dicombox.config import load
    from dicombox.router.service import RouterService
    cfg = load(write_config(tmp_path))
    svc = RouterService(cfg, port=0)
    svc.start()
    try:
        assert not isinstance(svc.listener.server, reactor.FastAssociationServer)
        files = tiny_instances(tmp_path / "t", 3)
        r = dcmtk("storescu", "-aec", "DICOMBOX", "127.0.0.1", svc.port, *files)
        assert r.returncode == 0, r.stderr
    finally:
        svc.stop()
    assert svc.store is not None
    rows = sqlite3.connect(tmp_path / "state" / "router" / "index.db").execute(
        "SELECT COUNT(*) FROM instances").fetchone()[0]
    assert rows == 3


@pytest.fixture(autouse=True)
def _restore_receive():
    yield
    receive.uninstall()


def _echo_command(message_id: int) -> bytes:
    import struct

    def elem(element, value):
        return struct.pack("<HHI", 0, element, len(value)) + value
    body = (elem(0x0002, b"1.2.840.10008.1.1\0") + elem(0x0100, struct.pack("<H", 0x30))
            + elem(0x0110, struct.pack("<H", message_id))
            + elem(0x0800, struct.pack("<H", 0x0101)))
    return elem(0x0000, struct.pack("<I", len(body))) + body


def _pdata(*pdvs) -> bytes:
    import struct
    items = b"".join(struct.pack(">IB", len(v) + 1, cid) + v for cid, v in pdvs)
    return struct.pack(">BBI", 0x04, 0, len(items)) + items


def _verification_association(port):
    from pynetdicom import AE
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMBOX")
    assert assoc.is_established
    return ae, assoc


def test_pdvs_of_one_pdu_and_fragments_across_pdvs(tmp_path):
    """A command split over two PDVs of one P-DATA-TF is reassembled."""
    cfg = write_config(tmp_path)
    router = BoxProcess("router", cfg).start()
    try:
        ae, assoc = _verification_association(_port(cfg))
        cid = assoc.accepted_contexts[0].context_id
        command = _echo_command(7)
        raw = _pdata((cid, b"\x01" + command[:20]), (cid, b"\x03" + command[20:]))
        # Keep the requestor's own reactor off the response (as send_c_echo does).
        assoc._reactor_checkpoint.clear()
        while not assoc._is_paused:
            time.sleep(0.001)
        assoc.dul.socket.socket.sendall(raw)
        _cx, rsp = assoc.dimse.get_msg(block=True)
        assoc._reactor_checkpoint.set()
        assert rsp is not None and rsp.Status == 0 and rsp.MessageIDBeingRespondedTo == 7
        assoc.release()
        ae.shutdown()
    finally:
        assert router.stop() == 0
    assert "Traceback" not in router.output()


@pytest.mark.parametrize("garbage", [
    b"\x04\x00\x00\x00\x00\x05\x00\x00\x00\x01\x01",         # PDV without a header byte
    b"\x04\x00\x00\x00\x00\x06\x00\x00\x00\x09\x01\x03",     # item length overruns
    b"\x04\x00\x00\x00\x00\x00",                             # P-DATA-TF without items
])
def test_malformed_p_data_aborts_only_that_association(tmp_path, garbage):
    cfg = write_config(tmp_path)
    router = BoxProcess("router", cfg).start()
    try:
        ae, assoc = _verification_association(_port(cfg))
        assoc.dul.socket.socket.sendall(garbage)
        deadline = time.monotonic() + 30
        while assoc.is_established and time.monotonic() < deadline:
            time.sleep(0.05)
        assert assoc.is_aborted
        ae.shutdown()
        r = dcmtk("echoscu", "-aec", "DICOMBOX", "127.0.0.1", _port(cfg))
        assert r.returncode == 0, r.stderr
    finally:
        assert router.stop() == 0
    assert "Traceback" not in router.output()


def test_fast_ae_requestor_sends_and_releases(tmp_path):
    """The event-driven reactors on the requesting side (a Storage SCU such as
    the forwarding sender): C-ECHO, C-STOREs, release."""
    from pydicom.uid import ExplicitVRLittleEndian
    from pynetdicom.presentation import build_context

    from dicombox.dimse.reactor import FastAE, FastAssociation
    files = tiny_instances(tmp_path / "t", 25)
    cfg = write_config(tmp_path)
    router = BoxProcess("router", cfg).start()
    try:
        ae = FastAE(ae_title="MODALITY")
        ae.requested_contexts = [build_context("1.2.840.10008.1.1"),
                                 build_context("1.2.840.10008.5.1.4.1.1.7",
                                               [ExplicitVRLittleEndian])]
        assoc = ae.associate("127.0.0.1", _port(cfg), ae_title="DICOMBOX")
        assert assoc.is_established
        assert isinstance(assoc, FastAssociation)
        assert assoc.send_c_echo().Status == 0
        for f in files:
            assert assoc.send_c_store(f).Status == 0
        assoc.release()
        assert assoc.is_released
        ae.shutdown()
    finally:
        assert router.stop() == 0
    rows = _check_spool(tmp_path / "state" / "router", files)
    assert len(rows) == 25
