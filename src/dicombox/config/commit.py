"""Storage commitment and the table of known remote AEs."""

from __future__ import annotations

from dataclasses import dataclass

from .core import check_address, check_ae_title, check_port
from .schema import setting


@dataclass(frozen=True)
class RemoteAE:
    ae_title: str = setting(check=check_ae_title, doc="a remote AE (modality) title")
    host: str = setting(check=check_address, doc="its address")
    port: int = setting(104, check=check_port, doc="its port")


@dataclass(frozen=True)
class CommitmentSection:
    pass


def validate_config(config) -> None:
    """Checks across sections."""
