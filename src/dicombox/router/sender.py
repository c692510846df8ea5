"""The Storage SCU side of forwarding: one association to one destination.

Presentation contexts: for every SOP class in a batch, one context per
transfer syntax: the syntaxes the batch's instances are stored in first
(unless the destination has ``offer_stored = false``), then the
destination's ``transfer_syntaxes`` in its order.  For each instance the
stored syntax is used when accepted; otherwise the first accepted syntax of
the destination's list that the conversion matrix (:mod:`dicombox.transcode`)
allows, converted into a temporary file.

Files are sent with pynetdicom's ``STORE_SEND_CHUNKED_DATASET``: the
dataset is read from the spool in PDU-sized chunks, never decoded, never
held whole in memory.  What each response status means for the queue is the
data in :data:`STATUS_POLICY`.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .. import transcode
from ..dimse import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from ..dimse import status as st
from ..uids import STORAGE_BY_UID, TS_BY_UID
from .queue import Item

LOGGER = logging.getLogger("dicombox.forward")

#: pynetdicom refuses more than 128 presentation contexts per association.
MAX_CONTEXTS = 128

DELIVERED, RETRY, DEAD = "deliver", "fail", "reject"

#: (lowest, highest status, what the queue does, meaning)
STATUS_POLICY: tuple[tuple[int, int, str, str], ...] = (
    (0x0000, 0x0000, DELIVERED, "Success"),
    (0xB000, 0xBFFF, DELIVERED, "Warning (coercion of data elements, elements discarded, "
                                "data set does not match SOP class): stored by the destination"),
    (0x0111, 0x0111, DELIVERED, "Duplicate SOP Instance: the destination already holds it"),
    (0x0122, 0x0122, DEAD, "Refused: SOP Class not supported"),
    (0x0124, 0x0124, DEAD, "Refused: Not authorized"),
    (0x0117, 0x0117, DEAD, "Invalid SOP Instance"),
    (0x0119, 0x0119, DEAD, "Class-Instance conflict"),
    (0xA900, 0xA9FF, DEAD, "Error: Data Set does not match SOP Class"),
    (0xA700, 0xA7FF, RETRY, "Refused: Out of Resources"),
    (0xC000, 0xCFFF, RETRY, "Error: Cannot understand"),
    (0x0000, 0xFFFF, RETRY, "any other failure status"),
)


def classify_status(code: int) -> tuple[str, str]:
    """(queue event, meaning) of a C-STORE response status."""
    for lo, hi, action, meaning in STATUS_POLICY:
        if lo <= code <= hi:
            return action, meaning
    return RETRY, "unknown status"


def needed_contexts(item: Item, syntaxes: Sequence[str], offer_stored: bool
                    ) -> list[tuple[str, str]]:
    """The (SOP class, transfer syntax) contexts one instance needs proposed."""
    out = []
    if offer_stored:
        out.append((item.sop_class_uid, item.transfer_syntax_uid))
    for ts in syntaxes:
        if (item.sop_class_uid, ts) not in out:
            out.append((item.sop_class_uid, ts))
    return out


class AssociationFailed(Exception):
    """No association (refused connection, rejection, abort): the whole batch waits."""


@dataclass
class Attempt:
    event: str
    error: str = ""
    sent_sop_instance_uid: str = ""
    broken: bool = False   # the association is no longer usable


def _nodelay(event) -> None:
    """Nagle off on the SCU socket, as on the listeners (see PERFORMANCE.md)."""
    sock = event.assoc.dul.socket.socket if event.assoc.dul.socket else None
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


#: Bytes of P-DATA waiting for the socket at most: the file is read only as fast as
#: the network takes it (pynetdicom's queue to its DUL thread is unbounded).
MAX_QUEUED_BYTES = 8 << 20
#: PDU size used towards a peer that announced no limit (pynetdicom would read the
#: whole dataset into one PDU).
UNLIMITED_PEER_PDU = 1 << 20


def _bounded_sending(assoc) -> None:
    """Bound the memory one C-STORE takes, whatever the size of the instance."""
    from pynetdicom.pdu_primitives import P_DATA, MaximumLengthNotification

    pdu = UNLIMITED_PEER_PDU
    for item in assoc.acceptor.user_information:
        if isinstance(item, MaximumLengthNotification):
            if not item.maximum_length_received:
                item.maximum_length_received = UNLIMITED_PEER_PDU
            pdu = item.maximum_length_received
    limit = max(4, MAX_QUEUED_BYTES // max(pdu, 1))
    dul = assoc.dul
    put = dul.send_pdu
    pending = dul.to_provider_queue

    def send_pdu(primitive):
        if isinstance(primitive, P_DATA):
            while (pending.qsize() >= limit and dul.is_alive()
                   and not assoc.is_aborted):
                time.sleep(0.0005)
        put(primitive)

    dul.send_pdu = send_pdu


def _keep_responses(assoc) -> None:
    """Hand a C-STORE response the association's reactor took back to the sender.

    pynetdicom 3.0.4's ``send_c_store`` pauses the reactor thread with a flag
    that the reactor sets *before* it waits; once in a few thousand messages
    the reactor is past its wait when the sender checks the flag, takes the
    response off the DIMSE queue and drops it as an "unexpected" message.
    The sender then waits ``dimse_timeout`` for nothing and aborts.  The
    reactor passes what it takes to ``_serve_request``: on this Storage SCU
    association anything that is not a request is put back on the queue,
    where ``send_c_store`` is waiting for it.
    """
    serve = assoc._serve_request

    def give_back(msg, context_id):
        if msg is not None and not msg.is_valid_request:
            assoc.dimse.msg_queue.put((context_id, msg))
            return
        serve(msg, context_id)

    assoc._serve_request = give_back


class Session:
    """One association to a destination, reused while its contexts fit the work."""

    def __init__(self, destination, calling_ae_title: str, max_pdu: int, tmp_dir: Path):
        self.dest = destination
        self.calling = destination.calling_ae_title or calling_ae_title
        self.max_pdu = max_pdu
        self.tmp_dir = Path(tmp_dir)
        self.syntaxes = destination.transfer_syntax_uids()
        self.policy = transcode.Policy(lossy=destination.lossy,
                                       decompress_lossy=destination.decompress_lossy,
                                       lossy_ratio=destination.lossy_ratio,
                                       lossy_near=destination.lossy_near)
        self.assoc = None
        self.proposed: set[tuple[str, str]] = set()
        self.accepted: dict[str, list[str]] = {}
        #: The destination rejected every proposed context (pynetdicom then aborts):
        #: the rows they were proposed for can only go to dead-letter.
        self.all_rejected = False

    # -- association -----------------------------------------------------------

    def needed(self, items: Sequence[Item]) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        seen = set()
        for it in items:
            for ctx in needed_contexts(it, self.syntaxes, self.dest.offer_stored):
                if ctx not in seen:
                    seen.add(ctx)
                    out.append(ctx)
        return out

    def is_open(self) -> bool:
        return self.assoc is not None and self.assoc.is_established

    def usable(self) -> bool:
        """Negotiated: rows whose contexts were proposed may be claimed and tried."""
        return self.is_open() or self.all_rejected

    def open(self, items: Sequence[Item]) -> None:
        """Associate with contexts for ``items``; raises :class:`AssociationFailed`."""
        self.close()
        self._associate(self.needed(items)[:MAX_CONTEXTS])

    def _associate(self, contexts: list[tuple[str, str]]) -> None:
        from pynetdicom import AE, evt
        from pynetdicom.presentation import build_context

        ae = AE(ae_title=self.calling)
        ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
        ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
        ae.connection_timeout = self.dest.connect_timeout
        ae.acse_timeout = self.dest.acse_timeout
        ae.dimse_timeout = self.dest.dimse_timeout
        ae.network_timeout = self.dest.network_timeout
        ae.maximum_pdu_size = self.max_pdu
        ae.requested_contexts = [build_context(sc, [ts]) for sc, ts in contexts]
        connected = []

        def on_open(event):
            connected.append(True)
            _nodelay(event)

        assoc = ae.associate(self.dest.host, self.dest.port, ae_title=self.dest.ae_title,
                             evt_handlers=[(evt.EVT_CONN_OPEN, on_open)])
        self.proposed = set(contexts)
        self.accepted = {}
        if assoc.is_established:
            _keep_responses(assoc)
            _bounded_sending(assoc)
        if not assoc.is_established:
            if assoc.rejected_contexts and not assoc.accepted_contexts and not assoc.is_rejected:
                # Every context was rejected: pynetdicom aborted the association.
                # Nothing of this batch can be sent there, ever: choose() says why.
                self.all_rejected = True
                return
            raise AssociationFailed(_why_not(assoc, self.dest, bool(connected)))
        self.assoc = assoc
        for ctx in assoc.accepted_contexts:
            self.accepted.setdefault(str(ctx.abstract_syntax), []).append(
                str(ctx.transfer_syntax[0]))

    def close(self) -> None:
        if self.assoc is not None:
            try:
                if self.assoc.is_established:
                    self.assoc.release()
                else:
                    self.assoc.abort()
            except Exception:  # noqa: BLE001 - tearing down a dead association
                LOGGER.debug("closing the association to %s failed", self.dest.name,
                             exc_info=True)
        self.assoc = None
        self.proposed = set()
        self.accepted = {}
        self.all_rejected = False

    def abort(self) -> None:
        if self.assoc is not None:
            try:
                self.assoc.abort()
            except Exception:  # noqa: BLE001 - aborting a broken association
                LOGGER.debug("abort failed", exc_info=True)
        self.assoc = None
        self.proposed = set()
        self.accepted = {}
        self.all_rejected = False

    # -- one instance ------------------------------------------------------------

    def choose(self, item: Item) -> tuple[str | None, str]:
        """(transfer syntax to send in, or None with the reason it cannot be sent)."""
        accepted = self.accepted.get(item.sop_class_uid, [])
        stored = item.transfer_syntax_uid
        if not accepted:
            name = STORAGE_BY_UID[item.sop_class_uid].name if (
                item.sop_class_uid in STORAGE_BY_UID) else item.sop_class_uid
            return None, (f"{self.dest.name} rejected every presentation context for "
                          f"{name}: SOP class not supported by the destination")
        if stored in accepted:
            return stored, ""
        for ts in self.syntaxes:
            if ts in accepted and transcode.possible(stored, ts, self.policy):
                return ts, ""
        names = ", ".join(_ts(t) for t in accepted)
        return None, (f"{self.dest.name} accepts only {names} for this SOP class; an instance "
                      f"stored as {_ts(stored)} is not converted to it (Table N.5-9)")

    def _reopen(self) -> str:
        """Associate again with the same contexts (the peer closed an association that
        waited for a long conversion); returns why not, or ''."""
        contexts = sorted(self.proposed)
        LOGGER.info("%s closed the association while an instance was converted; "
                    "associating again", self.dest.name)
        self.abort()
        try:
            self._associate(contexts)
        except (AssociationFailed, OSError, RuntimeError, ValueError) as exc:
            return str(exc)
        return "" if self.is_open() else "the destination rejected every context"

    def send(self, item: Item, path: Path) -> Attempt:
        """Send one instance on the open association."""
        ts, reason = self.choose(item)
        if ts is None:
            return Attempt(DEAD, reason)
        converted = None
        to_send = path
        sent_uid = item.sop_instance_uid
        try:
            if ts != item.transfer_syntax_uid:
                try:
                    converted = transcode.convert(
                        path, ts, self.tmp_dir, self.policy,
                        (IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME))
                except transcode.TranscodeError as exc:
                    return Attempt(DEAD, f"conversion to {_ts(ts)} failed: {exc}")
                to_send = converted.path
                sent_uid = converted.sop_instance_uid
                if not self.is_open():
                    why = self._reopen()
                    if why or ts not in self.accepted.get(item.sop_class_uid, []):
                        return Attempt(RETRY, "association lost while converting: "
                                              f"{why or 'context no longer accepted'}",
                                       broken=True)
            return self._store(to_send, sent_uid)
        except FileNotFoundError:
            # The instance was replaced (its row is re-queued) or removed meanwhile.
            return Attempt(RETRY, "the spooled file is gone (replaced meanwhile)")
        except OSError as exc:
            return Attempt(RETRY, f"local I/O error: {exc}")
        finally:
            if converted is not None:
                try:
                    os.unlink(converted.path)
                except FileNotFoundError:
                    pass

    def _store(self, path: Path, sent_uid: str) -> Attempt:
        assoc = self.assoc
        try:
            rsp = assoc.send_c_store(path)
        except (RuntimeError, ValueError, AttributeError) as exc:
            if not assoc.is_established:
                return Attempt(RETRY, f"association lost: {exc}", broken=True)
            return Attempt(DEAD, f"cannot send the file: {exc}")
        if rsp is None or "Status" not in rsp:
            why = ("association aborted" if assoc.is_aborted else
                   "no response within dimse_timeout")
            return Attempt(RETRY, f"no C-STORE response ({why})", broken=True)
        code = int(rsp.Status)
        event, meaning = classify_status(code)
        comment = str(rsp.get("ErrorComment", "") or "")
        text = f"{st.describe(code)}: {meaning}" + (f" ({comment})" if comment else "")
        if event == DELIVERED:
            return Attempt(DELIVERED, "" if code == 0 else text, sent_uid)
        return Attempt(event, f"{self.dest.name} answered {text}")


def _ts(uid: str) -> str:
    ts = TS_BY_UID.get(uid)
    return ts.name if ts else uid


def _why_not(assoc, dest, connected: bool) -> str:
    where = f"{dest.ae_title}@{dest.host}:{dest.port}"
    if not connected:
        return f"cannot connect to {where}"
    if assoc.is_rejected:
        rsp = assoc.acceptor.primitive
        try:
            detail = f"{rsp.result_str}, {rsp.source_str}: {rsp.reason_str}"
        except (AttributeError, KeyError, TypeError):
            detail = "rejected"
        return f"association rejected by {where} ({detail})"
    if assoc.is_aborted:
        return f"association aborted by {where}"
    return f"cannot connect to {where}"
