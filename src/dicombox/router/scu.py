"""A synchronous Storage SCU: one association, driven by the thread that sends on it.

Why not pynetdicom's ``AE.associate``: each of its associations runs two
threads of its own (the DUL and the association reactor), and every C-STORE
crosses them several times: the sender queues each PDU for the DUL thread
and wakes it, the DUL thread queues the response for the reactor and the
sender, each step a hand-over of the GIL.  While the router received and
forwarded 2000 small instances at once, the forwarding side cost about 140
futex calls per instance, and on two cores the receiving threads waited for
the GIL behind them.  Here, as in DCMTK's storescu, the sending thread writes
the PDUs and reads the response itself: a small instance is one ``send``
and one ``recv``.

Scope: what a Storage SCU needs of PS3.8: A-ASSOCIATE (request, accept,
reject), P-DATA-TF, A-RELEASE (either side) and A-ABORT; one operation at a
time (no asynchronous operations window), no role selection, no extended
negotiation.  The association PDUs are encoded and decoded by pynetdicom's
own PDU classes; the C-STORE command sets (PS3.7 9.3.1) are encoded and read
here, in Implicit VR Little Endian.

Memory: the data set goes from its file to the socket as P-DATA-TF PDUs of
the size the peer accepts (at most :data:`UNLIMITED_PEER_PDU`), sent in
blocks of about :data:`BLOCK` bytes: never decoded and never held whole,
whatever the size of the instance.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

#: Bytes of a data set read and sent at a time.
BLOCK = 256 << 10
#: Longest PDU sent: towards a peer that announced no limit, or a higher one (a
#: fragment is read whole before it is sent).
UNLIMITED_PEER_PDU = 1 << 20
#: Longest PDU accepted from the peer when ``max_pdu`` is 0 (unlimited): a C-STORE
#: response is a few hundred bytes; anything this long is not one.
MAX_RECEIVED_PDU = 64 << 20

A_ASSOCIATE_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ = 0x01, 0x02, 0x03
P_DATA_TF, A_RELEASE_RQ, A_RELEASE_RP, A_ABORT = 0x04, 0x05, 0x06, 0x07

_PDU_HEADER = struct.Struct(">BBL")
_PDV_HEADER = struct.Struct(">LBB")        # item length, context ID, message control header
_ELEMENT = struct.Struct("<HHL")           # Implicit VR LE: group, element, length
_RELEASE_RQ = b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00"
_RELEASE_RP = b"\x06\x00\x00\x00\x00\x04\x00\x00\x00\x00"
_ABORT = b"\x07\x00\x00\x00\x00\x04\x00\x00\x00\x00"   # source: service user, no reason

C_STORE_RQ, C_STORE_RSP = 0x0001, 0x8001
NO_DATA_SET = 0x0101
PRIORITY_MEDIUM = 0x0000


class AssociationError(Exception):
    """No association: the connection failed, or the peer rejected or aborted it."""


class _ReadError(Exception):
    """The file being sent could not be read to its end."""


class AssociationLost(Exception):
    """The association ended under a request (abort, closed connection, timeout,
    a PDU that makes no sense here); the request's outcome is unknown."""


@dataclass(frozen=True)
class Timeouts:
    connect: float = 10.0
    acse: float = 30.0
    dimse: float = 120.0
    network: float = 120.0


@dataclass(frozen=True)
class StoreResponse:
    status: int
    error_comment: str = ""


# -- command sets ---------------------------------------------------------------------


def _uid(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\0" if len(raw) % 2 else raw


def _element(element: int, value: bytes) -> bytes:
    return _ELEMENT.pack(0x0000, element, len(value)) + value


def c_store_rq(message_id: int, sop_class_uid: str, sop_instance_uid: str,
               priority: int = PRIORITY_MEDIUM) -> bytes:
    """The command set of a C-STORE-RQ (PS3.7 9.3.1.1), Implicit VR Little Endian."""
    body = b"".join((
        _element(0x0002, _uid(sop_class_uid)),
        _element(0x0100, struct.pack("<H", C_STORE_RQ)),
        _element(0x0110, struct.pack("<H", message_id)),
        _element(0x0700, struct.pack("<H", priority)),
        _element(0x0800, struct.pack("<H", 0x0001)),      # a data set follows
        _element(0x1000, _uid(sop_instance_uid)),
    ))
    return _element(0x0000, struct.pack("<L", len(body))) + body


def read_command(data: bytes) -> dict[int, bytes]:
    """Element number -> value of a command set (group 0000, Implicit VR LE)."""
    out, offset, end = {}, 0, len(data)
    while offset < end:
        if end - offset < 8:
            raise ValueError("truncated command element")
        group, element, length = _ELEMENT.unpack_from(data, offset)
        offset += 8
        if group != 0x0000 or length > end - offset:
            raise ValueError(f"invalid command element ({group:04X},{element:04X})")
        out[element] = bytes(data[offset:offset + length])
        offset += length
    return out


def _us(command: dict[int, bytes], element: int) -> int | None:
    value = command.get(element)
    return struct.unpack("<H", value[:2])[0] if value and len(value) >= 2 else None


# -- the data set of a Part 10 file -----------------------------------------------------


def dataset_offset(head) -> int:
    """Where the data set starts in a DICOM Part 10 file whose first bytes are
    ``head``: after the preamble, the ``DICM`` prefix and the File Meta
    Information (group 0002, Explicit VR Little Endian)."""
    if len(head) < 132 or head[128:132] != b"DICM":
        raise ValueError("not a DICOM Part 10 file (no DICM prefix)")
    offset, end = 132, len(head)
    while end - offset >= 8:
        group, element = struct.unpack_from("<HH", head, offset)
        if group != 0x0002:
            return offset
        vr = bytes(head[offset + 4:offset + 6])
        if vr in _LONG_VRS:
            if end - offset < 12:
                break
            length = struct.unpack_from("<L", head, offset + 8)[0]
            offset += 12 + length
        else:
            length = struct.unpack_from("<H", head, offset + 6)[0]
            if element == 0x0000 and vr == b"UL" and length == 4:
                # The group length says where the group ends: no need to walk it.
                return offset + 12 + struct.unpack_from("<L", head, offset + 8)[0]
            offset += 8 + length
    if offset == end:
        return offset                  # nothing but the File Meta Information
    raise ValueError("truncated File Meta Information (or longer than "
                     f"{BLOCK >> 10} KB)")


_LONG_VRS = {b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"UC", b"UR", b"OD", b"OL", b"OV"}


# -- the association ----------------------------------------------------------------------


class StorageAssociation:
    """An established association on which this thread sends C-STOREs."""

    def __init__(self, sock: socket.socket, where: str, timeouts: Timeouts, max_pdu: int,
                 peer_max_pdu: int, accepted: dict[str, dict[str, int]]):
        self._sock: socket.socket | None = sock
        self.where = where
        self.timeouts = timeouts
        self._recv_limit = max(max_pdu, 1 << 16) if max_pdu else MAX_RECEIVED_PDU
        self.peer_max_pdu = min(peer_max_pdu or UNLIMITED_PEER_PDU, UNLIMITED_PEER_PDU)
        #: abstract syntax -> {transfer syntax: presentation context ID}, in the order
        #: the contexts were proposed.
        self.accepted = accepted
        self._message_id = 0
        # Blocking from now on, with the kernel's send/receive timeouts: a Python
        # socket timeout would poll() before every send and receive.
        sock.settimeout(None)
        self._timeout: float | None = None
        self._reader = _Reader(sock)

    # -- establishment ----------------------------------------------------------------

    @classmethod
    def request(cls, host: str, port: int, calling_ae_title: str, called_ae_title: str,
                contexts: Sequence[tuple[str, str]], max_pdu: int, timeouts: Timeouts,
                implementation: tuple[str, str]) -> StorageAssociation:
        """Connect and negotiate one context per (abstract syntax, transfer syntax).

        Raises :class:`AssociationError`.  An association whose every context
        was rejected is returned with nothing in :attr:`accepted`.
        """
        where = f"{called_ae_title}@{host}:{port}"
        if not 0 < len(contexts) <= 128:
            raise ValueError("between 1 and 128 presentation contexts are needed")
        proposed = {2 * i + 1: ctx for i, ctx in enumerate(contexts)}
        rq = _associate_rq(calling_ae_title, called_ae_title, proposed, max_pdu, implementation)
        try:
            sock = socket.create_connection((host, port), timeout=timeouts.connect)
        except OSError as exc:
            raise AssociationError(f"cannot connect to {where}: {exc.strerror or exc}"
                                   ) from None
        try:
            # Nagle off, as on the listeners (see PERFORMANCE.md).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(timeouts.acse)
            sock.sendall(rq)
            kind, body = _read_pdu(sock, MAX_RECEIVED_PDU)
        except (OSError, AssociationLost) as exc:
            sock.close()
            if isinstance(exc, TimeoutError):
                raise AssociationError(f"no association response from {where} within "
                                       f"{timeouts.acse:g} s") from None
            raise AssociationError(f"association aborted by {where}") from None
        if kind == A_ASSOCIATE_AC:
            try:
                peer_max_pdu, accepted = _accepted(body, proposed)
            except (ValueError, KeyError, AttributeError, TypeError, struct.error):
                _abort_quietly(sock)
                raise AssociationError(f"invalid association response from {where}") from None
            return cls(sock, where, timeouts, max_pdu, peer_max_pdu, accepted)
        if kind == A_ASSOCIATE_RJ:
            sock.close()
            raise AssociationError(f"association rejected by {where} ({_rejection(body)})")
        if kind == A_ABORT:
            sock.close()
            raise AssociationError(f"association aborted by {where}")
        _abort_quietly(sock)
        raise AssociationError(f"unexpected answer from {where} to the association request")

    # -- state ---------------------------------------------------------------------------

    @property
    def established(self) -> bool:
        """Up as far as this side knows (no I/O: safe from any thread)."""
        return self._sock is not None

    def is_open(self) -> bool:
        """Whether the association is still up.  A release, abort or close the peer
        sent while it was idle is taken care of here (a release is answered)."""
        sock = self._sock
        if sock is None:
            return False
        try:
            readable = self._reader.pending() or select.select([sock], [], [], 0)[0]
        except (OSError, ValueError):
            self._close()
            return False
        if readable:
            try:
                self._wait(self.timeouts.network)
                kind, _ = self._reader.read_pdu(self._recv_limit)
            except (OSError, AssociationLost):
                self._close()
                return False
            if kind == A_RELEASE_RQ:
                self._send_quietly(_RELEASE_RP)
                self._close()
            elif kind == A_ABORT:
                self._close()
            else:
                self.abort()
        return self._sock is not None

    # -- C-STORE -------------------------------------------------------------------------

    def send_c_store(self, path: Path, sop_class_uid: str, sop_instance_uid: str,
                     transfer_syntax_uid: str) -> StoreResponse:
        """Send the data set of the Part 10 file ``path`` and wait for the response.

        Raises :class:`AssociationLost` (the association is then closed),
        ``ValueError`` when the file or the context does not allow sending it
        (nothing was sent), ``OSError`` when the file cannot be opened.
        """
        sock = self._sock
        if sock is None:
            raise AssociationLost("the association is closed")
        context_id = self.accepted.get(sop_class_uid, {}).get(transfer_syntax_uid)
        if context_id is None:
            raise ValueError(f"no accepted presentation context for {sop_class_uid} in "
                             f"{transfer_syntax_uid}")
        with open(path, "rb", buffering=0) as f:
            size = os.fstat(f.fileno()).st_size
            # Most instances are read whole here, in one call.
            head = memoryview(_read(f, min(size, BLOCK)))
            offset = dataset_offset(head)
            self._message_id = self._message_id % 0xFFFF + 1
            message_id = self._message_id
            command = c_store_rq(message_id, sop_class_uid, sop_instance_uid)
            try:
                self._send_message(sock, head[offset:], f, size - len(head), context_id,
                                   command)
            except _ReadError as exc:
                self.abort()
                raise AssociationLost(f"reading {path} failed while sending it: {exc}"
                                      ) from None
            except OSError as exc:
                self.abort()
                raise AssociationLost(_why(exc, self.where, "sending the C-STORE request")
                                      ) from None
        return self._response(sock, message_id)

    def _send_message(self, sock: socket.socket, data: memoryview, f, rest: int,
                      context_id: int, command: bytes) -> None:
        """The command, then the data set: ``data`` (already read) and the
        ``rest`` bytes still in ``f``, as P-DATA-TF PDUs sent in blocks."""
        self._wait(self.timeouts.network)
        fragment = max(1, self.peer_max_pdu - 6)
        buf = bytearray()
        _append_pdvs(buf, context_id, command, 0x01, fragment)
        for part, last in _fragments(data, f, rest, fragment):
            n = len(part)
            buf += _PDU_HEADER.pack(P_DATA_TF, 0, n + 6)
            buf += _PDV_HEADER.pack(n + 2, context_id, 0x02 if last else 0x00)
            buf += part
            if last or len(buf) >= BLOCK:
                sock.sendall(buf)
                buf.clear()

    def _response(self, sock: socket.socket, message_id: int) -> StoreResponse:
        command = bytearray()
        data_follows = False
        try:
            self._wait(self.timeouts.dimse)
            while True:
                kind, body = self._reader.read_pdu(self._recv_limit)
                if kind != P_DATA_TF:
                    self._peer_ended(kind)
                for _, mch, value in _pdvs(body):
                    if mch & 0x01:
                        command += value
                        if mch & 0x02:
                            fields = read_command(command)
                            data_follows = _us(fields, 0x0800) != NO_DATA_SET
                            if not data_follows:
                                return self._store_response(fields, message_id)
                    elif data_follows and mch & 0x02:
                        # A data set after the response (not expected of a C-STORE-RSP):
                        # read and ignored.
                        return self._store_response(read_command(command), message_id)
        except AssociationLost:
            self.abort()
            raise
        except OSError as exc:
            if _timed_out(exc):
                self.abort()
                raise AssociationLost(f"no C-STORE response within {self.timeouts.dimse:g}"
                                      " s (dimse_timeout)") from None
            self.abort()
            raise AssociationLost(_why(exc, self.where, "waiting for the C-STORE response")
                                  ) from None
        except ValueError as exc:
            self.abort()
            raise AssociationLost(f"invalid response from {self.where}: {exc}") from None

    def _store_response(self, fields: dict[int, bytes], message_id: int) -> StoreResponse:
        if _us(fields, 0x0100) != C_STORE_RSP or _us(fields, 0x0120) != message_id:
            raise ValueError("not the response to the C-STORE request sent")
        status = _us(fields, 0x0900)
        if status is None:
            raise ValueError("C-STORE response without a status")
        comment = fields.get(0x0902, b"").decode("ascii", "replace").strip(" \0")
        return StoreResponse(status, comment)

    def _peer_ended(self, kind: int) -> None:
        """A PDU other than P-DATA while a response was awaited: the association ends."""
        if kind == A_ABORT:
            self._close()
            raise AssociationLost(f"association aborted by {self.where}")
        if kind == A_RELEASE_RQ:
            self._send_quietly(_RELEASE_RP)
            self._close()
            raise AssociationLost(f"association released by {self.where} before it "
                                  "answered")
        self.abort()
        raise AssociationLost(f"unexpected PDU type 0x{kind:02X} from {self.where}")

    # -- ending --------------------------------------------------------------------------

    def release(self) -> None:
        """A-RELEASE, waiting ``acse`` seconds for the reply; an abort if it fails."""
        sock = self._sock
        if sock is None:
            return
        try:
            self._wait(self.timeouts.acse)
            sock.sendall(_RELEASE_RQ)
            while True:
                kind, _ = self._reader.read_pdu(self._recv_limit)
                if kind in (A_RELEASE_RP, A_ABORT):
                    break
                if kind == A_RELEASE_RQ:       # release collision (PS3.8 7.2.2)
                    sock.sendall(_RELEASE_RP)
                    break
        except (OSError, AssociationLost, ValueError):
            self.abort()
            return
        self._close()

    def abort(self) -> None:
        if self._sock is not None:
            self._send_quietly(_ABORT)
            self._close()

    def _send_quietly(self, pdu: bytes) -> None:
        try:
            assert self._sock is not None
            self._wait(1.0)
            self._sock.sendall(pdu)
        except OSError:
            pass

    def _wait(self, seconds: float) -> None:
        """Let sends and receives on the socket block at most ``seconds``."""
        if seconds != self._timeout and self._sock is not None:
            whole = int(seconds)
            tv = struct.pack("ll", whole, int((seconds - whole) * 1e6))
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
            self._timeout = seconds

    def _close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None


# -- PDUs ----------------------------------------------------------------------------------


def _fragments(data: memoryview, f, rest: int, size: int):
    """(fragment, is the last) of at most ``size`` bytes: ``data``, then the
    ``rest`` bytes read from ``f`` a block at a time."""
    while True:
        while len(data) < size and rest:
            more = _read(f, min(rest, max(BLOCK, size)))
            rest -= len(more)
            data = memoryview(bytes(data) + more) if len(data) else memoryview(more)
        if len(data) <= size and not rest:
            yield data, True
            return
        yield data[:size], False
        data = data[size:]


def _read(f, n: int) -> bytes:
    """``n`` bytes of the (unbuffered) file ``f``."""
    try:
        data = f.read(n)
        while len(data) < n:
            more = f.read(n - len(data))
            if not more:
                raise _ReadError(f"the file ended {n - len(data)} bytes early")
            data += more
    except OSError as exc:
        raise _ReadError(exc.strerror or str(exc)) from None
    return data


def _recv_exact(sock: socket.socket, n: int) -> bytearray:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if not k:
            raise ConnectionAbortedError(errno.ECONNABORTED, "closed by the peer")
        got += k
    return buf


class _Reader:
    """PDUs read from a socket in as few calls as possible: a C-STORE response
    usually arrives whole, and is then one ``recv``."""

    SIZE = 1 << 16

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = bytearray(self.SIZE)
        self.start = self.end = 0

    def pending(self) -> bool:
        """Bytes already read and not yet handed out."""
        return self.end > self.start

    def read_pdu(self, limit: int) -> tuple[int, bytes]:
        self._fill(6)
        kind, _, length = _PDU_HEADER.unpack_from(self.buf, self.start)
        if kind not in (1, 2, 3, 4, 5, 6, 7):
            raise AssociationLost(f"unknown PDU type 0x{kind:02X}")
        if length > limit:
            raise AssociationLost(f"PDU of {length} bytes, longer than announced")
        self._fill(6 + length)
        body = bytes(self.buf[self.start + 6:self.start + 6 + length])
        self.start += 6 + length
        if self.start == self.end:
            self.start = self.end = 0
            if len(self.buf) > self.SIZE:
                self.buf = bytearray(self.SIZE)        # after an unusually long PDU
        return kind, body

    def _fill(self, n: int) -> None:
        """At least ``n`` bytes buffered from ``start``."""
        if self.end - self.start >= n:
            return
        if len(self.buf) - self.start < n:
            # Move what is left to the front, and grow for a longer PDU.
            left = self.buf[self.start:self.end]
            self.buf = bytearray(max(self.SIZE, n))
            self.buf[:len(left)] = left
            self.start, self.end = 0, len(left)
        with memoryview(self.buf) as view:
            while self.end - self.start < n:
                k = self.sock.recv_into(view[self.end:])
                if not k:
                    raise ConnectionAbortedError(errno.ECONNABORTED, "closed by the peer")
                self.end += k


def _read_pdu(sock: socket.socket, limit: int) -> tuple[int, bytearray]:
    kind, _, length = _PDU_HEADER.unpack(_recv_exact(sock, 6))
    if kind not in (1, 2, 3, 4, 5, 6, 7):
        raise AssociationLost(f"unknown PDU type 0x{kind:02X}")
    if length > limit:
        raise AssociationLost(f"PDU of {length} bytes, longer than announced")
    return kind, _recv_exact(sock, length)


def _pdvs(body: bytearray):
    """(context ID, message control header, value) of each PDV item of a P-DATA-TF."""
    offset, end = 0, len(body)
    view = memoryview(body)
    while offset < end:
        if end - offset < 6:
            raise ValueError("truncated P-DATA-TF")
        length, context_id, mch = _PDV_HEADER.unpack_from(body, offset)
        if length < 2 or offset + 4 + length > end:
            raise ValueError("invalid PDV item length")
        yield context_id, mch, view[offset + 6:offset + 4 + length]
        offset += 4 + length


def _append_pdvs(buf: bytearray, context_id: int, value: bytes, kind: int,
                 fragment: int) -> None:
    """``value`` as P-DATA-TF PDUs of at most ``fragment`` bytes each; ``kind`` is
    0x01 for a command, 0x00 for a data set (0x02 is added to the last one)."""
    for start in range(0, max(len(value), 1), fragment):
        part = value[start:start + fragment]
        last = 0x02 if start + fragment >= len(value) else 0x00
        buf += _PDU_HEADER.pack(P_DATA_TF, 0, len(part) + 6)
        buf += _PDV_HEADER.pack(len(part) + 2, context_id, kind | last)
        buf += part


def _associate_rq(calling: str, called: str, proposed: dict[int, tuple[str, str]],
                  max_pdu: int, implementation: tuple[str, str]) -> bytes:
    from pynetdicom._globals import APPLICATION_CONTEXT_NAME
    from pynetdicom.pdu import A_ASSOCIATE_RQ as RQ
    from pynetdicom.pdu_primitives import (
        A_ASSOCIATE,
        ImplementationClassUIDNotification,
        ImplementationVersionNameNotification,
        MaximumLengthNotification,
    )
    from pynetdicom.presentation import build_context

    primitive = A_ASSOCIATE()
    primitive.application_context_name = APPLICATION_CONTEXT_NAME
    primitive.calling_ae_title = calling
    primitive.called_ae_title = called
    contexts = []
    for context_id, (abstract, ts) in proposed.items():
        ctx = build_context(abstract, [ts])
        ctx.context_id = context_id
        contexts.append(ctx)
    primitive.presentation_context_definition_list = contexts
    length = MaximumLengthNotification()
    length.maximum_length_received = max_pdu
    class_uid = ImplementationClassUIDNotification()
    class_uid.implementation_class_uid = implementation[0]
    version = ImplementationVersionNameNotification()
    version.implementation_version_name = implementation[1]
    primitive.user_information = [length, class_uid, version]
    pdu = RQ()
    pdu.from_primitive(primitive)
    return pdu.encode()


def _accepted(body: bytearray, proposed: dict[int, tuple[str, str]]
              ) -> tuple[int, dict[str, dict[str, int]]]:
    from pynetdicom.pdu import A_ASSOCIATE_AC as AC
    from pynetdicom.pdu_primitives import MaximumLengthNotification

    pdu = AC()
    pdu.decode(bytes(_PDU_HEADER.pack(A_ASSOCIATE_AC, 0, len(body)) + body))
    primitive = pdu.to_primitive()
    peer_max_pdu = 0
    for item in primitive.user_information:
        if isinstance(item, MaximumLengthNotification):
            peer_max_pdu = item.maximum_length_received or 0
    results = {}
    for ctx in primitive.presentation_context_definition_results_list:
        if ctx.result == 0 and ctx.context_id in proposed:
            abstract, ts = proposed[ctx.context_id]
            # The acceptor names the syntax it chose; one was proposed per context.
            if ctx.transfer_syntax and str(ctx.transfer_syntax[0]) == ts:
                results[ctx.context_id] = (abstract, ts)
    accepted: dict[str, dict[str, int]] = {}
    for context_id in sorted(results):
        abstract, ts = results[context_id]
        accepted.setdefault(abstract, {})[ts] = context_id
    return peer_max_pdu, accepted


def _rejection(body: bytearray) -> str:
    from pynetdicom.pdu import A_ASSOCIATE_RJ as RJ

    try:
        pdu = RJ()
        pdu.decode(bytes(_PDU_HEADER.pack(A_ASSOCIATE_RJ, 0, len(body)) + body))
        rsp = pdu.to_primitive()
        return f"{rsp.result_str}, {rsp.source_str}: {rsp.reason_str}"
    except (ValueError, KeyError, AttributeError, TypeError, struct.error):
        return "rejected"


def _abort_quietly(sock: socket.socket) -> None:
    try:
        sock.settimeout(1.0)
        sock.sendall(_ABORT)
    except OSError:
        pass
    sock.close()


def _timed_out(exc: OSError) -> bool:
    """A timeout: Python's own, or the kernel's (SO_RCVTIMEO/SO_SNDTIMEO: EAGAIN)."""
    return isinstance(exc, (TimeoutError, BlockingIOError))


def _why(exc: OSError, where: str, doing: str) -> str:
    if _timed_out(exc):
        return f"network timeout ({where}) while {doing}"
    return f"connection to {where} lost while {doing}: {exc.strerror or exc}"
