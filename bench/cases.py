"""The benchmark cases: each returns one JSON-able dict with every run.

All programs run on loopback inside the private network namespace the
benchmark started in.  Receivers are started fresh, on a fresh directory,
for every run, in an order that rotates between repetitions, so a slow
moment of the machine does not always hit the same program.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import data, floor, procs
from .report import median

#: A case that has spent this long stops repeating (it keeps the runs made):
#: dcmmkdir alone takes minutes for 10 000 instances on a slow disk.
CASE_BUDGET_SECONDS = 150

#: Targets of issue 7 (ratios, higher is better; DICOMDIR is a time bound).
RECEIVE_TARGETS = {"ct": 0.8, "tiny": 0.5}
E2E_TARGET = 0.8
ISO_TARGET = 0.8
DICOMDIR_MAX_TIME_RATIO = 2.0


@dataclass
class Context:
    data_root: Path
    work: Path
    specs: dict
    reps: int
    log: Callable[[str], None] = print
    baseline_src: Path | None = None
    max_peak_rss: dict = field(default_factory=dict)

    def dataset(self, key: str) -> Path:
        return data.ensure(self.data_root, key, self.specs[key], log=self.log)

    def fresh(self, name: str) -> Path:
        path = self.work / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def repetitions(self, started: float):
        """0, 1, ... up to ``reps``, fewer once the case ran over its budget."""
        for rep in range(self.reps):
            if rep and time.monotonic() - started > CASE_BUDGET_SECONDS:
                self.log(f"time budget spent after {rep} repetition(s); not repeating")
                return
            yield rep

    def note_rss(self, who: str, value: int) -> None:
        if value:
            self.max_peak_rss[who] = max(self.max_peak_rss.get(who, 0), value)


def _receivers(ctx: Context) -> dict[str, Callable[[Path], procs.Receiver]]:
    found = {"storescp": procs.StoreSCP, "orthanc": procs.Orthanc, "router": procs.Router}
    if ctx.baseline_src is not None:
        found["router@baseline"] = lambda wd: procs.Router(wd, src=ctx.baseline_src)
    return found


def _rotated(items: list, rep: int) -> list:
    k = rep % len(items)
    return items[k:] + items[:k]


def _summary(runs: list[dict]) -> dict:
    ok = [r for r in runs if not r.get("error")]
    return {
        "runs": runs,
        "median_seconds": median([r["seconds"] for r in ok]),
        "max_peak_rss": max([r.get("peak_rss") or 0 for r in ok], default=0),
        "median_cpu_seconds": median([r.get("cpu_seconds") for r in ok]),
        "error": next((r["error"] for r in runs if r.get("error")), None) if not ok else None,
    }


# -- receiving ---------------------------------------------------------------------


def receive(ctx: Context, key: str) -> dict:
    folder = ctx.dataset(key)
    files = data.files_of(folder)
    total = data.total_bytes(folder)
    factories = _receivers(ctx)
    runs: dict[str, list[dict]] = {name: [] for name in factories}
    for rep in range(ctx.reps):
        for name in _rotated(list(factories), rep):
            ctx.log(f"receive {key}: {name} (run {rep + 1}/{ctx.reps})")
            wd = ctx.fresh(f"receive-{key}-{name}")
            run: dict = {}
            rec = None
            try:
                rec = factories[name](wd).start()
                procs.reset_peak_rss(rec.pid)
                cpu0 = procs.cpu_seconds(rec.pid)
                run["seconds"] = procs.storescu(rec.port, rec.aet, folder / "files")
                run["cpu_seconds"] = procs.cpu_seconds(rec.pid) - cpu0
                run["peak_rss"] = procs.peak_rss(rec.pid)
                count = rec.count()
                if count != len(files):
                    run["error"] = f"{name} holds {count} of {len(files)} instances"
            except Exception as exc:  # noqa: BLE001 - recorded, the run goes on
                run["error"] = f"{type(exc).__name__}: {exc}"[:500]
            finally:
                if rec is not None:
                    rec.stop()
                shutil.rmtree(wd, ignore_errors=True)
            if rec is not None and rec.ours:
                ctx.note_rss(name, run.get("peak_rss", 0))
            runs[name].append(run)
    receivers = {name: _summary(r) for name, r in runs.items()}
    ours = receivers["router"]["median_seconds"]
    ref = receivers["storescp"]["median_seconds"]
    flushes = _durability_floor(ctx, key, files)
    return {
        "case": "receive", "dataset": key, "label": ctx.specs[key].name,
        "instances": len(files), "bytes": total, "receivers": receivers,
        "ratio": ref / ours if ours and ref else None,
        "target": RECEIVE_TARGETS.get(key),
        "durability_floor": flushes,
        "ceiling": floor.ceiling(ref, flushes),
    }


def _durability_floor(ctx: Context, key: str, files: list[Path]) -> dict | None:
    """The contract's flushes alone (bench/floor.py), median of the repetitions."""
    ctx.log(f"receive {key}: durability floor")
    runs = [floor.measure(files, ctx.work / f"floor-{key}") for _ in range(ctx.reps)]
    runs = [r for r in runs if r is not None]
    if not runs:
        return None
    best = sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]
    return {**best, "runs": [r["seconds"] for r in runs]}


# -- end to end ----------------------------------------------------------------------


def forwarding_available() -> bool:
    try:
        from dicombox.router import service
    except ImportError:
        return False
    return any("forward" in spec for spec in service.COMPONENTS)


def end_to_end(ctx: Context, key: str) -> dict:
    """storescu -> router -> Orthanc until Orthanc holds everything, versus
    storescu -> Orthanc directly."""
    label = ctx.specs[key].name
    if not forwarding_available():
        return {"case": "end-to-end", "label": label,
                "skipped": "the router has no forwarding component"}
    folder = ctx.dataset(key)
    n = len(data.files_of(folder))
    direct_runs, routed_runs = [], []
    for rep in range(ctx.reps):
        for mode in _rotated(["direct", "routed"], rep):
            ctx.log(f"end-to-end {key}: {mode} (run {rep + 1}/{ctx.reps})")
            wd = ctx.fresh(f"e2e-{key}-{mode}")
            orthanc = router = None
            run: dict = {}
            try:
                orthanc = procs.Orthanc(wd / "orthanc").start()
                orthanc_cpu = procs.cpu_seconds(orthanc.pid)
                if mode == "direct":
                    run["seconds"] = procs.storescu(orthanc.port, orthanc.aet,
                                                    folder / "files")
                else:
                    router = procs.Router(wd / "router", extra={
                        "destinations": [{"name": "orthanc", "ae_title": orthanc.aet,
                                          "host": "127.0.0.1", "port": orthanc.port}],
                        "rules": [{"name": "everything", "destinations": ["orthanc"]}],
                    }).start()
                    procs.reset_peak_rss(router.pid)
                    router_cpu = procs.cpu_seconds(router.pid)
                    start = time.perf_counter()
                    run["sender_seconds"] = procs.storescu(router.port, router.aet,
                                                           folder / "files")
                    deadline = start + 1800
                    while orthanc.count() < n:
                        if time.perf_counter() > deadline:
                            raise TimeoutError(f"Orthanc holds {orthanc.count()} of {n}")
                        router._check_alive()
                        time.sleep(0.02)
                    run["seconds"] = time.perf_counter() - start
                    run["cpu_seconds"] = procs.cpu_seconds(router.pid) - router_cpu
                    run["peak_rss"] = procs.peak_rss(router.pid)
                    ctx.note_rss("router", run["peak_rss"])
                run["orthanc_cpu_seconds"] = procs.cpu_seconds(orthanc.pid) - orthanc_cpu
                if orthanc.count() != n:
                    run["error"] = f"Orthanc holds {orthanc.count()} of {n} instances"
            except Exception as exc:  # noqa: BLE001 - recorded, the run goes on
                run["error"] = f"{type(exc).__name__}: {exc}"[:500]
            finally:
                for p in (router, orthanc):
                    if p is not None:
                        p.stop()
                shutil.rmtree(wd, ignore_errors=True)
            (direct_runs if mode == "direct" else routed_runs).append(run)
    ours, ref = _summary(routed_runs), _summary(direct_runs)
    ours["name"], ref["name"] = "via router", "direct"
    for summary, runs in ((ours, routed_runs), (ref, direct_runs)):
        summary["median_orthanc_cpu_seconds"] = median(
            [r.get("orthanc_cpu_seconds") for r in runs if not r.get("error")])
    return {"case": "end-to-end", "label": label, "ours": ours, "reference": ref,
            "ratio": _ratio(ref, ours), "target": E2E_TARGET}


def _ratio(ref: dict, ours: dict) -> float | None:
    a, b = ref["median_seconds"], ours["median_seconds"]
    return a / b if a and b else None


# -- media -----------------------------------------------------------------------------


def _worker(ctx: Context, *args) -> dict:
    """Run ``python -m bench.worker ARGS``; its own timing, peak RSS from wait4."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(__file__).resolve().parent.parent), os.environ.get("PYTHONPATH", "")]))
    m = procs.run_measured([sys.executable, "-m", "bench.worker", *args], env=env,
                           want_rss=False)
    if m.returncode != 0:
        return {"error": m.output[-1500:]}
    result = json.loads(m.output.strip().splitlines()[-1])  # with its own peak_rss
    result.update(cpu_seconds=m.cpu, process_seconds=m.seconds)
    return result


def _tool(args, cwd=None, want_rss: bool = True) -> dict:
    """A reference tool's run; ``want_rss`` wraps it in GNU time (about a
    millisecond more: not for the per-image runs)."""
    m = procs.run_measured(args, cwd=cwd, want_rss=want_rss)
    run = {"seconds": m.seconds, "peak_rss": m.peak_rss, "cpu_seconds": m.cpu}
    if m.returncode != 0:
        run["error"] = m.output[-1500:]
    return run


def _media_available(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False


def _dcmtk_layout(files: list[Path], root: Path, per_dir: int = 1000) -> Path:
    """Hard links to ``files`` under DICOM file IDs (8-character components)."""
    base = root / "DICOM"
    for i, f in enumerate(files):
        d = base / f"D{i // per_dir:03d}"
        d.mkdir(parents=True, exist_ok=True)
        os.link(f, d / f"I{i:07d}")
    return base


def _instances_json(files: list[Path], out: Path) -> Path:
    """The spool's view of ``files`` (what the media service reads from its index)."""
    from pydicom import dcmread

    from dicombox.store.instances import file_digest

    rows = []
    for f in files:
        ds = dcmread(f, stop_before_pixels=True)
        sha, size = file_digest(f)
        rows.append({"path": str(f), "sop_instance_uid": str(ds.SOPInstanceUID),
                     "sop_class_uid": str(ds.SOPClassUID),
                     "study_instance_uid": str(ds.StudyInstanceUID),
                     "series_instance_uid": str(ds.SeriesInstanceUID),
                     "patient_id": str(ds.get("PatientID", "")),
                     "transfer_syntax_uid": str(ds.file_meta.TransferSyntaxUID),
                     "size": size, "sha256": sha})
    out.write_text(json.dumps(rows))
    return out


def dicomdir(ctx: Context) -> dict:
    """A file-set with DICOMDIR from N instances: our build_fileset versus
    laying the files out (cp) and running dcmmkdir."""
    label = ctx.specs["fileset"].name
    if not _media_available("dicombox.media.fileset"):
        return {"case": "DICOMDIR", "label": label, "skipped": "no media library"}
    folder = ctx.dataset("fileset")
    files = data.files_of(folder)
    prep = ctx.fresh("dicomdir-prep")
    layout_src = _dcmtk_layout(files, prep / "src")
    instances = _instances_json(files, prep / "instances.json")
    ours_runs, ref_runs, mkdir_runs = [], [], []
    for rep in ctx.repetitions(time.monotonic()):
        for who in _rotated(["ours", "dcmtk"], rep):
            ctx.log(f"DICOMDIR {len(files)}: {who} (run {rep + 1}/{ctx.reps})")
            wd = ctx.fresh("dicomdir-run")
            if who == "ours":
                run = _worker(ctx, "fileset", instances, wd / "fileset")
                ours_runs.append(run)
                ctx.note_rss("media build_fileset", run.get("peak_rss", 0))
            else:
                copy = _tool(["cp", "-r", layout_src, wd / "DICOM"], want_rss=False)
                mk = _tool(["dcmmkdir", "+I", "+r", "+id", wd, "+D", wd / "DICOMDIR",
                            "+F", "BENCH", "DICOM"], cwd=wd)
                mkdir_runs.append(mk)
                ref_runs.append({"seconds": copy["seconds"] + mk["seconds"],
                                 "peak_rss": mk["peak_rss"],
                                 **({"error": copy.get("error") or mk.get("error")}
                                    if copy.get("error") or mk.get("error") else {})})
            shutil.rmtree(wd, ignore_errors=True)
    shutil.rmtree(prep, ignore_errors=True)
    ours, ref = _summary(ours_runs), _summary(ref_runs)
    ours["name"], ref["name"] = "build_fileset", "cp + dcmmkdir"
    dcmmkdir_alone = _summary(mkdir_runs)
    time_ratio = (ours["median_seconds"] / ref["median_seconds"]
                  if ours["median_seconds"] and ref["median_seconds"] else None)
    return {"case": "DICOMDIR", "label": label, "ours": ours, "reference": ref,
            "dcmmkdir_alone": dcmmkdir_alone, "ratio": _ratio(ref, ours),
            "time_ratio": time_ratio, "target": 1 / DICOMDIR_MAX_TIME_RATIO,
            "target_text": f"time <= {DICOMDIR_MAX_TIME_RATIO:.0f}x (ratio >= 0.50x)"}


def iso(ctx: Context, target_bytes: int) -> dict:
    """An ISO 9660 level 1 image with Joliet and Rock Ridge of ~target_bytes:
    our build_iso (pycdlib) versus ``xorriso -as mkisofs``."""
    if not _media_available("dicombox.media.iso"):
        return {"case": "ISO", "label": "", "skipped": "no media library"}
    pool = data.files_of(ctx.dataset("ct")) + data.files_of(ctx.dataset("cr"))
    prep = ctx.fresh("iso-prep")
    chosen, total, i = [], 0, 0
    while total < target_bytes:
        f = pool[i % len(pool)]
        chosen.append(f)
        total += f.stat().st_size
        i += 1
    _dcmtk_layout(chosen, prep / "src", per_dir=500)
    src = prep / "src"
    label = f"{total / 1e6:.0f} MB in {len(chosen)} files"
    ours_runs, ref_runs = [], []
    for rep in ctx.repetitions(time.monotonic()):
        for who in _rotated(["ours", "xorriso"], rep):
            ctx.log(f"ISO {label}: {who} (run {rep + 1}/{ctx.reps})")
            wd = ctx.fresh("iso-run")
            if who == "ours":
                run = _worker(ctx, "iso", src, wd / "ours.iso")
                ours_runs.append(run)
                ctx.note_rss("media build_iso", run.get("peak_rss", 0))
            else:
                ref_runs.append(_tool(["xorriso", "-as", "mkisofs", "-quiet", "-iso-level", "1",
                                       "-J", "-R", "-V", "BENCH", "-o", wd / "ref.iso", src]))
            shutil.rmtree(wd, ignore_errors=True)
    shutil.rmtree(prep, ignore_errors=True)
    ours, ref = _summary(ours_runs), _summary(ref_runs)
    ours["name"], ref["name"] = "build_iso", "xorriso -as mkisofs"
    return {"case": "ISO", "label": label, "bytes": total, "ours": ours, "reference": ref,
            "ratio": _ratio(ref, ours), "target": ISO_TARGET}


# -- the media service ---------------------------------------------------------------


#: Data sets the media service case burns (two sizes: its peak RSS must not follow).
MEDIA_DATASETS = ("tiny", "fileset")


def media_service(ctx: Context, key: str) -> dict:
    """``dicombox serve media`` as a technologist uses it: storescu sends a data set
    to the burner AE, the job closes, and the disc image is built, written and
    verified.  Timed from the first byte sent until every job is done; the
    service's own peak RSS over the whole job is what the memory target is
    about (the library cases above run in a child of their own)."""
    folder = ctx.dataset(key)
    files = data.files_of(folder)
    label = f"{ctx.specs[key].name} -> disc image"
    runs: list[dict] = []
    for rep in ctx.repetitions(time.monotonic()):
        ctx.log(f"media service {key}: (run {rep + 1}/{ctx.reps})")
        wd = ctx.fresh(f"media-{key}")
        run: dict = {}
        svc = None
        try:
            svc = procs.MediaService(wd).start()
            procs.reset_peak_rss(svc.pid)
            cpu0 = procs.cpu_seconds(svc.pid)
            start = time.perf_counter()
            run["sender_seconds"] = procs.storescu(svc.port, svc.aet, folder / "files")
            svc.wait_done(600)
            run["seconds"] = time.perf_counter() - start
            run["cpu_seconds"] = procs.cpu_seconds(svc.pid) - cpu0
            run["peak_rss"] = procs.peak_rss(svc.pid)
            count = svc.count()
            if count != len(files):
                run["error"] = f"the jobs hold {count} of {len(files)} instances"
        except Exception as exc:  # noqa: BLE001 - recorded, the run goes on
            run["error"] = f"{type(exc).__name__}: {exc}"[:500]
        finally:
            if svc is not None:
                svc.stop()
            shutil.rmtree(wd, ignore_errors=True)
        ctx.note_rss("media service", run.get("peak_rss", 0))
        runs.append(run)
    ours = _summary(runs)
    ours["name"] = "dicombox serve media"
    return {"case": "media service", "label": label, "instances": len(files),
            "ours": ours, "reference": {"median_seconds": None, "name": "no reference"},
            "ratio": None}


# -- transcoding ---------------------------------------------------------------------


def transcode(ctx: Context) -> dict:
    """JPEG Lossless SV1 -> Explicit VR Little Endian, image by image."""
    folder = ctx.dataset("jpeg")
    files = data.files_of(folder)
    label = ctx.specs["jpeg"].name
    ours_runs, ref_runs = [], []
    for rep in range(ctx.reps):
        for who in _rotated(["ours", "dcmdjpeg"], rep):
            ctx.log(f"transcode {label}: {who} (run {rep + 1}/{ctx.reps})")
            wd = ctx.fresh("transcode-run")
            if who == "ours":
                run = _worker(ctx, "transcode", folder / "files", wd)
                ours_runs.append(run)
                ctx.note_rss("transcode", run.get("peak_rss", 0))
            else:
                runs = [_tool(["dcmdjpeg", f, wd / f.name], want_rss=False) for f in files]
                bad = next((r["error"] for r in runs if r.get("error")), None)
                ref_runs.append({"seconds": sum(r["seconds"] for r in runs),
                                 "peak_rss": max((r["peak_rss"] or 0) for r in runs) or None,
                                 **({"error": bad} if bad else {})})
            shutil.rmtree(wd, ignore_errors=True)
    ours, ref = _summary(ours_runs), _summary(ref_runs)
    impl = next((r.get("implementation") for r in ours_runs if r.get("implementation")), "")
    ours["name"], ref["name"] = impl or "ours", "dcmdjpeg"
    result = {"case": "transcode", "label": label, "ours": ours, "reference": ref,
              "ratio": _ratio(ref, ours)}
    if ours["median_seconds"]:
        result["ours_per_image_seconds"] = ours["median_seconds"] / len(files)
    if ref["median_seconds"]:
        result["reference_per_image_seconds"] = ref["median_seconds"] / len(files)
    return result
