"""Storage commitment and the table of known remote AEs.

The router answers Storage Commitment (Push Model) requests in one of three
modes, globally (``[commitment] mode``) or per calling AE (``mode`` of its
``[[remote_aes]]`` entry):

``local``
    an instance is committed when it is durably in the router's spool;
``forwarded``
    when every destination it was routed to acknowledged it;
``upstream``
    when every destination committed it in turn (the box asks each
    destination listed in ``[[commitment.upstream]]``; a destination not
    listed is judged by ``commitment.unsupported_destinations``).

``[[remote_aes]]`` is the table of modalities the box reports to on a new
association (AE title, address, port), with their per-AE options.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .core import check_address, check_ae_title, check_port
from .schema import ConfigError, setting

Mode = Literal["local", "forwarded", "upstream"]


@dataclass(frozen=True)
class RemoteAE:
    ae_title: str = setting(check=check_ae_title, doc="a remote AE (modality) title")
    host: str = setting(check=check_address, doc="its address")
    port: int = setting(104, check=check_port, doc="its port")
    mode: Mode | None = setting(
        None, doc="storage commitment mode for requests from this AE "
                  "(default: commitment.mode)")
    same_association: bool | None = setting(
        None, doc="report on the request's association while it is open "
                  "(default: commitment.same_association)")
    role_selection: bool = setting(
        True, doc="propose SCU/SCP role selection (the box as SCP) when reporting on a "
                  "new association")


@dataclass(frozen=True)
class UpstreamCommitment:
    """A destination that is itself a Storage Commitment SCP."""

    destination: str = setting(doc="a [[destinations]] name the box asks to commit what it "
                                   "delivered")
    batch: int = setting(500, min=1, max=10000,
                         doc="instances per N-ACTION request to this destination")
    report_timeout: float = setting(
        600.0, min=1, max=7 * 86400,
        doc="seconds to wait for its N-EVENT-REPORT before asking again")
    max_requests: int = setting(
        5, min=1, max=1000,
        doc="times one delivered instance is asked for before the box stops asking")
    keep_open: float = setting(
        0.0, min=0, max=600,
        doc="seconds to keep the request's association open for a report on it "
            "(0: release at once; the report then comes on a new association)")


@dataclass(frozen=True)
class CommitmentSection:
    enabled: bool = setting(True, doc="offer the Storage Commitment Push Model SCP on the "
                                      "router's AE")
    mode: Mode = setting("local", doc="what a successful commitment means: local, "
                                      "forwarded or upstream")
    same_association: bool = setting(
        True, doc="send the N-EVENT-REPORT on the request's association if the requester "
                  "keeps it open; otherwise (or if false) on a new association")
    local_timeout: float = setting(
        10.0, min=0, max=86400,
        doc="seconds an instance not (yet) in the spool may still arrive before it is "
            "reported as failed (0112H)")
    timeout: float = setting(
        3600.0, min=1, max=30 * 86400,
        doc="forwarded/upstream modes: seconds to wait for delivery or commitment before "
            "an instance is reported as failed (0110H)")
    check_interval: float = setting(
        1.0, min=0.05, max=60, doc="seconds between evaluations of waiting requests")
    report_retry: float = setting(
        5.0, min=0.1, max=3600, doc="first delay before a failed report is sent again "
                                    "(doubles, with jitter)")
    report_retry_max: float = setting(
        300.0, min=0.1, max=86400, doc="ceiling of the delay between report attempts")
    report_give_up: float = setting(
        7 * 86400.0, min=60, max=365 * 86400,
        doc="seconds after which an undeliverable report is abandoned")
    report_timeout: float = setting(
        30.0, min=1, max=3600,
        doc="seconds to wait for the requester's answer to an N-EVENT-REPORT")
    report_workers: int = setting(4, min=1, max=64,
                                  doc="reports sent at the same time")
    keep_days: float = setting(30.0, min=0, max=3650,
                               doc="days finished requests are kept for `dicombox commit list`")
    max_references: int = setting(
        20000, min=1, max=1_000_000,
        doc="instances one request may reference (more: refused with 0213H)")
    unsupported_destinations: Literal["delivered", "fail"] = setting(
        "delivered",
        doc="upstream mode, destinations not in [[commitment.upstream]]: 'delivered' "
            "counts their acknowledgement, 'fail' never commits what they hold")
    upstream: tuple[UpstreamCommitment, ...] = setting(
        (), doc="destinations asked to commit what the box delivered")

    def validate(self, key: str) -> None:
        names = [u.destination for u in self.upstream]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise ConfigError(f"{key}.upstream[{i}].destination",
                                  f"destination {name!r} is listed twice")

    def mode_for(self, remote: RemoteAE | None) -> str:
        return remote.mode if remote is not None and remote.mode else self.mode

    def same_association_for(self, remote: RemoteAE | None) -> bool:
        if remote is not None and remote.same_association is not None:
            return remote.same_association
        return self.same_association


def remote_ae(config, ae_title: str) -> RemoteAE | None:
    """The ``[[remote_aes]]`` entry of a calling AE title (spaces ignored)."""
    title = ae_title.strip()
    for remote in config.remote_aes:
        if remote.ae_title.strip() == title:
            return remote
    return None


def commits_upstream(config, destination: str) -> bool:
    """Whether the box asks ``destination`` to commit what it delivered."""
    return any(u.destination == destination for u in config.commitment.upstream)


def validate_config(config) -> None:
    """Checks across sections: remote AEs are unique, upstream destinations exist."""
    seen: set[str] = set()
    for i, remote in enumerate(config.remote_aes):
        title = remote.ae_title.strip()
        if title in seen:
            raise ConfigError(f"remote_aes[{i}].ae_title", f"AE title {title!r} is listed twice")
        seen.add(title)
    destinations = {d.name for d in config.destinations}
    for i, up in enumerate(config.commitment.upstream):
        if up.destination not in destinations:
            known = ", ".join(sorted(destinations)) or "none configured"
            raise ConfigError(f"commitment.upstream[{i}].destination",
                              f"no destination named {up.destination!r} (known: {known})")
    if not config.commitment.enabled or config.destinations:
        return
    if config.commitment.mode != "local":
        raise ConfigError("commitment.mode", f"mode {config.commitment.mode!r} needs at least "
                          "one [[destinations]]")
    for i, remote in enumerate(config.remote_aes):
        if remote.mode not in (None, "local"):
            raise ConfigError(f"remote_aes[{i}].mode",
                              f"mode {remote.mode!r} needs at least one [[destinations]]")
