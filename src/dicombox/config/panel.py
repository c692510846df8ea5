"""The front panel's section: LEDs and buttons."""

from __future__ import annotations

from dataclasses import dataclass

from .schema import setting


@dataclass(frozen=True)
class PanelSection:
    enabled: bool = setting(True, doc="run the panel service")


def validate_config(config) -> None:
    """Checks across sections."""
