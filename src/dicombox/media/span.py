"""Split a job over several media, each a complete file-set of its own.

The rule a reader of the discs expects: a study stays on one medium when it
can; a study larger than a medium is split between its series; a series
larger than a medium (a thin-slice CT on a CD) is split between its
instances, in the order the job lists them, so each medium holds a run of it.
Media are filled in the job's order (next fit): disc 1 holds the first
studies, and a study that does not fit in what is left of a disc starts the
next one rather than being split.  A study that fits on no single disc
starts on a fresh one, so no disc holds a stray piece of it behind other
studies; its series then fill the discs in order.

What a medium can take is estimated from what the ISO image (or the USB
file system) will need: each file rounded up to the block size, plus the
directory entries and DICOMDIR records of every instance, plus the
directories of every patient, study and series (and the study's web page),
plus a fixed overhead for the volume descriptors, path tables, README.TXT,
INDEX.HTM and the drive's padding.  The estimate errs on the large side, and
the writers still check the real image against the free space before they
write.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from .errors import MediaError
from .fileset import SourceInstance

BLOCK = 2048
#: System area (32 KiB), volume descriptors (primary, Joliet, terminator), path
#: tables, root directories, README.TXT, INDEX.HTM, the DICOMDIR header; about
#: 100 KiB in practice.  (A CD writer's run-out padding is the writer's
#: business: see ``usable_bytes`` of the writers.)
OVERHEAD_BYTES = 512 * 1024
#: The instance's DICOMDIR records and its entries in the ISO 9660 (with Rock
#: Ridge) and Joliet directories.
PER_INSTANCE = 1024
#: A directory's extents in both trees, its DICOMDIR record.
PER_DIRECTORY = 3 * BLOCK
#: A study's page in IHE_PDI/ and its lines in INDEX.HTM.
PER_STUDY_PAGE = 2 * BLOCK


def _round(n: int, block: int) -> int:
    return -(-n // block) * block


class Run(NamedTuple):
    """Instances that go on one volume: a patient's study, one of its series, or a run of
    a series (the instances ``first`` to ``last``, by :func:`plan_runs`' ``key``)."""

    patient_id: str
    study_instance_uid: str
    series_instance_uid: str | None = None     # None: the whole study
    first: Any = None                          # None: the whole series
    last: Any = None


@dataclass
class _Series:
    """What the planner keeps of a series: totals, not instances."""

    cost: int = 0       # files rounded to the block, and the per-instance entries
    bytes: int = 0      # sizes on the medium, as they are


@dataclass(frozen=True)
class _Piece:
    """What is placed at once: a study, a series or an instance."""

    patients: frozenset
    studies: frozenset
    series: frozenset
    cost: int


class _Volume:
    def __init__(self, overhead: int):
        self.runs: list[Run] = []
        self.used = overhead
        self.patients: set[str] = set()
        self.studies: set[str] = set()
        self.series: set[str] = set()

    def cost(self, piece: _Piece) -> int:
        patients = piece.patients - self.patients
        studies = piece.studies - self.studies
        series = piece.series - self.series
        return (piece.cost + PER_DIRECTORY * (len(patients) + len(studies) + len(series))
                + PER_STUDY_PAGE * len(studies))

    def add(self, piece: _Piece, cost: int) -> None:
        self.used += cost
        self.patients |= piece.patients
        self.studies |= piece.studies
        self.series |= piece.series


def plan_runs(instances: Iterable[SourceInstance], capacity_bytes: int,
              overhead_bytes: int = OVERHEAD_BYTES, *,
              series_of: Callable[[str, str, str], Iterable[SourceInstance]],
              size_of: Callable[[SourceInstance], int] | None = None,
              block_bytes: int = BLOCK, split_series: bool = True,
              key: Callable[[SourceInstance, int], Any] | None = None) -> list[list[Run]]:
    """The volumes of :func:`plan_volumes`, each as the runs of instances it holds.

    ``instances`` (the job, in its order, each instance once) is read once,
    for the totals of every series: nothing is kept per instance, so a job
    of any size is planned in the memory of its patients, studies and
    series.  A series that fits no medium is read again, from
    ``series_of(patient ID, study, series)`` (its instances in the same
    order), and split into runs; ``key(instance, position in its series)``
    names a run's first and last instance (default: the position).
    """
    size_of = size_of or (lambda i: i.size)
    key = key or (lambda _instance, position: position)
    if capacity_bytes <= overhead_bytes:
        raise MediaError("too-small",
                         f"a medium of {capacity_bytes} bytes cannot even hold the "
                         f"file-set's overhead ({overhead_bytes} bytes)")
    # patient -> study -> series -> totals, in the order they came.
    tree: dict[str, dict[str, dict[str, _Series]]] = {}
    for inst in instances:
        size = size_of(inst)
        totals = (tree.setdefault(inst.patient_id, {}).setdefault(inst.study_instance_uid, {})
                  .setdefault(inst.series_instance_uid, _Series()))
        totals.cost += _round(size, block_bytes) + PER_INSTANCE
        totals.bytes += size

    volumes = [_Volume(overhead_bytes)]

    def place(piece: _Piece) -> _Volume | None:
        """Put ``piece`` on the current or a new medium; None if no medium holds it."""
        current = volumes[-1]
        cost = current.cost(piece)
        if current.used + cost <= capacity_bytes:
            current.add(piece, cost)
            return current
        fresh = _Volume(overhead_bytes)
        cost = fresh.cost(piece)
        if fresh.used + cost > capacity_bytes:
            return None
        fresh.add(piece, cost)
        volumes.append(fresh)
        return fresh

    for patient, studies in tree.items():
        p = frozenset((patient,))
        for study, series in studies.items():
            s = frozenset((study,))
            whole = _Piece(p, s, frozenset(series), sum(t.cost for t in series.values()))
            if (volume := place(whole)) is not None:
                volume.runs.append(Run(patient, study))
                continue
            if volumes[-1].runs:
                volumes.append(_Volume(overhead_bytes))
            for uid, totals in series.items():
                e = frozenset((uid,))
                if (volume := place(_Piece(p, s, e, totals.cost))) is not None:
                    volume.runs.append(Run(patient, study, uid))
                    continue
                if not split_series:
                    raise MediaError("too-small",
                                     f"series {uid} ({totals.bytes / 1e6:.1f} MB) "
                                     f"does not fit on a medium of "
                                     f"{capacity_bytes / 1e6:.1f} MB")
                run: list = []          # [volume, first key, last key]
                for position, inst in enumerate(series_of(patient, study, uid)):
                    size = size_of(inst)
                    volume = place(_Piece(p, s, e, _round(size, block_bytes) + PER_INSTANCE))
                    if volume is None:
                        raise MediaError("too-small",
                                         f"instance {inst.sop_instance_uid} "
                                         f"({size / 1e6:.1f} MB) does not fit on a "
                                         f"medium of {capacity_bytes / 1e6:.1f} MB")
                    if run and run[0] is volume:
                        run[2] = key(inst, position)
                        continue
                    if run:
                        run[0].runs.append(Run(patient, study, uid, run[1], run[2]))
                    run = [volume, key(inst, position), key(inst, position)]
                if run:
                    run[0].runs.append(Run(patient, study, uid, run[1], run[2]))
    return [v.runs for v in volumes if v.runs]


def plan_volumes(instances: Sequence[SourceInstance], capacity_bytes: int,
                 overhead_bytes: int = OVERHEAD_BYTES, *,
                 size_of: Callable[[SourceInstance], int] | None = None,
                 block_bytes: int = BLOCK, split_series: bool = True
                 ) -> list[list[SourceInstance]]:
    """Group the instances into volumes that each fit ``capacity_bytes``.

    ``size_of`` gives the size an instance will have on the medium (default:
    its spool size; pass a larger estimate when the profile decompresses).
    With ``split_series`` false a series that fits no medium is an error
    instead of being split.  Raises :class:`MediaError` (``too-small``) when an
    instance (or, then, a series) cannot fit on an empty medium.  (The media
    service plans with :func:`plan_runs`, which holds no list of the job.)
    """
    # patient -> study -> series -> instances, in the order they came.
    tree: dict[str, dict[str, dict[str, list[SourceInstance]]]] = {}
    seen: set[str] = set()
    unique = []
    for inst in instances:
        if inst.sop_instance_uid in seen:
            continue
        seen.add(inst.sop_instance_uid)
        unique.append(inst)
        (tree.setdefault(inst.patient_id, {}).setdefault(inst.study_instance_uid, {})
             .setdefault(inst.series_instance_uid, []).append(inst))
    volumes = plan_runs(unique, capacity_bytes, overhead_bytes,
                        series_of=lambda p, s, e: tree[p][s][e], size_of=size_of,
                        block_bytes=block_bytes, split_series=split_series)
    out = []
    for runs in volumes:
        volume: list[SourceInstance] = []
        for run in runs:
            study = tree[run.patient_id][run.study_instance_uid]
            if run.series_instance_uid is None:
                volume.extend(i for series in study.values() for i in series)
            elif run.first is None:
                volume.extend(study[run.series_instance_uid])
            else:
                volume.extend(study[run.series_instance_uid][run.first:run.last + 1])
        out.append(volume)
    return out
