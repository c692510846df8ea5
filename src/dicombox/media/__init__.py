"""The Portable Media Manager: jobs on the burner AE, and the pipeline that writes them.

The pipeline (this package's library part; it knows nothing of jobs or
DICOM networking) turns the instances of one medium into a verified disc,
stick or image, one blocking step at a time:

.. code-block:: python

    # fileset.py
    @dataclass(frozen=True)
    class SourceInstance:        # an instance as the spool holds it
        path: Path; sop_instance_uid: str; sop_class_uid: str
        study_instance_uid: str; series_instance_uid: str; patient_id: str
        transfer_syntax_uid: str; size: int; sha256: str
        key: int | None = None   # the caller's handle (the service: its row id)

    @dataclass(frozen=True)
    class MediaLabel:            # "Disc 1 of 3" in README.TXT and INDEX.HTM
        volume: int; volumes: int; job_id: str; box_name: str
        institution: str; created: datetime

    def build_fileset(instances, out_dir, *, fileset_id, profile, label,
                      progress=None, cancel=None, replace=False,
                      manifest=None, current=None) -> FileSetResult
        # DICOMDIR + DICOM files + README.TXT + INDEX.HTM + IHE_PDI/ under out_dir
        # (built in out_dir.partial, renamed when complete and synced); instances
        # read once, nothing kept per instance in memory.  manifest(path, sha256,
        # size) receives each file's line as it is written; current(instance)
        # gives an instance as the spool holds it when its file is copied.
        # FileSetResult: files [(relative path, sha256, size)] (None with
        # manifest), total_bytes, profile, fileset_id, instances, converted,
        # patients, studies.
    def size_on_medium(instance, profile) -> int     # for spanning when decoding
    def fileset_id_from(text) -> str                 # a valid File-set ID

    # profiles.py: PROFILES (STD-GEN-CD, -DVD-JPEG, -DVD-J2K, -BD-JPEG,
    # -USB-JPEG, -USB-J2K); choose(writer_kind, media_type, capacity, configured)

    # span.py
    def plan_volumes(instances, capacity_bytes, overhead_bytes=OVERHEAD_BYTES, *,
                     size_of=None, block_bytes=2048, split_series=True)
        -> list[list[SourceInstance]]    # MediaError("too-small") if one cannot fit
    def plan_runs(instances, capacity_bytes, overhead_bytes=OVERHEAD_BYTES, *,
                  series_of, size_of=None, block_bytes=2048, split_series=True,
                  key=None) -> list[list[Run]]
        # the same plan from one pass over the job (and one over each series
        # that must be split), as runs: a study, a series or a run of a series

    # iso.py
    def build_iso(fileset_dir, iso_path, volume_id, progress=None, cancel=None) -> int
    def volume_id_from(text) -> str      # at most 16 d-characters, keeps "_1OF3"

    # writers.py (MediaError is errors.MediaError)
    class MediumState(Enum): NO_MEDIUM, BLANK, APPENDABLE, CLOSED, UNKNOWN
    @dataclass class MediumInfo: state; capacity_bytes; free_bytes; description;
                                 media_type; rewritable
    class MediaError(Exception): .kind in errors.KINDS ("no-drive", "no-medium",
        "not-blank", "too-small", "write-failed", "verify-failed", "removed",
        "build-failed", "source-changed", "cancelled"); .medium_fault
    class OpticalWriter(device, xorriso="xorriso", eject=True, *, speed="", overwrite=False)
    class UsbWriter(target=None | image=None, *, require_mount=True)
    class FolderWriter(directory)
        # each: kind, needs_iso, probe(cancel=None) -> MediumInfo,
        #       write(source, progress=None, cancel=None)   source: the ISO if
        #           needs_iso, else the file-set directory; FolderWriter returns
        #           the path it wrote,
        #       verify(iso_path=None, files=None, *, iso_sha256=None,
        #              progress=None, cancel=None)   files: the manifest, any
        #           iterable that can be walked twice (jobs.Manifest reads the
        #           index in batches),
        #       eject(cancel=None),
        #       usable_bytes(info) -> int, block_bytes (for plan_volumes)
    def writer_for(kind, **settings); def writer_from_config(config.media)

Progress callbacks receive (bytes done, bytes in total).  Every call blocks
and starts no thread; long steps take an optional ``threading.Event`` that
cancels them with ``MediaError("cancelled")``.

The media service (jobs, the SCP on the burner AE, udev) lives in the other
modules of this package.  This file imports nothing, so importing a part of
the package does not load the rest.
"""
