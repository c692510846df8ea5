"""Event-driven reactors for incoming associations (pynetdicom 3.0.4 only).

Why this module exists: pynetdicom's two per-association loops poll with
fixed sleeps.  ``Association._run_reactor`` sleeps 1 ms on every turn and the
DUL reactor sleeps 1 ms whenever a turn found nothing to do; together they
cap an association at a few hundred messages per second and dominate the
time of small instances (see PERFORMANCE.md).  Here the same loops block
instead until something happens:

- the DUL thread waits in ``select()`` on its socket and on a wake-up socket
  pair that is written whenever another thread queues a primitive for it
  (a C-STORE response, a release, an abort) or asks it to stop, with the
  ARTIM timer's remaining time as the timeout;
- the association thread waits on an :class:`threading.Event` set whenever
  the DUL delivers a DIMSE message or an ACSE primitive, or stops, with a
  short timeout so that the network (idle) timer is still checked.

Everything else (the state machine, PDU decoding, the order of the checks in
each loop, timers, the pause checkpoint used by ``send_*`` methods) is
pynetdicom's own code, unchanged.  The loops below are copies of
pynetdicom 3.0.4's with only the waits replaced, so they are tied to that
exact version: :func:`supported` refuses any other version, and
:class:`~dicombox.dimse.ae.Listener` then falls back to pynetdicom's own
server (slower, same behaviour).  This module touches no pynetdicom global:
only the listener's own associations use these classes.

A plain C-STORE request is also served on the DUL thread that received its
last fragment (:meth:`FastAssociation._serve_inline`) whenever the
association thread holds no other message: the request is not handed to that
thread, nor its response back, which cost two thread wake-ups per instance.
Requests are still answered in the order they came.

Reading a PDU also goes through :meth:`FastSocket.recv`, which fills one
buffer with ``recv_into`` instead of concatenating 4 KiB reads; the PDVs of
a P-DATA-TF are handed on as views of that buffer (:class:`_ReceivedPData`)
instead of the four copies pynetdicom's decoding makes; and a plain
successful C-STORE response is encoded directly (:class:`FastDIMSE`), byte
for byte what pynetdicom would send, without building a pydicom command set.

The command set of a plain C-STORE-RQ is read the same way
(:func:`parse_store_command`, :class:`_IncomingMessage`): a few ``struct``
reads instead of pydicom's dataset decoder, the checks pynetdicom's
``C_STORE`` setters make done once on the bytes, and the request and
response primitives filled with those values as they are
(:class:`_PlainStorage`).  pynetdicom's own decoding cost more per small
instance than receiving and storing it.  Any other command set (another
command, anything unusual or malformed), and every message while an
``EVT_DIMSE_RECV`` handler is bound (pynetdicom's INFO logging binds one),
goes through pynetdicom's code, so it is treated exactly as before.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import select
import socket
import struct
import threading
from collections.abc import Callable
from datetime import datetime
from io import BytesIO
from pathlib import Path
from typing import Any, NamedTuple, cast

import pynetdicom
from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import AE, _config, dimse_messages, evt
from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom._validators import validate_ae, validate_ui
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import C_STORE_RQ, C_STORE_RSP, DIMSEMessage
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import decode
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ, P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.service_class import StorageServiceClass, attempt
from pynetdicom.sop_class import uid_to_service_class
from pynetdicom.transport import (
    AssociationSocket,
    RequestHandler,
    ThreadedAssociationServer,
)
from pynetdicom.utils import make_target

try:
    import ssl
except ImportError:  # pragma: no cover - CPython always has ssl here
    ssl = None  # type: ignore[assignment]

LOGGER = logging.getLogger("dicombox.dimse.reactor")
# The copied loops log where pynetdicom's own would (the service turns those
# records into one line: a peer's garbage is not the box's failure).
DUL_LOGGER = logging.getLogger("pynetdicom.dul")
ASSOC_LOGGER = logging.getLogger("pynetdicom.association")
_UINT4 = struct.Struct(">I")
_UINT4_LE = struct.Struct("<I")
_PDU_HEADER = struct.Struct(">BBL")

#: The only pynetdicom version whose loops these classes reproduce.
PYNETDICOM_VERSION = "3.0.4"

#: Longest blocking wait of either loop: bounds how late a timer or a flag set
#: without a wake-up (pynetdicom sets some directly) can be noticed.
MAX_WAIT = 0.5


def supported() -> bool:
    """Whether the installed pynetdicom is the one these reactors copy."""
    return pynetdicom.__version__ == PYNETDICOM_VERSION


class _Waker:
    """A socket pair whose read end is readable after :meth:`wake`.

    Python socket objects refuse I/O once closed, so a late ``wake()`` from
    another thread can never write into a reused file descriptor.
    """

    def __init__(self):
        self.r, self.w = socket.socketpair()
        self.r.setblocking(False)
        self.w.setblocking(False)

    def wake(self) -> None:
        try:
            self.w.send(b"\0")
        except OSError:  # full (already awake) or closed (thread finished)
            pass

    def drain(self) -> None:
        try:
            while self.r.recv(4096):
                pass
        except OSError:
            pass

    def close(self) -> None:
        self.w.close()
        self.r.close()


class _NotifyingQueue(queue.Queue):
    """A queue that calls ``notify`` after each put made by a foreign thread."""

    def __init__(self, notify: Callable[[], None], owner: Callable[[], int | None]):
        super().__init__()
        self._notify = notify
        self._owner = owner

    def put(self, item, block=True, timeout=None):
        super().put(item, block, timeout)
        if threading.get_ident() != self._owner():
            self._notify()


class _MessageQueue(_NotifyingQueue):
    """The DIMSE message queue of a :class:`FastAssociation`: a plain C-STORE
    request completed on the DUL thread may be served right there
    (:meth:`FastAssociation._serve_inline`) instead of being queued for the
    association thread."""

    def __init__(self, assoc: FastAssociation):
        super().__init__(assoc._wake.set, lambda: None)
        self._assoc = assoc

    def put(self, item, block=True, timeout=None):
        if not self._assoc._serve_inline(item):
            super().put(item, block, timeout)


class FastSocket(AssociationSocket):
    """AssociationSocket reading a PDU into one buffer with ``recv_into``."""

    def recv(self, nr_bytes: int) -> bytearray:
        sock = cast(socket.socket, self.socket)
        buf = bytearray(nr_bytes)
        view = memoryview(buf)
        nr_read = 0
        while nr_read < nr_bytes:
            n = sock.recv_into(view[nr_read:], nr_bytes - nr_read)
            if not n:
                # Connection broken: return what was read, as pynetdicom does.
                del view
                del buf[nr_read:]
                return buf
            nr_read += n
        return buf


class _ReceivedPData(P_DATA_TF):
    """A received P-DATA-TF whose PDVs are views into the PDU's buffer.

    pynetdicom copies each PDV several times on its way to the file (the
    PDU as bytes, the PDU body, each item, the item's value); the state
    machine only ever calls :meth:`to_primitive` on it (DT-2, AR-6) or
    drops it, so the views are handed on as they are.
    """

    def __init__(self, pdvs: list):  # noqa: D107 - nothing of P_DATA_TF's own state
        self._pdvs = pdvs

    def to_primitive(self) -> P_DATA:
        primitive = P_DATA()
        primitive.presentation_data_value_list.extend(self._pdvs)
        return primitive


def _split_pdvs(body: memoryview) -> list | None:
    """(context ID, value) of each PDV item of a P-DATA-TF body, or ``None``
    if the items do not exactly fill it (PS3.8 9.3.5)."""
    pdvs, offset, end = [], 0, len(body)
    while offset < end:
        if end - offset < 6:
            return None
        (length,) = _UINT4.unpack_from(body, offset)
        if length < 2 or offset + 4 + length > end:
            return None
        pdvs.append((body[offset + 4], body[offset + 5:offset + 4 + length]))
        offset += 4 + length
    return pdvs if pdvs else None


class FastDUL(DULServiceProvider):
    """The DUL provider, blocking in ``select()`` instead of sleep-polling."""

    def __init__(self, assoc: FastAssociation):
        super().__init__(assoc)
        self._waker = _Waker()
        own = self._own_ident
        self.event_queue = _NotifyingQueue(self._waker.wake, own)
        self.to_provider_queue = _NotifyingQueue(self._waker.wake, own)
        self.to_user_queue = _NotifyingQueue(assoc._wake.set, lambda: None)

    def _own_ident(self) -> int | None:
        return self.ident

    def kill_dul(self) -> None:
        self._kill_thread = True
        self._waker.wake()

    def stop_dul(self) -> bool:
        if self.state_machine.current_state == "Sta1":
            self._kill_thread = True
            self._waker.wake()
            if threading.current_thread() is not self:
                while self.is_alive():
                    self.join(MAX_WAIT)
            return True
        return False

    def _read_pdu_data(self) -> None:
        """pynetdicom 3.0.4's ``_read_pdu_data``; a P-DATA-TF is split into
        views of its buffer instead of being decoded into copies, unless an
        ``EVT_DATA_RECV``/``EVT_PDU_RECV`` handler wants the decoded PDU."""
        assoc = self.assoc
        if assoc.get_handlers(evt.EVT_DATA_RECV) or assoc.get_handlers(evt.EVT_PDU_RECV):
            super()._read_pdu_data()
            return
        sock = cast("AssociationSocket", self.socket)
        try:
            header = sock.recv(6)
        except (OSError, TimeoutError) as exc:
            DUL_LOGGER.error("Connection closed before the entire PDU was received")
            DUL_LOGGER.exception(exc)
            self.event_queue.put("Evt17")
            return
        try:
            pdu_type, _, pdu_length = _PDU_HEADER.unpack(header)
        except struct.error:
            self.event_queue.put("Evt17")
            return
        if pdu_type not in (0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07):
            DUL_LOGGER.error(f"Unknown PDU type received '0x{pdu_type:02X}'")
            self.event_queue.put("Evt19")
            return
        try:
            body = sock.recv(pdu_length)
        except (OSError, TimeoutError) as exc:
            DUL_LOGGER.error("Connection closed before the entire PDU was received")
            DUL_LOGGER.exception(exc)
            self.event_queue.put("Evt17")
            return
        if len(body) != pdu_length:
            DUL_LOGGER.error(f"The received PDU is shorter than expected ({len(body) + 6} of "
                         f"{6 + pdu_length} bytes received)")
            self.event_queue.put("Evt17")
            return
        if pdu_type == 0x04:
            pdvs = _split_pdvs(memoryview(body))
            if pdvs is None:
                DUL_LOGGER.error("Unable to decode the received PDU data")
                self.event_queue.put("Evt19")
                return
            pdu, event = _ReceivedPData(pdvs), "Evt10"
        else:
            try:
                pdu, event = self._decode_pdu(bytearray(header) + body)
            except Exception as exc:
                DUL_LOGGER.error("Unable to decode the received PDU data")
                DUL_LOGGER.exception(exc)
                self.event_queue.put("Evt19")
                return
        self.event_queue.put(event)
        self._recv_pdu.put(pdu)

    def _wait(self) -> None:
        """Block until the socket is readable, another thread queued
        something, a stop was asked for, or the ARTIM timer may expire."""
        if self._kill_thread:
            return
        timeout = MAX_WAIT
        artim = self.artim_timer
        if artim.timeout is not None and artim._start_time is not None \
                and artim._end_time is None:
            timeout = max(0.0, min(timeout, artim.remaining))
        rlist: list[Any] = [self._waker.r]
        assoc_sock = self.socket
        sock = assoc_sock.socket if assoc_sock is not None else None
        if sock is not None and assoc_sock._is_connected:
            if ssl is not None and isinstance(sock, ssl.SSLSocket) and sock.pending():
                return
            rlist.append(sock)
        try:
            select.select(rlist, [], [], timeout)
        except (OSError, ValueError):
            # The socket was closed under us (an abort from another thread):
            # the next turn notices; meanwhile do not spin.
            try:
                select.select([self._waker.r], [], [], min(timeout, 0.01))
            except (OSError, ValueError):
                return
        self._waker.drain()

    def run_reactor(self) -> None:
        """pynetdicom 3.0.4's DUL loop with the idle sleep replaced by :meth:`_wait`
        (and an exception of the state machine ending it without a traceback)."""
        self._idle_timer.start()
        self.socket = cast("AssociationSocket", self.socket)
        try:
            while True:
                if not self.assoc._dul_ready.is_set():
                    self.assoc._dul_ready.set()

                if self._kill_thread:
                    break

                if self.artim_timer.expired:
                    self.event_queue.put("Evt18")

                try:
                    if self._process_recv_primitive():
                        pass
                    elif self._is_transport_event():
                        self._idle_timer.restart()
                except Exception as exc:
                    DUL_LOGGER.error("Exception in DUL.run(), aborting association")
                    DUL_LOGGER.exception(exc)
                    abort_pdu = A_ABORT_RQ()
                    abort_pdu.source = 0x02
                    abort_pdu.reason_diagnostic = 0x00
                    self.socket.send(abort_pdu.encode())
                    self.assoc.is_aborted = True
                    self.assoc.is_established = False
                    self.assoc._kill = True
                    self._kill_thread = True
                    return

                try:
                    event = self.event_queue.get(block=False)
                except queue.Empty:
                    self._wait()
                    continue

                try:
                    self.state_machine.do_action(event)
                except Exception:  # noqa: BLE001 - logged by the state machine
                    # The state machine has logged it (and stopped the DUL);
                    # pynetdicom's thread ends here with it unhandled, which
                    # prints a traceback for what a peer sent (a command set
                    # pynetdicom cannot decode).  End the same way, quietly.
                    break
        finally:
            self._waker.close()
            cast(FastAssociation, self.assoc)._wake.set()


def _uid(value) -> bytes:
    raw = str(value).encode("ascii")
    return raw + b"\0" if len(raw) % 2 else raw


def c_store_rsp_command(sop_class_uid, message_id: int, status: int,
                        sop_instance_uid) -> bytes:
    """The command set of a C-STORE-RSP without a data set (PS3.7 9.3.1.2),
    Implicit VR Little Endian, as pynetdicom encodes it."""
    def elem(element: int, value: bytes) -> bytes:
        return struct.pack("<HHI", 0x0000, element, len(value)) + value

    body = b"".join((
        elem(0x0002, _uid(sop_class_uid)),
        elem(0x0100, struct.pack("<H", 0x8001)),
        elem(0x0120, struct.pack("<H", message_id)),
        elem(0x0800, struct.pack("<H", 0x0101)),
        elem(0x0900, struct.pack("<H", status)),
        elem(0x1000, _uid(sop_instance_uid)),
    ))
    return elem(0x0000, struct.pack("<I", len(body))) + body


class _SentStoreResponse(C_STORE_RSP):
    """The C-STORE-RSP handed to ``EVT_DIMSE_SENT`` handlers after the fast
    path sent it: a real ``C_STORE_RSP`` whose pydicom command set is only
    built if a handler looks at it."""

    def __init__(self, primitive, context_id: int):  # noqa: D107 - no super(): lazy
        self.context_id = context_id
        self._primitive = primitive
        self._built = None

    def _message(self) -> C_STORE_RSP:
        if self._built is None:
            built = C_STORE_RSP()
            built.primitive_to_message(self._primitive)
            built.context_id = self.context_id
            self._built = built
        return self._built

    def __getattr__(self, name):
        # Only called for what __init__ did not set (command_set, data_set...).
        if name.startswith("__") or name in ("_built", "_primitive"):
            raise AttributeError(name)
        return getattr(self._message(), name)


# pynetdicom looks message types up by class name (message_to_primitive...).
_SentStoreResponse.__name__ = _SentStoreResponse.__qualname__ = "C_STORE_RSP"


_ELEMENT = struct.Struct("<HHI")
_US = struct.Struct("<H")
_VALID_UID = re.compile(rb"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*")
#: Bytes of an AE title that pydicom and pynetdicom take as they are:
#: printable ASCII without the backslash (the value separator).
_AE_BYTES = bytes(c for c in range(0x20, 0x7F) if c != 0x5C)
#: Elements of a C-STORE-RQ command set after its group length (PS3.7
#: 9.3.1.1), by element number: all of them, and those always present.
_STORE_RQ_ELEMENTS = frozenset((0x0002, 0x0100, 0x0110, 0x0700, 0x0800, 0x1000, 0x1030, 0x1031))
_STORE_RQ_REQUIRED = frozenset((0x0002, 0x0100, 0x0110, 0x0700, 0x0800, 0x1000))


class StoreCommand(NamedTuple):
    """The parameters of a C-STORE-RQ command set, checked as pynetdicom
    checks them when it sets them on its ``C_STORE`` primitive."""

    message_id: int
    priority: int
    sop_class_uid: UID
    sop_instance_uid: UID
    move_originator_ae: str | None
    move_originator_id: int | None


def _uid_value(raw: bytes) -> UID | None:
    """A UI value as pydicom decodes it, if it is a valid UID (PS3.5 9.1):
    then pynetdicom's validator accepts it whatever its settings, and does
    not warn about it."""
    if raw[-1:] == b"\0":
        raw = raw[:-1]
    if len(raw) > 64 or not _VALID_UID.fullmatch(raw):
        return None
    # Valid as it is: what UID() would return after validating it again.
    return str.__new__(UID, raw.decode("ascii"))


def _ae_value(raw: bytes) -> str | None:
    """An AE value as pydicom decodes it and pynetdicom's validator accepts
    it: 1 to 16 characters once the non-significant spaces are stripped."""
    if raw.translate(None, _AE_BYTES):
        return None
    value = raw.decode("ascii").strip()
    return value if 0 < len(value) <= 16 else None


def parse_store_command(data: bytes) -> StoreCommand | None:
    """The parameters of a plain C-STORE-RQ command set with a data set
    (Implicit VR Little Endian, group 0000), or ``None`` for anything else.

    "Plain" is what every Storage SCU sends: the group length first and
    exact, then only the elements of a C-STORE-RQ in ascending order, each
    once, with a single value that pynetdicom would accept without a word
    (Message ID, a priority of 0, 1 or 2, valid UIDs, an AE title it does
    not reject).  Every other command set, another command, an unusual
    encoding or a malformed one, gets ``None``: pynetdicom's own decoder
    then handles it, so whatever it does with it (a log line, an abort) is
    still what happens.
    """
    end = len(data)
    if end < 12:
        return None
    group, element, length = _ELEMENT.unpack_from(data, 0)
    if group or element or length != 4 or _UINT4_LE.unpack_from(data, 8)[0] != end - 12:
        return None
    values: dict[int, bytes] = {}
    offset, last = 12, 0
    while offset < end:
        if end - offset < 8:
            return None
        group, element, length = _ELEMENT.unpack_from(data, offset)
        offset += 8
        if group or element <= last or length > end - offset:
            return None
        values[element] = data[offset:offset + length]
        offset += length
        last = element
    if not values.keys() <= _STORE_RQ_ELEMENTS or not values.keys() >= _STORE_RQ_REQUIRED:
        return None
    shorts = {}
    for element in (0x0100, 0x0110, 0x0700, 0x0800, 0x1031):
        raw = values.get(element)
        if raw is not None:
            if len(raw) != 2:
                return None
            shorts[element] = _US.unpack(raw)[0]
    # CommandField C-STORE-RQ; a data set present (pynetdicom: any type but
    # 0x0101); a priority pynetdicom's C_STORE accepts.
    if shorts[0x0100] != 0x0001 or shorts[0x0800] == 0x0101 or shorts[0x0700] > 2:
        return None
    sop_class_uid = _uid_value(values[0x0002])
    sop_instance_uid = _uid_value(values[0x1000])
    if sop_class_uid is None or sop_instance_uid is None:
        return None
    move_ae = None
    if 0x1030 in values:
        move_ae = _ae_value(values[0x1030])
        if move_ae is None:
            return None
    return StoreCommand(shorts[0x0110], shorts[0x0700], sop_class_uid, sop_instance_uid,
                        move_ae, shorts.get(0x1031))


def _pdata(pdvs: list) -> P_DATA:
    primitive = P_DATA()
    primitive.presentation_data_value_list.extend(pdvs)
    return primitive


class _LazyCommandSet:
    """``command_set`` of the messages below: a pydicom ``Dataset`` built
    only if something looks at it (nothing does on the fast path), stored in
    the instance so it outlives a change of class by pynetdicom's code."""

    def __get__(self, message, owner=None):
        if message is None:
            return self
        command_set = message.__dict__.get("command_set")
        if command_set is None:
            command_set = message.__dict__["command_set"] = message._build_command_set()
        return command_set

    def __set__(self, message, value) -> None:
        message.__dict__["command_set"] = value


class _ReceivedStore(C_STORE):
    """A C-STORE request primitive built by :class:`_StoreRequest`: a plain
    ``C_STORE`` whose values were checked when its command set was read, so
    :class:`_PlainStorage` may copy them into the response as they are."""


class _StoreRequest(C_STORE_RQ):
    """A C-STORE-RQ message whose command set was read by
    :func:`parse_store_command`; its primitive is built from those values,
    without pynetdicom setting (and validating again) each one."""

    command_set = _LazyCommandSet()
    _command: StoreCommand

    def _build_command_set(self) -> Dataset:
        return decode(self.encoded_command_set, True, True)

    def message_to_primitive(self) -> C_STORE:
        """What ``DIMSEMessage.message_to_primitive`` returns for it."""
        command = self._command
        primitive = _ReceivedStore()
        primitive._message_id = command.message_id
        primitive._priority = command.priority
        primitive._affected_sop_class_uid = command.sop_class_uid
        primitive._affected_sop_instance_uid = command.sop_instance_uid
        primitive._move_originator_application_entity_title = command.move_originator_ae
        primitive._move_originator_message_id = command.move_originator_id
        primitive.DataSet = self.data_set
        primitive._context_id = self.context_id
        primitive._dataset_path = self._data_set_path
        primitive._dataset_file = self._data_set_file
        return primitive


class _IncomingMessage(DIMSEMessage):
    """A DIMSE message being received by an acceptor, whose command set is
    read by :func:`parse_store_command` when it is a plain C-STORE-RQ.

    ``decode_msg`` reads the PDVs up to the last fragment of the command
    set.  A plain C-STORE-RQ whose fragments all came on one accepted
    presentation context becomes a :class:`_StoreRequest`, and its data set
    file is created exactly as pynetdicom's ``decode_msg`` does (through the
    same module globals, which :mod:`dicombox.dimse.receive` may replace).
    Anything else, from that PDV on, is handed to pynetdicom's
    ``decode_msg``, which then treats the message as it always does; so do
    the PDVs after the command set (the data set).
    """

    command_set = _LazyCommandSet()

    def __init__(self):  # noqa: D107 - DIMSEMessage's, without its Dataset
        self.context_id = None
        self.encoded_command_set = BytesIO()
        self.data_set = BytesIO()
        self._data_set_path = None
        self._data_set_file = None
        # False once a PDV was handed to pynetdicom: it goes on with the rest.
        self._fast = True
        self._fragment_contexts: set[int] = set()

    def _build_command_set(self) -> Dataset:
        return Dataset()  # as DIMSEMessage() starts

    def decode_msg(self, primitive: P_DATA, assoc=None) -> bool:
        if not self._fast or primitive.__class__ is not P_DATA:
            return DIMSEMessage.decode_msg(self, primitive, assoc)
        pdvs = primitive.presentation_data_value_list
        for index, (context_id, data) in enumerate(pdvs):
            if not data or not data[0] & 1:
                break  # a data set before its command set: pynetdicom's business
            if not data[0] & 2:
                self.encoded_command_set.write(data[1:])
                self._fragment_contexts.add(context_id)
                continue
            if not self._store_request(context_id, data, assoc):
                break
            rest = pdvs[index + 1:]
            return DIMSEMessage.decode_msg(self, _pdata(rest), assoc) if rest else False
        else:
            return False
        self._fast = False
        return DIMSEMessage.decode_msg(self, _pdata(pdvs[index:]), assoc)

    def _store_request(self, context_id: int, data, assoc) -> bool:
        """Take the last command fragment ``data`` as the end of a plain
        C-STORE-RQ, if it is one (see :class:`_IncomingMessage`)."""
        if assoc is None or context_id not in assoc._accepted_cx \
                or not self._fragment_contexts <= {context_id}:
            return False
        fragment = bytes(data[1:])
        encoded = self.encoded_command_set
        command = parse_store_command(
            encoded.getvalue() + fragment if encoded.tell() else fragment)
        if command is None:
            return False
        encoded.write(fragment)
        self.context_id = context_id
        self._command = command
        self.__class__ = _StoreRequest
        if _config.STORE_RECV_CHUNKED_DATASET:
            # pynetdicom 3.0.4's decode_msg, step by step.
            self._data_set_file = dimse_messages.NamedTemporaryFile(
                delete=False, mode="wb", suffix=".dcm")
            self._data_set_path = Path(self._data_set_file.name)
            self._data_set_file.write(b"\x00" * 128)
            self._data_set_file.write(b"DICM")
            cx = assoc._accepted_cx[context_id]
            dimse_messages.write_file_meta_info(
                self._data_set_file,
                dimse_messages.create_file_meta(
                    sop_class_uid=command.sop_class_uid,
                    sop_instance_uid=command.sop_instance_uid,
                    transfer_syntax=cx.transfer_syntax[0]))
        return True


# pynetdicom looks message types up by class name (message_to_primitive,
# msg_type...).
_ReceivedStore.__name__ = _ReceivedStore.__qualname__ = "C_STORE"
_StoreRequest.__name__ = _StoreRequest.__qualname__ = "C_STORE_RQ"
_IncomingMessage.__name__ = _IncomingMessage.__qualname__ = "DIMSEMessage"


class _PlainStorage(StorageServiceClass):
    """pynetdicom 3.0.4's Storage Service Class SCP for a :class:`_ReceivedStore`.

    The only difference: the response's Message ID and UIDs are the
    request's, copied as they are instead of through ``C_STORE``'s setters
    (which parse and validate each UID twice more, costing more than
    everything else done to answer a small instance).
    """

    def SCP(self, req: C_STORE, context) -> None:
        rsp = C_STORE()
        rsp._message_id = rsp._message_id_being_responded_to = req._message_id
        rsp._affected_sop_instance_uid = req._affected_sop_instance_uid
        rsp._affected_sop_class_uid = req._affected_sop_class_uid

        cx_id = cast(int, context.context_id)
        with attempt(rsp, self.dimse, cx_id, self.assoc) as ctx:
            ctx.error_msg = "Exception in handler bound to 'evt.EVT_C_STORE'"
            ctx.error_status = 0xC211
            rsp_status = evt.trigger(ctx.assoc, evt.EVT_C_STORE,
                                     {"request": req, "context": context.as_tuple})
            if req._dataset_file:
                req._dataset_file.close()
                try:
                    # Created with delete=False.
                    os.unlink(req._dataset_file.name)
                except OSError:
                    pass

        if not ctx.success or not self.assoc.is_established:
            return
        rsp = self.validate_status(rsp_status, rsp)
        self.dimse.send_msg(rsp, cx_id)


class FastDIMSE(DIMSEServiceProvider):
    """Decodes the common C-STORE request (:class:`_IncomingMessage`) and
    sends the common C-STORE response (a status, no comment) directly."""

    def receive_primitive(self, primitive) -> None:
        # A message's first P-DATA decides who decodes it: pynetdicom alone
        # if an EVT_DIMSE_RECV handler wants its decoded command set or the
        # application replaced pynetdicom's validators.
        if self.message is None:
            assoc = self.assoc
            if assoc.mode == MODE_ACCEPTOR and not assoc.get_handlers(evt.EVT_DIMSE_RECV) \
                    and _config.VALIDATORS.get("UI") is validate_ui \
                    and _config.VALIDATORS.get("AE") is validate_ae:
                self.message = _IncomingMessage()
        super().receive_primitive(primitive)

    def send_msg(self, primitive, context_id: int) -> None:
        if (type(primitive) is C_STORE and primitive.MessageIDBeingRespondedTo is not None
                and primitive.ErrorComment is None and primitive.OffendingElement is None
                and primitive.Status is not None):
            command = c_store_rsp_command(
                primitive.AffectedSOPClassUID, primitive.MessageIDBeingRespondedTo,
                primitive.Status, primitive.AffectedSOPInstanceUID)
            limit = self.maximum_pdu_size
            if not limit or len(command) + 6 <= limit:
                if self.assoc.get_handlers(evt.EVT_DIMSE_SENT):
                    evt.trigger(self.assoc, evt.EVT_DIMSE_SENT,
                                {"message": _SentStoreResponse(primitive, context_id)})
                pdata = P_DATA()
                # Message control header 0x03: command information, last fragment.
                pdata.presentation_data_value_list.append([context_id, b"\x03" + command])
                self.dul.send_pdu(pdata)
                return
        super().send_msg(primitive, context_id)


class FastAssociation(Association):
    """An association whose reactor waits on events, not sleeps."""

    def __init__(self, ae, mode: str):
        super().__init__(ae, mode)
        self._become_fast()

    def _become_fast(self) -> None:
        """Swap in the event-driven providers (before the threads start)."""
        self._wake = threading.Event()
        self.dul = FastDUL(self)
        self.dimse = FastDIMSE(self)
        self.dimse.msg_queue = _MessageQueue(self)
        # Whether the association thread holds a message it took from the
        # queue (guarded by _serve_lock, with the taking itself).
        self._serving = False
        self._serve_lock = threading.Lock()
        self._serving_inline = False
        # The timeouts were applied to the timers of the DUL just replaced.
        self.acse_timeout = self.acse_timeout
        self.network_timeout = self.network_timeout

    def kill(self) -> None:
        self._kill = True
        self._wake.set()
        super().kill()

    def _serve_request(self, msg, context_id: int) -> None:
        """pynetdicom 3.0.4's ``_serve_request``, with a :class:`_ReceivedStore`
        that goes to the Storage Service Class served by :class:`_PlainStorage`."""
        context = self._plain_storage_context(msg, context_id)
        if context is None:
            super()._serve_request(msg, context_id)
            return
        try:
            self.dimse.cancel_req = {}
            self._is_paused = True
            _PlainStorage(self).SCP(msg, context)
            self._is_paused = False
            self.dimse.cancel_req = {}
        except Exception as exc:
            ASSOC_LOGGER.exception(exc)
            self.abort()

    def _plain_storage_context(self, msg, context_id: int):
        """The accepted presentation context of a :class:`_ReceivedStore` that
        the Storage Service Class serves, or ``None`` (pynetdicom's business)."""
        if type(msg) is not _ReceivedStore or self._sent_release or not msg.is_valid_request:
            return None
        class_uid = msg.AffectedSOPClassUID
        try:
            class_uid = self.acceptor.accepted_common_extended[class_uid][0]
        except KeyError:
            pass
        if _config.UNRESTRICTED_STORAGE_SERVICE:
            class_uid = "1.2.840.10008.5.1.4.1.1.1"
        context = self._accepted_cx.get(context_id)
        if context is None or uid_to_service_class(class_uid) is not StorageServiceClass:
            return None
        return context

    def _serve_inline(self, item) -> bool:
        """Serve a plain C-STORE request on the DUL thread that completed it.

        Handing each request to the association thread and its response back
        to the DUL thread cost two thread wake-ups per instance, a fifth of
        the time a small instance spends in the box.  This is done only when
        the association thread holds no message, queued or being served, so
        requests are still answered in the order they came; anything else
        goes to the queue as before.  The handler's outcome is answered
        exactly as on the association thread; an error past the handler
        aborts the association without waiting (the DUL thread cannot wait
        for itself).
        """
        context_id, msg = item
        if type(msg) is not _ReceivedStore or threading.current_thread() is not self.dul \
                or not self.is_established or self._kill:
            return False
        with self._serve_lock:
            if self._serving or self.dimse.msg_queue.qsize():
                return False
        context = self._plain_storage_context(msg, context_id)
        if context is None:
            return False
        # The peer waits for this answer, it is not idle: the association
        # thread leaves the network timer alone meanwhile, and it starts again
        # once the answer is on its way.
        self._serving_inline = True
        try:
            _PlainStorage(self).SCP(msg, context)
        except Exception as exc:
            ASSOC_LOGGER.exception(exc)
            self.abort(block=False)
        finally:
            self._serving_inline = False
            self.dul._idle_timer.restart()
        return True

    def _wait_timeout(self) -> float:
        idle = self.dul._idle_timer
        if idle.timeout is None:
            return MAX_WAIT
        return max(0.0, min(MAX_WAIT, idle.remaining))

    def _run_reactor(self) -> None:
        """pynetdicom 3.0.4's acceptor loop with its 1 ms sleep replaced by a wait."""
        self._is_paused = False
        busy = True
        while not self._kill:
            # Paused while waiting: the queues are not touched until the
            # checkpoint below, exactly as during pynetdicom's sleep.
            self._is_paused = True
            if not busy:
                self._wake.wait(self._wait_timeout())
            self._wake.clear()
            self._reactor_checkpoint.wait()
            self._is_paused = False

            with self._serve_lock:
                context_id, msg = self.dimse.get_msg(block=False)
                self._serving = busy = msg is not None
            try:
                if msg:
                    self._serve_request(msg, cast(int, context_id))
                    # The peer waited for this answer; it was not idle.
                    self.dul._idle_timer.restart()
            finally:
                self._serving = False

            if self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                ASSOC_LOGGER.info("Association Released")
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return

            if self.acse.is_aborted():
                log_msg = "Association Aborted"
                if self.acse.is_aborted("a-p-abort"):
                    log_msg += " (A-P-ABORT)"
                ASSOC_LOGGER.info(log_msg)
                self.dul.receive_pdu(wait=False)
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return

            if not self.dul.is_alive():
                self.kill()
                return

            if self.dul.idle_timer_expired() and not self._serving_inline:
                ASSOC_LOGGER.error("Network timeout reached")
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()

                self.kill()
                return


class FastRequestHandler(RequestHandler):
    """Creates a :class:`FastAssociation` for each connection."""

    def _create_association(self) -> Association:
        """pynetdicom 3.0.4's ``RequestHandler._create_association``, with
        the association and socket classes of this module."""
        from copy import deepcopy

        assoc = FastAssociation(self.ae, MODE_ACCEPTOR)
        assoc._server = self.server

        timestamp = datetime.strftime(datetime.now(), "%Y%m%d%H%M%S")
        assoc.name = f"AcceptorThread@{timestamp}"

        sock = FastSocket(assoc, client_socket=self.request)
        assoc.set_socket(sock)

        assoc.acceptor.maximum_length = self.ae.maximum_pdu_size
        assoc.acceptor.ae_title = self.server.ae_title
        assoc.acceptor.address_info = self.local
        assoc.acceptor.implementation_class_uid = self.ae.implementation_class_uid
        assoc.acceptor.implementation_version_name = self.ae.implementation_version_name
        assoc.acceptor.supported_contexts = deepcopy(self.server.contexts)

        assoc.requestor.address_info = self.remote

        for event in self.server._handlers:
            if event.is_intervention and self.server._handlers[event]:
                assoc.bind(event, *self.server._handlers[event])
            elif isinstance(event, evt.NotificationEvent):
                for handler in self.server._handlers[event]:
                    handler = cast(evt._HandlerBase, handler)
                    assoc.bind(event, handler[0], handler[1])

        return assoc


class FastAE(AE):
    """An AE whose *requested* associations (``associate()``) use the
    event-driven reactors too: a Storage SCU otherwise waits up to a
    millisecond in each of pynetdicom's loops for every C-STORE it sends.

    ``AE.associate`` builds a plain ``Association`` and then asks
    ``_create_socket`` for its socket, before any thread runs; that is where
    the association becomes a :class:`FastAssociation`.  On another
    pynetdicom version this is a plain AE.
    """

    def _create_socket(self, assoc, address, tls_args):
        if not supported() or not isinstance(assoc, Association) or assoc.is_alive():
            return super()._create_socket(assoc, address, tls_args)
        assoc.__class__ = FastAssociation
        cast(FastAssociation, assoc)._become_fast()
        sock = FastSocket(assoc, address=address)
        sock.tls_args = tls_args
        return sock


class FastAssociationServer(ThreadedAssociationServer):
    """A threaded association server using :class:`FastRequestHandler`."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("request_handler", FastRequestHandler)
        super().__init__(*args, **kwargs)


def start_server(ae, address, evt_handlers: list) -> ThreadedAssociationServer:
    """``ae.start_server(address, block=False, evt_handlers=...)`` with the
    event-driven reactors when the pynetdicom version allows it."""
    if not supported():
        LOGGER.warning("pynetdicom %s is not %s: using its own (sleep-polling) reactors",
                       pynetdicom.__version__, PYNETDICOM_VERSION)
        return ae.start_server(address, block=False, evt_handlers=evt_handlers)
    server = ae.make_server(address, evt_handlers=evt_handlers,
                            server_class=FastAssociationServer)
    timestamp = datetime.strftime(datetime.now(), "%Y%m%d%H%M%S")
    thread = threading.Thread(target=make_target(server.serve_forever),
                              name=f"AcceptorServer@{timestamp}", daemon=True)
    thread.start()
    ae._servers.append(server)
    return server


__all__ = ["FastAE", "FastAssociation", "FastAssociationServer", "FastDIMSE", "FastDUL",
           "FastRequestHandler", "c_store_rsp_command",
           "FastSocket", "PYNETDICOM_VERSION", "start_server", "supported"]
