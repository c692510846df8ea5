"""The one exception of the media pipeline, with a kind a job state can show.

Every failure the pipeline reports (a file-set that cannot be built, a medium
that is missing, full, closed or removed, a write or a read-back that failed,
a cancelled step) is a :class:`MediaError` whose ``kind`` is a short,
stable word the media service stores with the job and the front panel and
the CLI show, and whose message is one line a technologist can act on.
"""

from __future__ import annotations

#: The kinds of :class:`MediaError`, and what each means for the job.
KINDS = {
    "no-drive": "the configured drive or stick does not exist",
    "no-medium": "no disc in the drive / nothing mounted",
    "not-blank": "the medium already holds data that must not be overwritten",
    "too-small": "the file-set does not fit on the medium",
    "write-failed": "writing failed (the medium is probably bad)",
    "verify-failed": "what was read back differs from what was written",
    "removed": "the medium was removed while it was written or read",
    "build-failed": "the file-set or image could not be built from the job's instances",
    "source-changed": "a spool file no longer matches the checksum it was received with",
    "cancelled": "an operator cancelled the step",
}


class MediaError(Exception):
    """A media step failed; ``kind`` is one of :data:`KINDS`."""

    def __init__(self, kind: str, message: str):
        if kind not in KINDS:
            raise ValueError(f"unknown media error kind {kind!r}")
        self.kind = kind
        self.message = message
        super().__init__(message)

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"MediaError({self.kind!r}, {self.message!r})"

    @property
    def medium_fault(self) -> bool:
        """True when a fresh medium may succeed where this one failed."""
        return self.kind in ("not-blank", "write-failed", "verify-failed", "removed")
