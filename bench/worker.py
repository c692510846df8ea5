"""Our side of the media and transcoding benchmarks, run as a child process.

Each command does one job with the library code the services use and prints
one JSON line ``{"seconds": ..., "peak_rss": ...}``: the time of the job
itself (not the interpreter's start-up, which a long-running service does not
pay per job) and this process's own peak RSS (``VmHWM``: unlike ``wait4``'s
``ru_maxrss`` it does not count the parent's memory this process was forked
with).

    python -m bench.worker fileset INSTANCES.json OUT_DIR
    python -m bench.worker iso SOURCE_DIR OUT.iso
    python -m bench.worker transcode SOURCE_DIR OUT_DIR
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from pathlib import Path

EXPLICIT_LE = "1.2.840.10008.1.2.1"


def fileset(instances_json: str, out_dir: str) -> dict:
    from dicombox.media.fileset import MediaLabel, SourceInstance, build_fileset

    rows = json.loads(Path(instances_json).read_text())
    instances = [SourceInstance(path=Path(r.pop("path")), **r) for r in rows]
    label = MediaLabel(volume=1, volumes=1, job_id="BENCH", box_name="bench",
                       institution="Bench Hospital", created=datetime.now())
    start = time.perf_counter()
    result = build_fileset(instances, Path(out_dir), fileset_id="BENCH",
                           profile="STD-GEN-CD", label=label)
    return {"seconds": time.perf_counter() - start, "instances": result.instances,
            "bytes": result.total_bytes}


def iso(source_dir: str, out_iso: str) -> dict:
    from dicombox.media.iso import build_iso

    start = time.perf_counter()
    size = build_iso(Path(source_dir), Path(out_iso), "BENCH")
    return {"seconds": time.perf_counter() - start, "bytes": size}


def transcode(source_dir: str, out_dir: str) -> dict:
    """JPEG Lossless -> Explicit VR Little Endian, one file at a time."""
    files = sorted(Path(source_dir).glob("*.dcm"))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    try:
        from dicombox.transcode import convert
    except ImportError:
        convert = None
    start = time.perf_counter()
    if convert is not None:
        for f in files:
            result = convert(f, EXPLICIT_LE, out)
            path = getattr(result, "path", None)
            if path is not None:
                Path(path).replace(out / f.name)
        impl = "dicombox.transcode"
    else:
        from pydicom import dcmread
        for f in files:
            ds = dcmread(f)
            ds.decompress()
            ds.save_as(out / f.name, enforce_file_format=True)
        impl = "pydicom decompress"
    return {"seconds": time.perf_counter() - start, "files": len(files),
            "implementation": impl}


COMMANDS = {"fileset": fileset, "iso": iso, "transcode": transcode}


def peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        print(__doc__, file=sys.stderr)
        return 2
    result = COMMANDS[argv[0]](*argv[1:])
    result["peak_rss"] = peak_rss()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
