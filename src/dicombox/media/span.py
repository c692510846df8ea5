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

from collections.abc import Callable, Sequence

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


class _Volume:
    def __init__(self, overhead: int):
        self.instances: list[SourceInstance] = []
        self.used = overhead
        self.patients: set[str] = set()
        self.studies: set[str] = set()
        self.series: set[str] = set()

    def cost(self, items: Sequence[SourceInstance], size_of, block: int) -> int:
        patients = {i.patient_id for i in items} - self.patients
        studies = {i.study_instance_uid for i in items} - self.studies
        series = {i.series_instance_uid for i in items} - self.series
        data = sum(_round(size_of(i), block) + PER_INSTANCE for i in items)
        return (data + PER_DIRECTORY * (len(patients) + len(studies) + len(series))
                + PER_STUDY_PAGE * len(studies))

    def add(self, items: Sequence[SourceInstance], cost: int) -> None:
        self.instances.extend(items)
        self.used += cost
        self.patients.update(i.patient_id for i in items)
        self.studies.update(i.study_instance_uid for i in items)
        self.series.update(i.series_instance_uid for i in items)


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
    instance (or, then, a series) cannot fit on an empty medium.
    """
    size_of = size_of or (lambda i: i.size)
    if capacity_bytes <= overhead_bytes:
        raise MediaError("too-small",
                         f"a medium of {capacity_bytes} bytes cannot even hold the "
                         f"file-set's overhead ({overhead_bytes} bytes)")
    # patient -> study -> series -> instances, in the order they came.
    tree: dict[str, dict[str, dict[str, list[SourceInstance]]]] = {}
    seen: set[str] = set()
    for inst in instances:
        if inst.sop_instance_uid in seen:
            continue
        seen.add(inst.sop_instance_uid)
        (tree.setdefault(inst.patient_id, {}).setdefault(inst.study_instance_uid, {})
             .setdefault(inst.series_instance_uid, []).append(inst))

    volumes = [_Volume(overhead_bytes)]

    def place(items: list[SourceInstance]) -> bool:
        """Put ``items`` on the current or a new medium; False if no medium holds them."""
        current = volumes[-1]
        cost = current.cost(items, size_of, block_bytes)
        if current.used + cost <= capacity_bytes:
            current.add(items, cost)
            return True
        fresh = _Volume(overhead_bytes)
        cost = fresh.cost(items, size_of, block_bytes)
        if fresh.used + cost > capacity_bytes:
            return False
        fresh.add(items, cost)
        volumes.append(fresh)
        return True

    for studies in tree.values():
        for study in studies.values():
            if place([i for series in study.values() for i in series]):
                continue
            if volumes[-1].instances:
                volumes.append(_Volume(overhead_bytes))
            for series in study.values():
                if place(series):
                    continue
                if not split_series:
                    mb = sum(size_of(i) for i in series) / 1e6
                    raise MediaError("too-small",
                                     f"series {series[0].series_instance_uid} ({mb:.1f} MB) "
                                     f"does not fit on a medium of "
                                     f"{capacity_bytes / 1e6:.1f} MB")
                for inst in series:
                    if not place([inst]):
                        raise MediaError("too-small",
                                         f"instance {inst.sop_instance_uid} "
                                         f"({size_of(inst) / 1e6:.1f} MB) does not fit on a "
                                         f"medium of {capacity_bytes / 1e6:.1f} MB")
    return [v.instances for v in volumes if v.instances]
