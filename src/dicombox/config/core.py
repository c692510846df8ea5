"""Sections every service shares: the box, the network and the storage policy."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..uids import TRANSFER_SYNTAXES, is_uid, resolve_transfer_syntax
from .schema import ConfigError, setting

AE_TITLE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")


def check_ae_title(value: str) -> str | None:
    if not AE_TITLE_RE.match(value) or not value.strip():
        return (f"{value!r} is not a valid AE title (1 to 16 printable ASCII characters, "
                "no backslash, not all spaces)")
    return None


def check_port(value: int) -> str | None:
    if not 1 <= value <= 65535:
        return f"port must be between 1 and 65535, not {value}"
    return None


def check_address(value: str) -> str | None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if value in ("localhost",) or re.match(r"^[A-Za-z0-9.-]+$", value):
            return None
        return f"{value!r} is not an IP address or host name"
    return None


def check_networks(values: tuple[str, ...]) -> str | None:
    for v in values:
        try:
            ipaddress.ip_network(v, strict=False)
        except ValueError:
            return f"{v!r} is not an IP address or network (CIDR)"
    return None


def check_transfer_syntaxes(values: tuple[str, ...]) -> str | None:
    if not values:
        return "must list at least one transfer syntax"
    seen = set()
    for v in values:
        uid = resolve_transfer_syntax(v)
        if uid is None:
            known = ", ".join(ts.keyword for ts in TRANSFER_SYNTAXES)
            return f"unknown transfer syntax {v!r} (use a UID or one of: {known})"
        if uid in seen:
            return f"transfer syntax {v!r} is listed twice"
        seen.add(uid)
    return None


def check_uids(values: tuple[str, ...]) -> str | None:
    for v in values:
        if not is_uid(v):
            return f"{v!r} is not a valid UID"
    return None


def check_ae_titles(values: tuple[str, ...]) -> str | None:
    for v in values:
        problem = check_ae_title(v)
        if problem:
            return problem
    return None


DEFAULT_TRANSFER_SYNTAXES = tuple(ts.keyword for ts in TRANSFER_SYNTAXES)


@dataclass(frozen=True)
class BoxSection:
    state_dir: Path = setting(Path("/var/lib/dicombox"),
                              doc="where the spools, indexes and journals live")
    listen_address: str = setting("0.0.0.0", check=check_address,
                                  doc="address every DICOM listener binds")
    log_level: Literal["debug", "info", "warning", "error"] = setting(
        "info", doc="logging threshold")
    name: str = setting("dicombox", doc="the box's name, shown on media labels and README.TXT")
    institution: str = setting("", doc="institution name written on media")


@dataclass(frozen=True)
class NetworkSection:
    acse_timeout: float = setting(30.0, min=1, max=3600,
                                  doc="seconds to wait for association messages (ARTIM)")
    dimse_timeout: float = setting(120.0, min=1, max=3600,
                                   doc="seconds to wait for a DIMSE message")
    network_timeout: float = setting(120.0, min=1, max=3600,
                                     doc="seconds of network inactivity before an abort")
    max_pdu: int = setting(262144, min=0, max=2**32 - 1,
                           doc="maximum PDU length received (0 = unlimited)")


@dataclass(frozen=True)
class StorageSection:
    reserve_mb: int = setting(512, min=0,
                              doc="free space below which C-STOREs are refused with A700")
    duplicates: Literal["replace", "keep"] = setting(
        "replace", doc="what a second instance with a known SOP Instance UID does")
    transfer_syntaxes: tuple[str, ...] = setting(
        DEFAULT_TRANSFER_SYNTAXES, check=check_transfer_syntaxes,
        doc="transfer syntaxes accepted, in order of preference (UIDs or keywords)")
    private_sop_classes: tuple[str, ...] = setting(
        (), check=check_uids, doc="extra (private) storage SOP class UIDs to accept")

    def transfer_syntax_uids(self) -> tuple[str, ...]:
        return tuple(resolve_transfer_syntax(v) for v in self.transfer_syntaxes)


def check_unique(key: str, values, what: str) -> None:
    seen = set()
    for v in values:
        if v in seen:
            raise ConfigError(key, f"duplicate {what} {v!r}")
        seen.add(v)
