"""The MPPS / Data-Router section: the MPPS SCP, its relay destinations and the
"study arrived" notifications sent to the RIS."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from .core import check_address, check_ae_title, check_ae_titles, check_networks, check_port
from .schema import ConfigError, setting

_TAG_RE = re.compile(r"^\(?([0-9A-Fa-f]{4}),?([0-9A-Fa-f]{4})\)?$")


def parse_tag(text: str) -> int | None:
    """A tag from ``(gggg,eeee)``, ``gggg,eeee``, ``ggggeeee`` or a DICOM keyword."""
    m = _TAG_RE.match(text.strip())
    if m:
        return int(m.group(1) + m.group(2), 16)
    from pydicom.datadict import tag_for_keyword

    return tag_for_keyword(text.strip())


def check_tags(values: tuple[str, ...]) -> str | None:
    for v in values:
        if parse_tag(v) is None:
            return f"{v!r} is neither a DICOM keyword nor a tag written (gggg,eeee)"
    return None


@dataclass(frozen=True)
class MppsDestination:
    """One system the procedure steps are relayed to."""

    name: str = setting(doc="the destination's name, shown by `dicombox mpps list`")
    ae_title: str = setting(check=check_ae_title, doc="the destination's MPPS SCP AE title")
    host: str = setting(check=check_address, doc="the destination's address")
    role: Literal["order-filler", "report-manager"] = setting(
        "order-filler", doc="the order filler / system scheduler (RIS) or the report manager")
    port: int = setting(104, check=check_port, doc="the destination's port")
    strip_private: bool = setting(False, doc="remove private attributes before relaying")
    remove: tuple[str, ...] = setting(
        (), check=check_tags,
        doc="attributes (keywords or (gggg,eeee)) removed before relaying to this destination")


@dataclass(frozen=True)
class NotificationSection:
    """"Study arrived" notifications to the RIS (reference §3.1.3.3.5)."""

    enabled: bool = setting(False, doc="send study-arrived notifications to the RIS")
    kind: Literal["ian", "scn"] = setting(
        "ian", doc="Instance Availability Notification (N-CREATE) or Basic Study Content "
        "Notification (C-STORE)")
    ae_title: str = setting("RIS", check=check_ae_title, doc="the RIS's AE title")
    host: str = setting("127.0.0.1", check=check_address, doc="the RIS's address")
    port: int = setting(104, check=check_port, doc="the RIS's port")
    quiet_seconds: float = setting(
        300.0, min=1, max=7 * 86400,
        doc="a study is whole when the router received nothing for it for this long")
    on_mpps_completed: bool = setting(
        True, doc="also notify as soon as a COMPLETED procedure step's referenced instances "
        "have all arrived")
    retrieve_ae_title: str = setting(
        "", doc="Retrieve AE Title reported for the instances (default: the router's AE title)")
    poll_seconds: float = setting(2.0, min=0.2, max=600,
                                  doc="how often the router's index is checked")


@dataclass(frozen=True)
class MppsSection:
    enabled: bool = setting(True, doc="run the MPPS service")
    ae_title: str = setting("DICOMBOX_PPS", check=check_ae_title, doc="the MPPS SCP's AE title")
    port: int = setting(105, check=check_port, doc="TCP port of the MPPS listener")
    allowed_calling_aets: tuple[str, ...] = setting(
        (), check=check_ae_titles, doc="calling AE titles allowed to send MPPS (empty: any)")
    allowed_peers: tuple[str, ...] = setting(
        (), check=check_networks, doc="addresses or networks allowed to connect (empty: any)")
    max_associations: int = setting(10, min=1, max=500,
                                    doc="simultaneous incoming associations")
    require_type2: bool = setting(
        True, doc="refuse an N-CREATE that lacks a Type 2 attribute (0120); false relays it "
        "as received")
    retry_initial_seconds: float = setting(
        5.0, min=0.1, max=3600, doc="first relay retry delay (doubles up to the maximum, "
        "with jitter)")
    retry_max_seconds: float = setting(300.0, min=1, max=86400,
                                       doc="longest delay between relay retries")
    dead_letter_hours: float = setting(
        72.0, min=0, max=24 * 365,
        doc="a message still undelivered after this long moves to dead-letter (0: never)")
    destinations: tuple[MppsDestination, ...] = setting(
        (), doc="where procedure steps are relayed (at most one per role)")
    notifications: NotificationSection = field(default_factory=NotificationSection)

    def validate(self, key: str) -> None:
        if len(self.destinations) > 2:
            raise ConfigError(f"{key}.destinations",
                              "at most two destinations (order filler and report manager)")
        names, roles = set(), set()
        for i, d in enumerate(self.destinations):
            if d.name in names:
                raise ConfigError(f"{key}.destinations[{i}].name",
                                  f"duplicate destination name {d.name!r}")
            if d.role in roles:
                raise ConfigError(f"{key}.destinations[{i}].role",
                                  f"only one destination may have the role {d.role!r}")
            names.add(d.name)
            roles.add(d.role)
        if self.retry_max_seconds < self.retry_initial_seconds:
            raise ConfigError(f"{key}.retry_max_seconds",
                              "must not be smaller than retry_initial_seconds")


def validate_config(config) -> None:
    """Checks across sections."""
