"""The router's section: its AE, association policy, destinations and rules."""

from __future__ import annotations

from dataclasses import dataclass

from .core import check_ae_title, check_ae_titles, check_networks, check_port
from .schema import setting


@dataclass(frozen=True)
class RouterSection:
    ae_title: str = setting("DICOMBOX", check=check_ae_title, doc="the router's AE title")
    port: int = setting(104, check=check_port, doc="TCP port of the router's listener")
    allowed_calling_aets: tuple[str, ...] = setting(
        (), check=check_ae_titles,
        doc="if not empty, only these calling AE titles may associate")
    allowed_peers: tuple[str, ...] = setting(
        (), check=check_networks,
        doc="if not empty, only these addresses/networks (CIDR) may associate")
    max_associations: int = setting(20, min=1, max=500,
                                    doc="simultaneous incoming associations")
