"""Destinations, routing rules, forwarding and spool cleanup (the router's outbound side).

```toml
[[destinations]]
name = "pacs"
ae_title = "PACS"
host = "10.0.0.5"
port = 104
transfer_syntaxes = ["JPEGLosslessSV1", "ExplicitVRLittleEndian"]

[[rules]]
name = "ct-to-pacs"
modalities = ["CT"]
destinations = ["pacs"]

[forwarding]
rule_mode = "first"
default_destinations = ["archive"]
```
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from ..uids import resolve_transfer_syntax
from .core import (
    check_address,
    check_ae_title,
    check_ae_titles,
    check_port,
    check_transfer_syntaxes,
    check_uids,
)
from .schema import ConfigError, setting

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_name(value: str) -> str | None:
    if not NAME_RE.match(value):
        return (f"{value!r} is not a valid name (1 to 64 letters, digits, '_', '.', '-', "
                "starting with a letter or digit)")
    return None


def check_regex(value: str) -> str | None:
    try:
        re.compile(value)
    except re.error as exc:
        return f"{value!r} is not a valid regular expression: {exc}"
    return None


def check_codes(values: tuple[str, ...]) -> str | None:
    for v in values:
        if not v.strip() or len(v) > 16:
            return f"{v!r} is not a valid code string (1 to 16 characters)"
    return None


@dataclass(frozen=True)
class Destination:
    name: str = setting(check=check_name,
                        doc="the destination's name, used by rules and the CLI")
    ae_title: str = setting(check=check_ae_title, doc="the destination's AE title")
    host: str = setting(check=check_address, doc="the destination's address")
    port: int = setting(104, check=check_port, doc="the destination's port")
    transfer_syntaxes: tuple[str, ...] = setting(
        ("ExplicitVRLittleEndian", "ImplicitVRLittleEndian"), check=check_transfer_syntaxes,
        doc="transfer syntaxes the destination may receive, in order of preference; the "
            "stored one is proposed first (see `offer_stored`)")
    offer_stored: bool = setting(
        True, doc="propose the syntax each instance is stored in before `transfer_syntaxes`;"
                  " false forces a conversion to one of them (e.g. lossy for a slow link)")
    lossy: bool = setting(
        False, doc="allow lossless -> lossy conversion (a new SOP Instance UID, Lossy Image "
                   "Compression 01) when the destination accepts only a lossy syntax")
    lossy_ratio: float = setting(10.0, min=1, max=1000,
                                 doc="JPEG 2000 (lossy) compression ratio")
    lossy_near: int = setting(2, min=1, max=255,
                              doc="JPEG-LS near-lossless maximum error (NEAR)")
    decompress_lossy: bool = setting(
        False, doc="allow sending images stored lossy (JPEG baseline...) decompressed; "
                   "by default they are sent only in their stored syntax")
    max_associations: int = setting(2, min=1, max=32,
                                    doc="parallel associations to this destination")
    batch_size: int = setting(100, min=1, max=10000,
                              doc="instances claimed per association (it is reused while "
                                  "work remains)")
    calling_ae_title: str = setting(
        "", doc="calling AE title used towards this destination (default: router.ae_title)")
    connect_timeout: float = setting(10.0, min=0.1, max=600,
                                     doc="seconds to wait for the TCP connection")
    acse_timeout: float = setting(30.0, min=1, max=3600,
                                  doc="seconds to wait for the association response")
    dimse_timeout: float = setting(120.0, min=1, max=3600,
                                   doc="seconds to wait for a C-STORE response")
    network_timeout: float = setting(120.0, min=1, max=3600,
                                     doc="seconds of network inactivity before an abort")
    enabled: bool = setting(True, doc="false keeps queueing for it but sends nothing")

    def transfer_syntax_uids(self) -> tuple[str, ...]:
        return tuple(resolve_transfer_syntax(v) for v in self.transfer_syntaxes)

    def validate(self, key: str) -> None:
        if self.calling_ae_title:
            problem = check_ae_title(self.calling_ae_title)
            if problem:
                raise ConfigError(f"{key}.calling_ae_title", problem)


@dataclass(frozen=True)
class Rule:
    name: str = setting(check=check_name, doc="the rule's name, shown by `dicombox route test`")
    destinations: tuple[str, ...] = setting(
        (), doc="destinations that receive what matches (empty: matching instances are not "
                "forwarded)")
    calling_aets: tuple[str, ...] = setting((), check=check_ae_titles,
                                            doc="match any of these calling AE titles")
    called_aets: tuple[str, ...] = setting((), check=check_ae_titles,
                                           doc="match any of these called AE titles")
    modalities: tuple[str, ...] = setting((), check=check_codes,
                                          doc="match any of these Modality values")
    sop_classes: tuple[str, ...] = setting((), check=check_uids,
                                           doc="match any of these SOP Class UIDs")
    study_description: str = setting("", check=check_regex,
                                     doc="regular expression searched in Study Description")
    series_description: str = setting("", check=check_regex,
                                      doc="regular expression searched in Series Description")
    institution_name: str = setting("", check=check_regex,
                                    doc="regular expression searched in Institution Name")
    body_part_examined: str = setting("", check=check_regex,
                                      doc="regular expression searched in Body Part Examined")
    patient_id: str = setting("", check=check_regex,
                              doc="regular expression searched in Patient ID")
    accession_number: str = setting("", check=check_regex,
                                    doc="regular expression searched in Accession Number")


@dataclass(frozen=True)
class ForwardingSection:
    rule_mode: Literal["first", "all"] = setting(
        "first", doc="`first`: the first matching rule decides; `all`: every matching rule "
                     "adds its destinations")
    default_destinations: tuple[str, ...] = setting(
        (), doc="destinations of instances that no rule matched")
    retry_initial: float = setting(10.0, min=0.1, max=86400,
                                   doc="seconds before the first retry (then doubling)")
    retry_max: float = setting(600.0, min=0.1, max=86400,
                               doc="ceiling of the retry delay, in seconds")
    max_age_hours: float = setting(
        168.0, min=0.0001, max=87600,
        doc="an instance not delivered this long after it was queued goes to dead-letter")
    idle_poll: float = setting(
        10.0, min=0.1, max=3600,
        doc="seconds an idle sender waits before looking at its queue again (new instances "
            "wake it at once)")

    def validate(self, key: str) -> None:
        if self.retry_max < self.retry_initial:
            raise ConfigError(f"{key}.retry_max" if key else "retry_max",
                              f"must be at least retry_initial ({self.retry_initial})")


@dataclass(frozen=True)
class CleanupSection:
    enabled: bool = setting(True, doc="remove forwarded instances from the spool")
    interval: float = setting(60.0, min=0.1, max=86400,
                              doc="seconds between cleanup passes")
    max_age_hours: float = setting(
        0.0, min=0, max=876000,
        doc="remove forwarded instances received longer ago than this (0: never by age)")
    red_zone_mb: int = setting(
        0, min=0, doc="when free space falls below this, remove the oldest forwarded "
                      "instances... (0: no space-driven cleanup)")
    green_zone_mb: int = setting(0, min=0, doc="...until free space is back above this")
    delete_unrouted: bool = setting(
        False, doc="also remove instances that no rule routed anywhere")

    def validate(self, key: str) -> None:
        if self.red_zone_mb and self.green_zone_mb < self.red_zone_mb:
            raise ConfigError(f"{key}.green_zone_mb" if key else "green_zone_mb",
                              f"must be at least red_zone_mb ({self.red_zone_mb})")


def validate_config(config) -> None:
    """Checks across sections: names unique, rules naming known destinations."""
    names: dict[str, int] = {}
    for i, dest in enumerate(config.destinations):
        if dest.name in names:
            raise ConfigError(f"destinations[{i}].name",
                              f"duplicate destination name {dest.name!r} "
                              f"(also destinations[{names[dest.name]}])")
        names[dest.name] = i
    seen_rules: dict[str, int] = {}
    for i, rule in enumerate(config.rules):
        if rule.name in seen_rules:
            raise ConfigError(f"rules[{i}].name",
                              f"duplicate rule name {rule.name!r} "
                              f"(also rules[{seen_rules[rule.name]}])")
        seen_rules[rule.name] = i
        for j, dest in enumerate(rule.destinations):
            if dest not in names:
                raise ConfigError(f"rules[{i}].destinations[{j}]", _unknown(dest, names))
        if len(set(rule.destinations)) != len(rule.destinations):
            raise ConfigError(f"rules[{i}].destinations", "a destination is listed twice")
    for j, dest in enumerate(config.forwarding.default_destinations):
        if dest not in names:
            raise ConfigError(f"forwarding.default_destinations[{j}]", _unknown(dest, names))


def _unknown(name: str, names) -> str:
    known = ", ".join(names) or "none configured"
    return f"unknown destination {name!r} (destinations: {known})"
