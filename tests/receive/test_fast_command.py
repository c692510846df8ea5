"""The C-STORE-RQ command set read by ``dimse.reactor``'s own decoder gives
the request pynetdicom's decoder gives: for real senders (DCMTK storescu and
dcmsend, a pynetdicom SCU with a priority, a move originator and a tiny PDU
size), for command sets split over several PDVs and PDUs, and a malformed
command set gets exactly what pynetdicom's path gives it.

Each sender talks to an in-process Storage SCP built like the router's
(``FastAE`` + ``reactor.start_server``, datasets streamed through
``dimse.receive``) twice: once as shipped, and once with an
``EVT_DIMSE_RECV`` handler bound, which makes every message go through
pynetdicom's own decoding (the reference).  What the handler is given, what
the peer gets back and what is logged must be the same.
"""

from __future__ import annotations

import logging
import random
import shutil
import socket
import struct
import threading
import types
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, StoragePresentationContexts, _config, evt
from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.pdu_primitives import P_DATA

from dicombox.dimse import ae as _ae  # noqa: F401 - installs the box's file meta
from dicombox.dimse import reactor, receive

from datagen import SC, ct_series, tiny_instances
from helpers import dcmtk

ELE = "1.2.840.10008.1.2.1"
ILE = "1.2.840.10008.1.2"
VERIFICATION = "1.2.840.10008.1.1"


def require(*tools):
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.fail(f"missing test peers: {', '.join(missing)} (run scripts/install-peers.sh)")


# -- the in-process SCP --------------------------------------------------------

def _typed(values: dict) -> dict:
    return {k: (type(v).__name__, v) for k, v in values.items()}


def snapshot(req) -> dict:
    """A request primitive as comparable data: every attribute with its type,
    the data set file by content."""
    values = dict(vars(req))
    dataset = values.pop("_dataset")
    values["_dataset"] = dataset.getvalue() if dataset is not None else None
    values.pop("_dataset_file")
    path = values.pop("_dataset_path")
    values["file"] = Path(path).read_bytes() if path is not None else None
    return {"class": type(req).__name__, "values": _typed(values)}


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.records: list[tuple[str, str, str]] = []

    def emit(self, record):
        self.records.append((record.name, record.levelname, record.getMessage()))


class SCP:
    """A Storage SCP like the router's, recording each request it is given."""

    def __init__(self, tmp_dir: Path, reference: bool, max_pdu: int = 16384, answer=0x0000):
        self.answer = answer
        self.requests: list[dict] = []
        self.fast: list[bool] = []
        self.threads: list[threading.Thread] = []
        self.ae = reactor.FastAE(ae_title="DICOMBOX")
        self.ae.maximum_pdu_size = max_pdu
        self.ae.network_timeout = 30
        self.ae.supported_contexts = StoragePresentationContexts
        self.ae.add_supported_context(VERIFICATION)
        handlers = [(evt.EVT_C_STORE, self._on_store)]
        if reference:
            handlers.append((evt.EVT_DIMSE_RECV, lambda event: None))
        self.server = reactor.start_server(self.ae, ("127.0.0.1", 0), handlers)
        self.port = self.server.server_address[1]

    def _on_store(self, event):
        req = event.request
        self.requests.append(snapshot(req))
        self.fast.append(isinstance(req, reactor._ReceivedStore))
        self.threads.append(threading.current_thread())
        writer = receive.writer_for(req._dataset_path)
        if writer is not None:
            writer.close()
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer

    def close(self):
        self.ae.shutdown()


@pytest.fixture
def scp(tmp_path, monkeypatch):
    """``scp(reference=False, max_pdu=...)`` starts an SCP, stopped in teardown."""
    # pynetdicom's INFO logging binds its own EVT_DIMSE_RECV handler; the
    # services turn it off unless pynetdicom logs at INFO.
    monkeypatch.setattr(_config, "LOG_HANDLER_LEVEL", "none")
    monkeypatch.setattr(_config, "STORE_RECV_CHUNKED_DATASET", True)
    installed = receive._state["originals"] is None
    spool = tmp_path / "rx"
    spool.mkdir()
    assert receive.install(spool)
    records = _Records()
    for name in ("pynetdicom", "dicombox"):
        logging.getLogger(name).addHandler(records)
    unhandled: list = []
    monkeypatch.setattr(threading, "excepthook", unhandled.append)
    started: list[SCP] = []

    def start(reference=False, max_pdu=16384, answer=0x0000):
        records.records.clear()
        server = SCP(spool, reference, max_pdu, answer)
        server.records = records.records
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()
    for name in ("pynetdicom", "dicombox"):
        logging.getLogger(name).removeHandler(records)
    if installed:
        receive.uninstall()
    assert not unhandled, [u.exc_value for u in unhandled]  # no traceback of a thread


def both(scp, send, **kw):
    """(fast SCP's requests, reference SCP's requests), each after ``send(port)``."""
    fast = scp(**kw)
    send(fast.port)
    fast.close()
    ref = scp(reference=True, **kw)
    send(ref.port)
    ref.close()
    assert ref.fast == [False] * len(ref.requests)
    return fast, ref


# -- real senders ------------------------------------------------------------

@pytest.fixture
def files(tmp_path):
    return (tiny_instances(tmp_path / "tiny", 3)
            + ct_series(tmp_path / "ct", 1, rows=128, cols=128))


def test_storescu_requests_decode_as_pynetdicom_decodes_them(scp, files):
    require("storescu")

    def send(port):
        r = dcmtk("storescu", "-aet", "MODALITY", "-aec", "DICOMBOX", "127.0.0.1", port,
                  *files, timeout=60)
        assert r.returncode == 0, r.stderr

    fast, ref = both(scp, send)
    assert len(fast.requests) == len(files)
    assert fast.fast == [True] * len(files)
    assert fast.requests == ref.requests
    assert fast.records == ref.records == []
    # Served on the DUL thread that received them, with no hand-over to the
    # association thread and back (the first may come before the association
    # thread has marked the association established: that thread serves it);
    # the reference's go through that thread.
    assert all(isinstance(t, reactor.FastDUL) for t in fast.threads[1:])
    assert not any(isinstance(t, reactor.FastDUL) for t in ref.threads)


def test_dcmsend_requests_decode_as_pynetdicom_decodes_them(scp, files):
    require("dcmsend")

    def send(port):
        r = dcmtk("dcmsend", "-aet", "MODALITY", "-aec", "DICOMBOX", "127.0.0.1", port,
                  *files, timeout=60)
        assert r.returncode == 0, r.stderr

    fast, ref = both(scp, send)
    assert fast.fast == [True] * len(files)
    assert fast.requests == ref.requests
    assert fast.records == ref.records == []


def _pynetdicom_send(files, options):
    def send(port):
        ae = AE(ae_title="MOVESCP")
        for f in files:
            ae.add_requested_context(dcmread(f).SOPClassUID, ELE)
        assoc = ae.associate("127.0.0.1", port, ae_title="DICOMBOX")
        assert assoc.is_established
        try:
            for f, kw in zip(files, options):
                status = assoc.send_c_store(dcmread(f), **kw)
                assert status.Status == 0x0000
        finally:
            assoc.release()
            ae.shutdown()
    return send


PYNETDICOM_OPTIONS = [
    {"msg_id": 1, "priority": 1, "originator_aet": "MOVESCU", "originator_id": 4321},
    {"msg_id": 65535, "priority": 0, "originator_aet": "A", "originator_id": 0},
    {"msg_id": 0, "priority": 2, "originator_id": 7},
    {"msg_id": 12},
]


def test_pynetdicom_requests_with_priority_and_move_originator(scp, files):
    fast, ref = both(scp, _pynetdicom_send(files, PYNETDICOM_OPTIONS))
    assert fast.fast == [True] * len(files)
    assert fast.requests == ref.requests
    first = fast.requests[0]["values"]
    assert first["_priority"] == ("int", 1)
    assert first["_move_originator_application_entity_title"] == ("str", "MOVESCU")
    assert first["_move_originator_message_id"] == ("int", 4321)
    assert fast.records == ref.records == []


def test_command_split_over_many_pdus(scp, files):
    """A tiny maximum PDU size makes pynetdicom's SCU send every command set
    in several P-DATA-TF PDUs."""
    fast, ref = both(scp, _pynetdicom_send(files[:2], PYNETDICOM_OPTIONS), max_pdu=40)
    assert fast.fast == [True, True]
    assert fast.requests == ref.requests
    assert fast.records == ref.records == []


# -- a raw peer: command sets as they come, broken or not ----------------------

def _item(kind: int, value: bytes) -> bytes:
    return struct.pack(">BxH", kind, len(value)) + value


def _pdu(kind: int, body: bytes) -> bytes:
    return struct.pack(">BxI", kind, len(body)) + body


def _associate_rq(contexts: list[tuple[int, str]]) -> bytes:
    items = _item(0x10, b"1.2.840.10008.3.1.1.1")
    for cx_id, abstract in contexts:
        items += _item(0x20, bytes([cx_id, 0, 0, 0]) + _item(0x30, abstract.encode())
                       + _item(0x40, ELE.encode()))
    items += _item(0x50, _item(0x51, struct.pack(">I", 16384)) + _item(0x52, b"1.2.3.4"))
    return _pdu(0x01, struct.pack(">H2x", 1) + b"DICOMBOX".ljust(16) + b"RAWPEER".ljust(16)
                + bytes(32) + items)


def _read_pdu(sock) -> tuple[int, bytes] | None:
    def exactly(n):
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                return None
            data += chunk
        return data
    header = exactly(6)
    if header is None:
        return None
    kind, length = struct.unpack(">BxI", header)
    body = exactly(length)
    return None if body is None else (kind, body)


def _element(element: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0, element, len(value)) + value


def command(elements: list[tuple[int, bytes]], group_length: bool = True) -> bytes:
    body = b"".join(_element(e, v) for e, v in elements)
    return _element(0, struct.pack("<I", len(body))) + body if group_length else body


def _us(value: int) -> bytes:
    return struct.pack("<H", value)


def store_rq(**changes) -> list[tuple[int, bytes]]:
    """A C-STORE-RQ command's elements; ``e1000=None`` drops one,
    ``e0900=...`` adds or replaces one."""
    elements = {0x0002: SC.encode() + b"\0", 0x0100: _us(0x0001), 0x0110: _us(5),
                0x0700: _us(0), 0x0800: _us(0), 0x1000: b"1.2.826.0.1.3680043.8.498.4242"}
    for key, value in changes.items():
        element = int(key[1:], 16)
        if value is None:
            del elements[element]
        else:
            elements[element] = value
    return sorted(elements.items())


DATA = b"\x08\x00\x16\x00\x1a\x00\x00\x00" + SC.encode() + b"\0"


def exchange(port: int, pdus: list[list[tuple[int, bytes]]]) -> list:
    """Associate with contexts 1 and 3 (SC) and 5 (Verification), send each
    P-DATA-TF (a list of (context, PDV value)), then collect what comes back
    until the association ends (released after a response)."""
    got: list = []
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(_associate_rq([(1, SC), (3, SC), (5, VERIFICATION)]))
        reply = _read_pdu(sock)
        assert reply is not None and reply[0] == 0x02, reply
        for pdvs in pdus:
            sock.sendall(_pdu(0x04, b"".join(struct.pack(">IB", len(v) + 1, cx) + v
                                             for cx, v in pdvs)))
        while True:
            try:
                pdu = _read_pdu(sock)
            except TimeoutError:
                got.append("no answer")
                break
            if pdu is None:
                got.append("closed")
                break
            got.append(pdu)
            if pdu[0] == 0x04:
                sock.sendall(_pdu(0x05, bytes(4)))
    return got


def _store(cmd: bytes, cx: int = 1) -> list:
    return [[(cx, b"\x03" + cmd)], [(cx, b"\x02" + DATA)]]


#: A C-ECHO-RQ after a request pynetdicom ignores without a word: its
#: response shows the association went on (instead of waiting for nothing).
ECHO = [(5, b"\x03" + command([(0x0002, VERIFICATION.encode() + b"\0"), (0x0100, _us(0x30)),
                                (0x0110, _us(1)), (0x0800, _us(0x0101))]))]


MALFORMED = {
    "unknown command field": _store(command(store_rq(e0100=_us(0x0002)))),
    "C-ECHO-RQ": [ECHO],
    "priority 5": _store(command(store_rq(e0700=_us(5)))),
    "SOP instance UID of 65 characters": _store(command(store_rq(e1000=b"1." * 32 + b"12"))),
    "SOP instance UID with letters": _store(command(store_rq(e1000=b"1.2.abc"))),
    "SOP instance UID with a leading zero": _store(command(store_rq(e1000=b"1.02.3\0"))),
    "two SOP instance UIDs": _store(command(store_rq(e1000=b"1.2.3\\1.2.4 "))),
    "empty SOP class UID": _store(command(store_rq(e0002=b""))) + [ECHO],
    "no SOP instance UID": _store(command(store_rq(e1000=None))) + [ECHO],
    "no priority": _store(command(store_rq(e0700=None))),
    "Status in a request": _store(command(store_rq(e0900=_us(0)))),
    "move originator AE of 17 characters": _store(command(store_rq(e1030=b"A" * 17 + b" "))),
    "move originator AE with a control character": _store(command(store_rq(e1030=b"A\tB "))),
    "empty move originator AE": _store(command(store_rq(e1030=b""))),
    "message ID of 4 bytes": _store(command(store_rq(e0110=b"\1\0\2\0"))),
    "no data set (0101)": _store(command(store_rq(e0800=_us(0x0101))))[:1],
    "element beyond the end": _store(command(store_rq())[:-6]),
    "wrong group length": _store(command(store_rq())[:8] + b"\xff\0\0\0"
                                 + command(store_rq())[12:]),
    "no group length": _store(command(store_rq(), group_length=False)),
    "elements out of order": _store(command(store_rq())[:12] + b"".join(
        _element(e, v) for e, v in reversed(store_rq()))),
    "context not proposed": _store(command(store_rq()), cx=9),
    "fragments on two contexts": [[(1, b"\x01" + command(store_rq())[:20]),
                                   (3, b"\x03" + command(store_rq())[20:])],
                                  [(1, b"\x02" + DATA)]],
    "data set before its command": [[(1, b"\x00" + DATA[:4]), (1, b"\x03" + command(store_rq()))],
                                    [(1, b"\x02" + DATA[4:])]],
}


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom on the invalid UIDs
@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_unusual_or_malformed_command_gets_what_pynetdicom_gives(scp, case):
    outcomes = []
    for reference in (False, True):
        server = scp(reference=reference)
        got = exchange(server.port, MALFORMED[case])
        # Still serving: a C-ECHO on a new association.
        ae = AE(ae_title="ECHOSCU")
        ae.add_requested_context(VERIFICATION)
        assoc = ae.associate("127.0.0.1", server.port, ae_title="DICOMBOX")
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0x0000
        assoc.release()
        ae.shutdown()
        server.close()
        assert "no answer" not in got
        assert server.fast == [False] * len(server.requests)
        outcomes.append((got, server.requests, list(server.records)))
    assert outcomes[0] == outcomes[1]


def test_command_in_several_pdvs_of_one_pdu(scp):
    """A command set split over three PDVs of one P-DATA-TF, followed in it
    by the data set: read by the fast decoder, answered as pynetdicom does."""
    cmd = command(store_rq(e1030=b" MOVER ", e1031=_us(9)))
    pdus = [[(1, b"\x01" + cmd[:10]), (1, b"\x01" + cmd[10:40]), (1, b"\x03" + cmd[40:]),
             (1, b"\x00" + DATA[:5]), (1, b"\x02" + DATA[5:])]]
    outcomes = []
    for reference in (False, True):
        server = scp(reference=reference)
        got = exchange(server.port, pdus)
        server.close()
        assert server.fast == [not reference]
        outcomes.append((got, server.requests, list(server.records)))
    assert outcomes[0] == outcomes[1]
    got, requests, _ = outcomes[0]
    assert got[0][0] == 0x04 and got[-1] == "closed"
    values = requests[0]["values"]
    assert values["_move_originator_application_entity_title"] == ("str", "MOVER")
    assert values["file"][1].endswith(DATA)


# -- the decoder alone, against pynetdicom's, on many command sets -------------

_CX = types.SimpleNamespace(_accepted_cx={
    1: types.SimpleNamespace(transfer_syntax=[ELE]),
    3: types.SimpleNamespace(transfer_syntax=[ILE])})


def _decode(message_class, pdus, fast: list | None = None) -> tuple:
    """What decoding ``pdus`` with ``message_class`` gives: the return value of
    each ``decode_msg``, the primitive (or the exception raised).  ``fast``
    gets the primitives that the fast decoder built."""
    message, steps = message_class(), []
    for pdvs in pdus:
        primitive = P_DATA()
        primitive.presentation_data_value_list.extend([cx, v] for cx, v in pdvs)
        try:
            done = message.decode_msg(primitive, _CX)
        except Exception as exc:
            return steps, ("raised", type(exc).__name__, str(exc))
        steps.append(done)
        if done:
            try:
                req = message.message_to_primitive()
            except Exception as exc:
                return steps, ("raised", type(exc).__name__, str(exc))
            if req._dataset_file is not None:
                req._dataset_file.close()
            if fast is not None and isinstance(req, reactor._ReceivedStore):
                fast.append(req)
            return steps, (type(message).__name__, snapshot(req))
    return steps, None


def _variants():
    yield "plain", store_rq()
    yield "move originator", store_rq(e1030=b"  AB CD ", e1031=_us(65535))
    yield "priority high", store_rq(e0700=_us(1))
    yield "odd UIDs unpadded", store_rq(e0002=b"1.2.3", e1000=b"2.25.1")
    yield "data set type 0102", store_rq(e0800=_us(0x0102))
    rng = random.Random(7)
    base = command(store_rq())
    for n in range(400):
        data = bytearray(base)
        kind = n % 3
        if kind == 0:
            data[rng.randrange(len(data))] = rng.choice(b"\0\1\2\x08.0123456789 \\A")
        elif kind == 1:
            del data[rng.randrange(len(data)):]
        else:
            data.insert(rng.randrange(len(data)), rng.randrange(256))
        yield f"mutation {n}", bytes(data)


@pytest.fixture
def quiet_pydicom():
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@pytest.mark.parametrize("chunked", [True, False])
def test_decoder_agrees_with_pynetdicom_on_many_command_sets(tmp_path, monkeypatch, chunked,
                                                               quiet_pydicom):
    monkeypatch.setattr(_config, "STORE_RECV_CHUNKED_DATASET", chunked)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    records = _Records()
    records.setLevel(logging.INFO)
    logger = logging.getLogger("pynetdicom")
    logger.addHandler(records)
    level = logger.level
    logger.setLevel(logging.INFO)
    fast: list = []
    try:
        for name, variant in _variants():
            cmd = variant if isinstance(variant, bytes) else command(variant)
            layouts = {
                "two PDUs": _store(cmd),
                "one PDU": [[(1, b"\x03" + cmd), (1, b"\x02" + DATA)]],
                "fragments": [[(3, b"\x01" + cmd[:7])], [(3, b"\x01" + cmd[7:50]),
                                                         (3, b"\x03" + cmd[50:])],
                              [(3, b"\x00" + DATA[:3]), (3, b"\x02" + DATA[3:])]],
                "two commands": [[(1, b"\x03" + cmd)], [(1, b"\x03" + cmd)],
                                 [(1, b"\x02" + DATA)]],
            }
            for layout, pdus in layouts.items():
                records.records.clear()
                expected = _decode(DIMSEMessage, pdus)
                logged = list(records.records)
                records.records.clear()
                got = _decode(reactor._IncomingMessage, pdus, fast)
                assert (got, records.records) == (expected, logged), (name, layout)
    finally:
        logger.removeHandler(records)
        logger.setLevel(level)
    # The plain variants, and the mutations that keep them plain.
    assert len(fast) >= 20


def test_parse_store_command_reads_what_pynetdicom_sets():
    parsed = reactor.parse_store_command(command(store_rq(e1030=b" MOVER ", e1031=_us(3))))
    assert parsed == (5, 0, SC, "1.2.826.0.1.3680043.8.498.4242", "MOVER", 3)
    assert type(parsed.sop_class_uid).__name__ == "UID"
    assert reactor.parse_store_command(command(store_rq(e0100=_us(0x0030)))) is None
    assert reactor.parse_store_command(b"") is None


def test_message_looked_at_gets_its_command_set(monkeypatch):
    """The fast path builds no pydicom command set, but one that is asked for
    is there (decoded from the bytes received)."""
    message = reactor._IncomingMessage()
    primitive = P_DATA()
    primitive.presentation_data_value_list.append([1, b"\x03" + command(store_rq())])
    monkeypatch.setattr(_config, "STORE_RECV_CHUNKED_DATASET", False)
    assert message.decode_msg(primitive, _CX) is False
    assert type(message).__name__ == "C_STORE_RQ"
    assert message.command_set.AffectedSOPInstanceUID == "1.2.826.0.1.3680043.8.498.4242"
    assert message.command_set.MessageID == 5
    assert len(reactor._IncomingMessage().command_set) == 0


def _warning_with_comment():
    status = Dataset()
    status.Status = 0xB007
    status.ErrorComment = "coerced"
    return status


@pytest.mark.parametrize("answer", [0xA700, "dataset", "exception"])
def test_other_answers_are_sent_as_pynetdicom_sends_them(scp, answer):
    """The response to a fast-decoded request, whatever the handler returns."""
    if answer == "dataset":
        answer = _warning_with_comment()
    elif answer == "exception":
        answer = RuntimeError("handler failed")
    outcomes = []
    for reference in (False, True):
        server = scp(reference=reference, answer=answer)
        got = exchange(server.port, _store(command(store_rq(e0700=_us(2)))))
        server.close()
        assert server.fast == [not reference]
        outcomes.append((got, server.requests, [r[:2] for r in server.records]))
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][0][0][0] == 0x04


def _responded_to(pdu: tuple[int, bytes]) -> int:
    """Message ID Being Responded To (0000,0120) of a response's command PDV."""
    kind, body = pdu
    assert kind == 0x04
    data, offset = body[6:], 0
    while offset < len(data):
        _group, element, length = struct.unpack_from("<HHI", data, offset)
        if element == 0x0120:
            return struct.unpack_from("<H", data, offset + 8)[0]
        offset += 8 + length
    raise AssertionError("no Message ID Being Responded To")


def test_store_waits_for_the_message_the_association_thread_serves(scp):
    """A C-STORE completed while the association thread still serves an
    earlier request is not served ahead of it: the answers keep the order of
    the requests."""
    server = scp()
    serving, release = threading.Event(), threading.Event()

    def on_echo(event):
        serving.set()
        release.wait(30)
        return 0x0000

    server.server.bind(evt.EVT_C_ECHO, on_echo)
    echo = command([(0x0002, VERIFICATION.encode() + b"\0"), (0x0100, _us(0x0030)),
                    (0x0110, _us(1)), (0x0800, _us(0x0101))])
    store = command(store_rq())  # Message ID 5
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(_associate_rq([(1, SC), (5, VERIFICATION)]))
        assert _read_pdu(sock)[0] == 0x02
        sock.sendall(_pdu(0x04, struct.pack(">IB", len(echo) + 2, 5) + b"\x03" + echo))
        assert serving.wait(30)
        sock.sendall(_pdu(0x04, struct.pack(">IB", len(store) + 2, 1) + b"\x03" + store
                          + struct.pack(">IB", len(DATA) + 2, 1) + b"\x02" + DATA))
        # The store is complete and waits in the queue; give a wrongly eager
        # DUL thread the time to serve it.
        waited = threading.Event()
        waited.wait(0.5)
        assert server.requests == []
        release.set()
        answers = [_read_pdu(sock), _read_pdu(sock)]
        sock.sendall(_pdu(0x05, bytes(4)))
        assert _read_pdu(sock)[0] == 0x06
    assert [_responded_to(a) for a in answers] == [1, 5]
    assert server.fast == [True]
    assert not isinstance(server.threads[0], reactor.FastDUL)


def test_store_slower_than_the_network_timeout_is_answered(scp, tmp_path):
    """The network timeout counts the peer's silence, not the time the box
    takes to store what the peer sent: a store that takes longer is answered,
    and the association goes on."""
    require("storescu")
    server = scp()
    server.ae.network_timeout = 1
    record = server._on_store

    def slow(event):
        threading.Event().wait(2.5)
        return record(event)

    server.server.bind(evt.EVT_C_STORE, slow)
    files = tiny_instances(tmp_path / "slow", 2)
    r = dcmtk("storescu", "-aet", "MODALITY", "-aec", "DICOMBOX", "127.0.0.1", server.port,
              *files, timeout=60)
    assert r.returncode == 0, r.stderr
    assert server.fast == [True, True]
