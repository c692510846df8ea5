"""Destinations, routing rules, forwarding and spool cleanup (the router's outbound side)."""

from __future__ import annotations

from dataclasses import dataclass

from .core import check_address, check_ae_title, check_port
from .schema import setting


@dataclass(frozen=True)
class Destination:
    name: str = setting(doc="the destination's name, used by rules and the CLI")
    ae_title: str = setting(check=check_ae_title, doc="the destination's AE title")
    host: str = setting(check=check_address, doc="the destination's address")
    port: int = setting(104, check=check_port, doc="the destination's port")


@dataclass(frozen=True)
class Rule:
    name: str = setting(doc="the rule's name, shown by `dicombox route test`")
    destinations: tuple[str, ...] = setting((), doc="destinations that receive what matches")


@dataclass(frozen=True)
class ForwardingSection:
    pass


@dataclass(frozen=True)
class CleanupSection:
    pass


def validate_config(config) -> None:
    """Checks across sections (rules naming unknown destinations…)."""
