"""The Storage Commitment Push Model SCP, served on the router's AE.

:class:`Commitment` is a router component: it adds the Storage Commitment
presentation context (accepting SCU/SCP role selection either way, so
destinations can report to the box in upstream mode), the N-ACTION and
N-EVENT-REPORT handlers, and three kinds of workers: the evaluator, the
report sender and one upstream requester per committing destination.

Failure policy: the N-ACTION is answered Success only once the request is
committed to the index; anything unexpected while handling it is answered
with Processing Failure (0110H) and nothing is kept, so the requester may
simply ask again.  A dead worker makes the router unhealthy and systemd
restarts it; the requests resume from the index.
"""

from __future__ import annotations

import logging
import sqlite3

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import evt
from pynetdicom.presentation import build_context

from ..config.commit import remote_ae
from ..dimse import status as st
from ..router.service import RouterComponent
from ..uids import STORAGE_COMMITMENT_INSTANCE, STORAGE_COMMITMENT_PUSH
from .evaluate import Evaluator
from .model import MIGRATIONS, REQUEST_STATES
from .report import OpenAssociations, ReportSender
from .requests import ActionError, journal, parse_action
from .upstream import Upstream

LOGGER = logging.getLogger("dicombox.commit")

#: Transfer syntaxes accepted (and proposed) for Storage Commitment, in order.
TRANSFER_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
#: Action Type ID of "Request Storage Commitment" (PS3.4 J.3.2).
REQUEST_COMMITMENT = 1


def commitment_context():
    """The context the router accepts: requestor as SCU (modalities) or, through
    role selection, as SCP (destinations reporting in upstream mode)."""
    cx = build_context(STORAGE_COMMITMENT_PUSH.uid, list(TRANSFER_SYNTAXES))
    cx.scu_role = True
    cx.scp_role = True
    return cx


class Commitment(RouterComponent):
    name = "commitment"
    migrations = MIGRATIONS

    def __init__(self, service):
        super().__init__(service)
        self.config = service.config
        self.section = service.config.commitment
        self.db = service.store.db
        self.open = OpenAssociations()
        self.sender = ReportSender(self.db, self.config, self.open)
        self.evaluator = Evaluator(self.db, self.config, self.sender.wake)
        self.upstream = Upstream(self.db, self.config, self.evaluator.wake)
        self.upstream.recover()
        self.counters = {"requests": 0, "refused": 0}

    def contexts(self) -> list:
        return [commitment_context()] if self.section.enabled else []

    def handlers(self) -> list:
        if not self.section.enabled:
            return []
        return [(evt.EVT_N_ACTION, self.handle_action),
                (evt.EVT_N_EVENT_REPORT, self.upstream.handle_report),
                *self.open.handlers()]

    def workers(self) -> list:
        if not self.section.enabled:
            return []
        return [self.evaluator, self.sender, *self.upstream.workers()]

    def snapshot(self) -> dict:
        counts = {s: 0 for s in REQUEST_STATES}
        for row in self.db.query("SELECT state, COUNT(*) AS n FROM commit_requests "
                                 "GROUP BY state"):
            counts[row["state"]] = row["n"]
        return {**counts, **self.counters}

    # -- N-ACTION ------------------------------------------------------------------

    def handle_action(self, event):
        """EVT_N_ACTION: validate, journal durably, then answer."""
        req = event.request
        assoc = event.assoc
        calling = assoc.requestor.ae_title
        if req.RequestedSOPInstanceUID != STORAGE_COMMITMENT_INSTANCE:
            return self._refuse(calling, st.NO_SUCH_OBJECT_INSTANCE,
                                f"use instance {STORAGE_COMMITMENT_INSTANCE}")
        if req.ActionTypeID != REQUEST_COMMITMENT:
            return self._refuse(calling, st.NO_SUCH_ACTION_TYPE,
                                f"no action type {req.ActionTypeID}")
        try:
            transaction_uid, refs = parse_action(event.action_information,
                                                 self.section.max_references)
        except ActionError as exc:
            return self._refuse(calling, exc.status, exc.comment)
        except Exception as exc:  # noqa: BLE001 - undecodable data: refuse, keep nothing
            LOGGER.warning("N-ACTION from %s cannot be decoded: %s", calling, exc)
            return self._refuse(calling, st.PROCESSING_FAILURE, "cannot decode the request")
        remote = remote_ae(self.config, calling)
        mode = self.section.mode_for(remote)
        try:
            done = journal(self.db, transaction_uid, refs, calling_aet=calling,
                           called_aet=assoc.acceptor.ae_title,
                           peer_address=assoc.requestor.address, mode=mode,
                           local_timeout=self.section.local_timeout,
                           timeout=self.section.timeout)
        except (sqlite3.Error, OSError) as exc:
            LOGGER.error("cannot journal the commitment request %s from %s: %s",
                         transaction_uid, calling, exc)
            return self._refuse(calling, st.PROCESSING_FAILURE, "cannot journal the request")
        if self.section.same_association_for(remote):
            self.open.expect(assoc, done.request_id)
        self.counters["requests"] += 1
        LOGGER.info("commitment request %s from %s: %d instance(s), mode %s (%s)",
                    transaction_uid, calling, len(refs), mode, done.kind)
        self.evaluator.wake()
        self.sender.wake()
        return st.SUCCESS, None

    def _refuse(self, calling: str, code: int, comment: str):
        LOGGER.warning("refused a commitment request from %s: %s (%s)", calling,
                       st.describe(code), comment)
        self.counters["refused"] += 1
        ds = Dataset()
        ds.Status = code
        ds.ErrorComment = comment[:64]
        return ds, None
