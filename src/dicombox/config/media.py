"""The Portable Media Manager's section."""

from __future__ import annotations

from dataclasses import dataclass

from .core import check_ae_title, check_ae_titles, check_networks, check_port
from .schema import setting


@dataclass(frozen=True)
class MediaSection:
    enabled: bool = setting(True, doc="run the media service")
    ae_title: str = setting("DICOMBOX_CD", check=check_ae_title, doc="the burner's AE title")
    port: int = setting(106, check=check_port, doc="TCP port of the burner's listener")
    allowed_calling_aets: tuple[str, ...] = setting((), check=check_ae_titles)
    allowed_peers: tuple[str, ...] = setting((), check=check_networks)
    max_associations: int = setting(10, min=1, max=500)


def validate_config(config) -> None:
    """Checks across sections."""
