"""The Storage SCU side of forwarding: one association to one destination.

Presentation contexts: for every SOP class in a batch, one context per
transfer syntax: the syntaxes the batch's instances are stored in first
(unless the destination has ``offer_stored = false``), then the
destination's ``transfer_syntaxes`` in its order.  For each instance the
stored syntax is used when accepted; otherwise the first accepted syntax of
the destination's list that the conversion matrix (:mod:`dicombox.transcode`)
allows, converted into a temporary file.

The association itself is :mod:`.scu`'s: the sending thread writes the
PDUs and reads the responses, the dataset goes from the spool file to the
socket in PDU-sized chunks, never decoded, never held whole in memory.  What
each response status means for the queue is the data in
:data:`STATUS_POLICY`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .. import transcode, transcoder
from ..dimse import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from ..dimse import status as st
from ..uids import STORAGE_BY_UID, TS_BY_UID
from . import scu
from .queue import Item

LOGGER = logging.getLogger("dicombox.forward")

#: At most 128 presentation contexts per association (odd context IDs 1-255, PS3.8).
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
        self.assoc: scu.StorageAssociation | None = None
        self.proposed: set[tuple[str, str]] = set()
        self.accepted: dict[str, list[str]] = {}
        #: The destination rejected every proposed context (the association is then
        #: aborted): the rows they were proposed for can only go to dead-letter.
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
        """Whether the association is up (one the destination released, aborted or
        closed while it was idle is noticed here)."""
        return self.assoc is not None and self.assoc.is_open()

    def holds_association(self) -> bool:
        """Whether an association is believed up, without touching it (for other
        threads: only the sender's own thread reads its socket)."""
        return self.assoc is not None and self.assoc.established

    def usable(self) -> bool:
        """Negotiated: rows whose contexts were proposed may be claimed and tried."""
        return self.is_open() or self.all_rejected

    def open(self, items: Sequence[Item]) -> None:
        """Associate with contexts for ``items``; raises :class:`AssociationFailed`."""
        self.close()
        self._associate(self.needed(items)[:MAX_CONTEXTS])

    def _associate(self, contexts: list[tuple[str, str]]) -> None:
        dest = self.dest
        timeouts = scu.Timeouts(connect=dest.connect_timeout, acse=dest.acse_timeout,
                                dimse=dest.dimse_timeout, network=dest.network_timeout)
        try:
            assoc = scu.StorageAssociation.request(
                dest.host, dest.port, self.calling, dest.ae_title, contexts, self.max_pdu,
                timeouts, (IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME))
        except scu.AssociationError as exc:
            raise AssociationFailed(str(exc)) from None
        self.proposed = set(contexts)
        self.accepted = {}
        if not assoc.accepted:
            # Every context was rejected: nothing of this batch can be sent there,
            # ever: choose() says why.
            assoc.abort()
            self.all_rejected = True
            return
        self.assoc = assoc
        self.accepted = {sc: list(by_ts) for sc, by_ts in assoc.accepted.items()}

    def close(self) -> None:
        """Release the association (abort it if the release fails)."""
        if self.assoc is not None:
            self.assoc.release()
        self.assoc = None
        self.proposed = set()
        self.accepted = {}
        self.all_rejected = False

    def abort(self) -> None:
        if self.assoc is not None:
            self.assoc.abort()
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
        except (AssociationFailed, ValueError) as exc:
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
                    converted = transcoder.convert(
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
            return self._store(to_send, item.sop_class_uid, sent_uid, ts)
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

    def _store(self, path: Path, sop_class_uid: str, sent_uid: str, ts: str) -> Attempt:
        assoc = self.assoc
        if assoc is None:
            return Attempt(RETRY, "association lost", broken=True)
        try:
            rsp = assoc.send_c_store(path, sop_class_uid, sent_uid, ts)
        except scu.AssociationLost as exc:
            return Attempt(RETRY, f"association lost: {exc}", broken=True)
        except ValueError as exc:
            return Attempt(DEAD, f"cannot send the file: {exc}")
        code = rsp.status
        if code == 0:
            return Attempt(DELIVERED, "", sent_uid)
        event, meaning = classify_status(code)
        comment = rsp.error_comment
        text = f"{st.describe(code)}: {meaning}" + (f" ({comment})" if comment else "")
        if event == DELIVERED:
            return Attempt(DELIVERED, "" if code == 0 else text, sent_uid)
        return Attempt(event, f"{self.dest.name} answered {text}")


def _ts(uid: str) -> str:
    ts = TS_BY_UID.get(uid)
    return ts.name if ts else uid
