"""``python -m bench``: dicombox side by side with DCMTK and Orthanc.

Runs every case on loopback inside a private network namespace (it re-runs
itself under ``unshare --net`` first, so storescp and Orthanc, which bind
every address, are reachable from nothing but this benchmark), prints a
Markdown summary and writes every run to a JSON file.  See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from . import cases, data, report

HERE = Path(__file__).resolve().parent
ALL_CASES = ("receive", "e2e", "dicomdir", "iso", "media", "transcode")
RECEIVE_SETS = ("ct", "cr", "tiny", "multiframe")
E2E_SETS = ("ct", "tiny")
_IN_NETNS = "DICOMBOX_BENCH_NETNS"
NEEDED = ("storescu", "storescp", "echoscu", "Orthanc", "dcmmkdir", "dcmdjpeg", "dcmcjpeg",
          "xorriso", "unshare", "ip")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=3, help="repetitions of every run (default 3)")
    p.add_argument("--cases", default=",".join(ALL_CASES),
                   help=f"comma-separated subset of {','.join(ALL_CASES)}")
    p.add_argument("--datasets", default=",".join(RECEIVE_SETS),
                   help="data sets of the receive case (default: all)")
    p.add_argument("--e2e-datasets", default=",".join(E2E_SETS),
                   help="data sets of the end-to-end case (default: ct,tiny)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny data, one repetition: checks the harness, measures nothing")
    p.add_argument("--data", type=Path, default=HERE / "data",
                   help="where generated data sets are kept (default bench/data)")
    p.add_argument("--out", type=Path, default=HERE / "results",
                   help="where results are written (default bench/results)")
    p.add_argument("--iso-mb", type=int, default=700, help="size of the ISO case's input")
    p.add_argument("--baseline-src", type=Path,
                   help="another dicombox source tree (its src/ folder) to receive with too, "
                        "as 'router@baseline' (before/after comparisons)")
    return p.parse_args(argv)


def _reexec_in_netns(argv) -> int | None:
    """Run this benchmark again inside a new network namespace with only ``lo``."""
    if os.environ.get(_IN_NETNS) == "1":
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        return None
    if shutil.which("unshare") is None:
        print("bench: needs unshare(1) (util-linux) and root to run in a private network "
              "namespace", file=sys.stderr)
        return 2
    env = dict(os.environ, **{_IN_NETNS: "1"})
    cmd = ["unshare", "--net", "--", sys.executable, "-m", "bench", *argv]
    try:
        return subprocess.run(cmd, env=env, cwd=HERE.parent).returncode
    except KeyboardInterrupt:
        return 130


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    missing = [t for t in NEEDED if shutil.which(t) is None
               and not (t == "Orthanc" and Path("/usr/sbin/Orthanc").exists())]
    if missing:
        print(f"bench: missing tools: {', '.join(missing)} (run `make peers`)", file=sys.stderr)
        return 2
    code = _reexec_in_netns(argv)
    if code is not None:
        return code

    specs = data.smoke_specs() if args.smoke else data.full_specs()
    reps = 1 if args.smoke else max(1, args.reps)
    chosen = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in chosen if c not in ALL_CASES]
    if unknown:
        print(f"bench: unknown case(s) {', '.join(unknown)}", file=sys.stderr)
        return 2
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.out / f"work-{stamp}"
    data_root = args.data / ("smoke" if args.smoke else "full")

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    ctx = cases.Context(data_root=data_root, work=work, specs=specs, reps=reps, log=log,
                        baseline_src=args.baseline_src.resolve() if args.baseline_src else None)
    results = {"started": stamp, "smoke": args.smoke, "repetitions": reps,
               "machine": report.machine(), "data": {k: vars(v) for k, v in specs.items()},
               "cases": []}
    t0 = time.monotonic()
    try:
        if "receive" in chosen:
            for key in datasets:
                results["cases"].append(cases.receive(ctx, key))
        if "e2e" in chosen:
            for key in [d.strip() for d in args.e2e_datasets.split(",") if d.strip()]:
                results["cases"].append(cases.end_to_end(ctx, key))
        if "dicomdir" in chosen:
            results["cases"].append(cases.dicomdir(ctx))
        if "iso" in chosen:
            target = (1 if args.smoke else args.iso_mb) * 1_000_000
            results["cases"].append(cases.iso(ctx, target))
        if "media" in chosen:
            for key in cases.MEDIA_DATASETS:
                results["cases"].append(cases.media_service(ctx, key))
        if "transcode" in chosen:
            results["cases"].append(cases.transcode(ctx))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["seconds"] = time.monotonic() - t0
    results["peak_rss_by_process"] = ctx.max_peak_rss
    results["peak_rss_ours"] = max(ctx.max_peak_rss.values(), default=0)
    results["tools"] = report.tools()
    path = args.out / f"bench-{stamp}{'-smoke' if args.smoke else ''}.json"
    path.write_text(json.dumps(results, indent=1, default=str))
    print(report.markdown(results))
    print(f"Results: {path}")
    errors = [c for c in results["cases"] if _has_error(c)]
    return 1 if errors else 0


def _has_error(case: dict) -> bool:
    parts = list(case.get("receivers", {}).values())
    parts += [case[k] for k in ("ours", "reference") if k in case]
    return any(p.get("error") for p in parts)


if __name__ == "__main__":
    sys.exit(main())
