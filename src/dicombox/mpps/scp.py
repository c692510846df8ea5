"""The MPPS SCP: pynetdicom glue turning N-CREATE/N-SET into journal entries.

pynetdicom's own Procedure Step service class cannot put the offending tag
in an N-CREATE response (its N-CREATE-RSP has no Attribute Identifier List)
and never sends the Attribute List of a failure.  :class:`MppsServiceClass`
replaces it for the MPPS SOP Class in this process (:func:`install`): it
calls the same ``EVT_N_CREATE``/``EVT_N_SET`` handlers, which return a
:class:`Reply`, and encodes every field of the reply: Status, Error Comment,
Error ID, Attribute Identifier List (0000,1005) and, for 0106/0121, the
offending attributes as the response's Attribute List (PS3.7 C.5.11, C.5.14).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import association as _association
from pynetdicom import dimse_messages as _messages
from pynetdicom import evt
from pynetdicom.dimse_primitives import N_CREATE as N_CREATE_PRIMITIVE
from pynetdicom.dimse_primitives import N_SET as N_SET_PRIMITIVE
from pynetdicom.dsutils import encode
from pynetdicom.service_class_n import ProcedureStepServiceClass

from ..dimse import status as st
from . import journal, model

LOGGER = logging.getLogger("dicombox.mpps")


@dataclass
class Reply:
    """What the box answers to one N-CREATE or N-SET."""

    status: int = st.SUCCESS
    comment: str = ""
    error_id: int | None = None
    tags: list[int] = field(default_factory=list)
    #: Attribute List of the response (offending attributes, or the created UID).
    dataset: Dataset | None = None
    affected_uid: str | None = None

    @classmethod
    def refuse(cls, refusal: model.Refusal, request: Dataset | None = None) -> Reply:
        tags = [refusal.tag] if refusal.tag is not None else []
        ds = None
        if refusal.status in (st.INVALID_ATTRIBUTE_VALUE, st.MISSING_ATTRIBUTE_VALUE) \
                and request is not None and refusal.tag is not None and refusal.tag in request:
            ds = Dataset()
            ds.add(request[refusal.tag])
        return cls(refusal.status, refusal.comment, refusal.error_id, tags, ds)


class MppsServiceClass(ProcedureStepServiceClass):
    """N-CREATE/N-SET of the MPPS SOP Class with complete failure responses."""

    def _n_create_scp(self, req, context) -> None:
        rsp = N_CREATE_PRIMITIVE()
        rsp.MessageIDBeingRespondedTo = req.MessageID
        rsp.AffectedSOPClassUID = req.AffectedSOPClassUID
        rsp.AffectedSOPInstanceUID = req.AffectedSOPInstanceUID
        self._answer(evt.EVT_N_CREATE, req, rsp, context)

    def _n_set_scp(self, req, context) -> None:
        rsp = N_SET_PRIMITIVE()
        rsp.MessageIDBeingRespondedTo = req.MessageID
        rsp.AffectedSOPClassUID = req.RequestedSOPClassUID
        rsp.AffectedSOPInstanceUID = req.RequestedSOPInstanceUID
        self._answer(evt.EVT_N_SET, req, rsp, context)

    def _answer(self, event, req, rsp, context) -> None:
        try:
            reply = evt.trigger(self.assoc, event, {"request": req,
                                                    "context": context.as_tuple})
        except Exception:  # noqa: BLE001 - the handler's own last resort failed
            LOGGER.exception("MPPS handler failed")
            reply = Reply(st.PROCESSING_FAILURE, "internal error; see the log")
        if not isinstance(reply, Reply):
            reply = Reply(st.PROCESSING_FAILURE, "internal error; no reply")
        if not self.assoc.is_established:
            return
        rsp.Status = reply.status
        rsp.ErrorComment = reply.comment[:64] if reply.comment and reply.status else None
        rsp.ErrorID = reply.error_id
        # Set on the instance: the primitives of this pynetdicom version lack
        # the property, and the message encoder copies any attribute it finds.
        rsp.AttributeIdentifierList = reply.tags or None
        if reply.affected_uid:
            rsp.AffectedSOPInstanceUID = reply.affected_uid
        if reply.dataset is not None and len(reply.dataset):
            ts = context.transfer_syntax[0]
            data = encode(reply.dataset, ts.is_implicit_VR, ts.is_little_endian,
                          ts.is_deflated)
            if data is not None:
                from io import BytesIO
                rsp.AttributeList = BytesIO(data)
        self.dimse.send_msg(rsp, context.context_id)


_install_lock = threading.Lock()


def install() -> None:
    """Route MPPS requests to :class:`MppsServiceClass` in this process (idempotent)."""
    with _install_lock:
        original = _association.uid_to_service_class
        if getattr(original, "_dicombox_mpps", False):
            return

        def uid_to_service_class(uid):
            if uid == model.MPPS_SOP_CLASS:
                return MppsServiceClass
            return original(uid)

        uid_to_service_class._dicombox_mpps = True
        _association.uid_to_service_class = uid_to_service_class
        keywords = _messages._COMMAND_SET_KEYWORDS["N-CREATE-RSP"]
        if "AttributeIdentifierList" not in keywords:
            _messages._COMMAND_SET_KEYWORDS["N-CREATE-RSP"] = (*keywords,
                                                               "AttributeIdentifierList")
        for cls in (N_CREATE_PRIMITIVE, N_SET_PRIMITIVE):
            if not hasattr(cls, "AttributeIdentifierList"):
                cls.AttributeIdentifierList = None


class MppsSCP:
    """EVT_N_CREATE / EVT_N_SET / EVT_C_ECHO handlers writing the journal.

    ``destinations`` are the names every accepted message is queued for;
    ``on_accepted(operation, uid, state)`` runs after the commit (it wakes
    the relay workers).
    """

    def __init__(self, db, destinations: list[str], require_type2: bool = True,
                 on_accepted: Callable[[str, str, str], None] | None = None):
        self.db = db
        self.destinations = destinations
        self.require_type2 = require_type2
        self.on_accepted = on_accepted
        self.counters = {"stored": 0, "failed": 0, "refused": 0, "n_create": 0, "n_set": 0}
        self._lock = threading.Lock()
        self.inflight = 0
        self._idle = threading.Condition(self._lock)
        self.closed = False

    def handlers(self) -> list:
        return [(evt.EVT_N_CREATE, self.handle_n_create), (evt.EVT_N_SET, self.handle_n_set),
                (evt.EVT_C_ECHO, lambda event: st.SUCCESS)]

    def _count(self, key: str) -> None:
        with self._lock:
            self.counters[key] += 1

    def _enter(self) -> bool:
        with self._lock:
            if self.closed:
                return False
            self.inflight += 1
            return True

    def _leave(self) -> None:
        with self._lock:
            self.inflight -= 1
            self._idle.notify_all()

    def close_and_wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._lock:
            self.closed = True
            while self.inflight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    # -- handlers ------------------------------------------------------------

    def handle_n_create(self, event) -> Reply:
        req = event.request
        uid = str(req.AffectedSOPInstanceUID or "")
        return self._handle(event, model.N_CREATE, uid, lambda: event.attribute_list)

    def handle_n_set(self, event) -> Reply:
        req = event.request
        uid = str(req.RequestedSOPInstanceUID or "")
        return self._handle(event, model.N_SET, uid, lambda: event.modification_list)

    def _handle(self, event, operation: str, uid: str, dataset: Callable[[], Dataset]) -> Reply:
        if not self._enter():
            return Reply(st.PROCESSING_FAILURE, "the service is stopping; send again")
        try:
            return self._process(event, operation, uid, dataset)
        except Exception:  # noqa: BLE001 - answered as a failure; nothing was journaled
            LOGGER.exception("%s of %s failed", operation, uid)
            self._count("failed")
            return Reply(st.PROCESSING_FAILURE, "internal error while journaling; see the log")
        finally:
            self._leave()

    def _process(self, event, operation, uid, dataset) -> Reply:
        assoc = event.assoc
        calling = str(assoc.requestor.ae_title).strip()
        address = assoc.requestor.address
        try:
            request = dataset()
            # Touch every element so that a malformed one fails here, not later.
            request.walk(lambda ds, elem: None)
        except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds
            LOGGER.error("%s from %s: cannot decode the dataset: %s", operation, calling, exc)
            self._count("failed")
            return Reply(st.PROCESSING_FAILURE, f"cannot decode the dataset: {exc}"[:64])
        created_uid = None
        if operation == model.N_CREATE and not uid:
            uid = created_uid = generate_uid()
        elif not uid:
            self._count("failed")
            return Reply(st.MISSING_ATTRIBUTE, "no Requested SOP Instance UID")
        with self.db.write() as conn:
            found = journal.current(conn, uid)
            state, before = (found if found else (model.ABSENT, None))
            merged = None
            if operation == model.N_SET and before is not None and state == model.IN_PROGRESS:
                refusal = model.not_allowed_change(before, request)
                if refusal is not None:
                    return self._refused(operation, uid, calling, Reply.refuse(refusal, request))
                merged = model.merge(before, request)
            verdict = model.check(state, operation, request, merged, self.require_type2)
            if not verdict.accepted:
                return self._refused(operation, uid, calling,
                                     Reply.refuse(verdict.refusal, request))
            if operation == model.N_CREATE:
                merged = Dataset()
                for elem in request:
                    merged.add(elem)
            journal.record(conn, uid, operation, request, merged, verdict.new_state,
                           self.destinations, calling, address)
        LOGGER.info("%s %s from %s: %s", operation, uid, calling, verdict.new_state)
        self._count("stored")
        self._count("n_create" if operation == model.N_CREATE else "n_set")
        if self.on_accepted is not None:
            self.on_accepted(operation, uid, verdict.new_state)
        reply = Reply()
        if created_uid:
            reply.affected_uid = created_uid
        return reply

    def _refused(self, operation: str, uid: str, calling: str, reply: Reply) -> Reply:
        LOGGER.warning("%s %s from %s refused: 0x%04X %s", operation, uid, calling,
                       reply.status, reply.comment)
        self._count("refused")
        return reply
