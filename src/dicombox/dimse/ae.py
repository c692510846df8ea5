"""Application Entities built from configuration, with the box's association policy.

pynetdicom checks the called AE title itself (reason 7).  The rest of the
policy (calling AE allow-list and peer address allow-list, reason 3; refusing
new associations while draining, transient reason 1) is checked by
:class:`PolicyACSE`, installed on every accepted association when its
connection opens, before negotiation starts.  The same hook turns Nagle's
algorithm off on the socket.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from pydicom.uid import UID
from pynetdicom import AE, _config, evt
from pynetdicom import dimse_messages as _dimse_messages
from pynetdicom.acse import ACSE
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.transport import ThreadedAssociationServer

from . import reactor

LOGGER = logging.getLogger("dicombox.dimse")

IMPLEMENTATION_CLASS_UID = "2.25.115990870590008594318337194660194638012"
IMPLEMENTATION_VERSION_NAME = "DICOMBOX_010"

_config.USE_SHORT_DIMSE_AET = True
_config.LOG_REQUEST_IDENTIFIERS = False
_config.LOG_RESPONSE_IDENTIFIERS = False


def _create_file_meta(*, sop_class_uid, sop_instance_uid, transfer_syntax):
    """File meta for received datasets, naming this implementation."""
    from pydicom.dataset import FileMetaDataset

    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    return meta


_dimse_messages.create_file_meta = _create_file_meta


@dataclass
class AssociationPolicy:
    """Who may associate with one of the box's AEs."""

    ae_title: str
    allowed_calling_aets: Sequence[str] = ()
    allowed_peers: Sequence[str] = ()
    draining: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self):
        self._networks = [ipaddress.ip_network(p, strict=False) for p in self.allowed_peers]

    def check(self, calling_aet: str, address: str) -> tuple[int, int, int] | None:
        """(result, source, reason) to reject with, or ``None`` to go on."""
        if self.draining.is_set():
            return (0x02, 0x03, 0x01)  # transient, presentation: temporary congestion
        if self.allowed_calling_aets and calling_aet.strip() not in {
                a.strip() for a in self.allowed_calling_aets}:
            return (0x01, 0x01, 0x03)  # permanent, user: calling AE not recognised
        if self._networks:
            try:
                ip = ipaddress.ip_address(address.split("%")[0])
            except ValueError:
                return (0x01, 0x01, 0x03)
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
                ip = ip.ipv4_mapped
            if not any(ip in net for net in self._networks):
                return (0x01, 0x01, 0x03)
        return None


class PolicyACSE(ACSE):
    """ACSE that applies an :class:`AssociationPolicy` before negotiating."""

    def __init__(self, assoc, policy: AssociationPolicy):
        super().__init__(assoc)
        self.policy = policy

    def _negotiate_as_acceptor(self) -> None:
        rq = self.requestor.primitive
        calling = rq.calling_ae_title if rq is not None else ""
        address = self.requestor.address or ""
        verdict = self.policy.check(calling, address)
        if verdict is not None:
            LOGGER.warning("rejecting association from %s@%s to %s: %s", calling, address,
                           rq.called_ae_title if rq else "?", _REJECT_TEXT.get(verdict, verdict))
            self.send_reject(*verdict)
            evt.trigger(self.assoc, evt.EVT_REJECTED, {})
            self.assoc.kill()
            return
        super()._negotiate_as_acceptor()


_REJECT_TEXT = {
    (0x02, 0x03, 0x01): "the service is stopping",
    (0x01, 0x01, 0x03): "calling AE title or address not allowed",
}


def nodelay(event) -> None:
    """Nagle off on an association's socket (see PERFORMANCE.md): an
    ``EVT_CONN_OPEN`` handler, for the listeners and for the associations
    the box requests (:data:`NODELAY_HANDLERS`)."""
    sock = event.assoc.dul.socket.socket if event.assoc.dul.socket else None
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


#: ``evt_handlers`` of an association the box requests.
NODELAY_HANDLERS = [(evt.EVT_CONN_OPEN, nodelay)]


def refusal_text(assoc, where: str) -> str:
    """Why an association the box requested from ``where`` (AE@host:port) is
    not established."""
    if assoc.is_rejected:
        return f"association rejected by {where}"
    if getattr(assoc.acceptor, "primitive", None) is None:
        return f"cannot connect to {where} (no association response)"
    return f"association aborted by {where}"


def _on_conn_open(event, policy: AssociationPolicy) -> None:
    nodelay(event)
    event.assoc.acse = PolicyACSE(event.assoc, policy)


def storage_contexts(sop_classes: Iterable[str], transfer_syntaxes: Sequence[str]
                     ) -> list[PresentationContext]:
    """One context per SOP class carrying every accepted transfer syntax, in order."""
    return [build_context(UID(uid), list(transfer_syntaxes)) for uid in sop_classes]


def make_ae(ae_title: str, network, max_associations: int = 20) -> AE:
    """An AE with the box's identity, timeouts and limits."""
    ae = AE(ae_title=ae_title)
    ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    ae.acse_timeout = network.acse_timeout
    ae.dimse_timeout = network.dimse_timeout
    ae.network_timeout = network.network_timeout
    ae.maximum_pdu_size = network.max_pdu
    ae.maximum_associations = max_associations
    ae.require_called_aet = True
    return ae


class Listener:
    """One AE listening on one address and port, with an association policy."""

    def __init__(self, ae: AE, address: str, port: int, policy: AssociationPolicy,
                 handlers: list):
        self.ae = ae
        self.address = address
        self.port = port
        self.policy = policy
        self.handlers = [(evt.EVT_CONN_OPEN, _on_conn_open, [policy]), *handlers]
        self.server: ThreadedAssociationServer | None = None

    def start(self) -> None:
        if not logging.getLogger("pynetdicom").isEnabledFor(logging.INFO):
            # pynetdicom's standard handlers format an INFO/DEBUG line for
            # every PDU and DIMSE message, whether or not it is shown; they
            # cost more per small instance than storing it.
            _config.LOG_HANDLER_LEVEL = "none"
        self.server = reactor.start_server(self.ae, (self.address, self.port), self.handlers)
        # Re-read the bound port (0 means "any free port", used by tests).
        self.port = self.server.server_address[1]

    def active_associations(self) -> int:
        if self.server is None:
            return 0
        return len(self.server.active_associations)

    def drain(self, timeout: float = 60.0) -> bool:
        """Refuse new associations and wait for the current ones to end."""
        self.policy.draining.set()
        if self.server is None:
            return True
        deadline = threading.Event()
        waited = 0.0
        while self.server.active_associations and waited < timeout:
            deadline.wait(0.05)
            waited += 0.05
        return not self.server.active_associations

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    def close(self, wait_for_handlers=None, drain_timeout: float = 10.0,
              handler_timeout: float = 30.0) -> None:
        """Stop gracefully: refuse new associations, let the current ones end
        (up to ``drain_timeout``), then let the handler in flight finish and
        answer (``wait_for_handlers(timeout)``, e.g. ``InFlight.close_and_wait``)
        before aborting what is still open, and close the listening socket."""
        if not self.drain(timeout=drain_timeout):
            LOGGER.warning("%s: associations still open after %.0f s; finishing the request "
                           "in flight and aborting them", self.ae.ae_title, drain_timeout)
        if wait_for_handlers is not None:
            wait_for_handlers(handler_timeout)
        if self.server is not None:
            for assoc in list(self.server.active_associations):
                assoc.abort()
        self.stop()
