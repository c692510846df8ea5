"""The MPPS / Data-Router section."""

from __future__ import annotations

from dataclasses import dataclass

from .core import check_ae_title, check_ae_titles, check_networks, check_port
from .schema import setting


@dataclass(frozen=True)
class MppsSection:
    enabled: bool = setting(True, doc="run the MPPS service")
    ae_title: str = setting("DICOMBOX_PPS", check=check_ae_title, doc="the MPPS SCP's AE title")
    port: int = setting(105, check=check_port, doc="TCP port of the MPPS listener")
    allowed_calling_aets: tuple[str, ...] = setting((), check=check_ae_titles)
    allowed_peers: tuple[str, ...] = setting((), check=check_networks)
    max_associations: int = setting(10, min=1, max=500)


def validate_config(config) -> None:
    """Checks across sections."""
