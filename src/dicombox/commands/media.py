"""``dicombox media list|show|burn|cancel|retry|delete|eject``: the media jobs, and
``fetch|fetch-cancel|fetches``: the studies fetched from a PACS for them.

Reading commands open the media index read-only.  Commands that change a
job are not executed here: they are queued in ``media_commands`` (as the
front panel's button does) and executed by the media service, which owns
the jobs; the CLI waits for the service's one-line answer.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from pathlib import Path

from ..cli import CliError, format_time, load_config, print_json
from ..store.db import connect
from .common import human_bytes, print_table, require_index, service_snapshot

#: A media service whose published state is older than this is not running.
STALE_SECONDS = 20
#: Job states after which following a job stops.
END_STATES = ("done", "failed", "cancelled")


def register(sub) -> None:
    p = sub.add_parser("media", help="list, show, burn, cancel, retry or delete media jobs")
    msub = p.add_subparsers(dest="media_command", required=True)
    lp = msub.add_parser("list", help="the media jobs, oldest first")
    lp.add_argument("--state", action="append",
                    help="only jobs in this state (repeatable)")
    lp.add_argument("--json", action="store_true")
    lp.set_defaults(func=cmd_list)
    sp = msub.add_parser("show", help="one job: its state, progress, volumes and history")
    sp.add_argument("job_id")
    sp.add_argument("--follow", action="store_true",
                    help="print the progress until the job is done, failed or cancelled")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_show)
    bp = msub.add_parser("burn", help="close and start a job (default: the oldest waiting)")
    bp.add_argument("job_id", nargs="?")
    bp.add_argument("--follow", action="store_true", help="then print its progress")
    bp.set_defaults(func=cmd_command, command="burn")
    cp = msub.add_parser("cancel", help="cancel a job (default: the running one)")
    cp.add_argument("job_id", nargs="?")
    cp.set_defaults(func=cmd_command, command="cancel")
    rp = msub.add_parser("retry", help="make a failed, cancelled or finished job ready again")
    rp.add_argument("job_id")
    rp.add_argument("--follow", action="store_true", help="then print its progress")
    rp.set_defaults(func=cmd_command, command="retry")
    dp = msub.add_parser("delete", help="delete a job and the instances only it holds")
    dp.add_argument("job_id")
    dp.set_defaults(func=cmd_command, command="delete")
    ep = msub.add_parser("eject", help="eject the disc")
    ep.set_defaults(func=cmd_command, command="eject", job_id=None)
    fp = msub.add_parser("fetch", help="fetch a study from a PACS of media.sources (C-MOVE) "
                                       "into a media job")
    fp.add_argument("source", help="the name of a [[media.sources]] entry")
    which = fp.add_mutually_exclusive_group(required=True)
    which.add_argument("study", nargs="?", help="the Study Instance UID")
    which.add_argument("--accession", help="fetch the studies with this Accession Number "
                                           "(found with C-FIND)")
    which.add_argument("--patient-id", help="fetch every study of this Patient ID "
                                            "(found with C-FIND)")
    fp.add_argument("--burn", action="store_true",
                    help="burn the job once the whole study arrived (even without "
                         "media.auto_burn)")
    fp.add_argument("--follow", action="store_true",
                    help="then print the retrieve's progress until it ends")
    fp.set_defaults(func=cmd_fetch, command="fetch", job_id=None)
    kp = msub.add_parser("fetch-cancel", help="cancel a queued or running retrieve")
    kp.add_argument("retrieve", type=int, help="the retrieve's number (media fetches)")
    kp.set_defaults(func=cmd_fetch_cancel, command="fetch-cancel", job_id=None)
    xp = msub.add_parser("fetches", help="the retrieves from PACS, newest last")
    xp.add_argument("--json", action="store_true")
    xp.set_defaults(func=cmd_fetches)
    for q in (bp, cp, rp, dp, ep, fp, kp):
        q.add_argument("--timeout", type=float, default=30,
                       help="seconds to wait for the media service's answer (default 30)")


def _index(cfg) -> sqlite3.Connection:
    conn = require_index(cfg.box.state_dir, "media")
    try:
        conn.execute("SELECT 1 FROM media_jobs LIMIT 1")
    except sqlite3.OperationalError:
        raise CliError("the media index has no job table yet (start the media service once)")\
            from None
    return conn


def _job(conn, job_id: str) -> dict:
    row = conn.execute("SELECT * FROM media_jobs WHERE id = ?", (job_id,)).fetchone()
    if row is None:
        raise CliError(f"no media job {job_id}")
    return dict(row)


def format_progress(job: dict) -> str:
    """'writing volume 1/2: 45.2% of 650.0 MB at 12.3 MB/s, ETA 0:42'."""
    detail = job.get("detail")
    if isinstance(detail, str):
        detail = json.loads(detail)
    overall = f"{100 * (job.get('progress') or 0):.0f}%"
    if not detail or job["state"] not in ("building", "writing", "verifying"):
        return overall
    parts = [f"{detail['step']} volume {detail['volume']}/{detail['volumes']}: "
             f"{detail['percent']:.1f}%"]
    if detail.get("total_bytes"):
        parts[0] += f" of {human_bytes(detail['total_bytes'])}"
    rate = detail.get("rate_bytes_per_s") or 0
    if rate:
        parts.append(f"{rate / 1e6:.1f} MB/s")
    eta = detail.get("eta_s")
    if eta is not None:
        parts.append(f"ETA {int(eta) // 60}:{int(eta) % 60:02d}")
    return ", ".join(parts) + f" (job {overall})"


def cmd_list(args) -> int:
    cfg = load_config(args.config)
    conn = _index(cfg)
    sql = "SELECT * FROM media_jobs"
    params: list = []
    if args.state:
        sql += f" WHERE state IN ({', '.join('?' for _ in args.state)})"
        params = args.state
    rows = [dict(r) for r in conn.execute(sql + " ORDER BY created_at, id", params)]
    if args.json:
        for r in rows:
            r["detail"] = json.loads(r["detail"]) if r["detail"] else None
        print_json(rows)
        return 0
    for r in rows:
        r["size"] = human_bytes(r["bytes"])
        r["media"] = f"{r['volume']}/{r['volumes']}" if r["volumes"] else "-"
        r["progress_text"] = format_progress(r) if r["state"] not in ("collecting",) else "-"
        r["updated"] = format_time(r["updated_at"])
        r["why"] = r["error"] or r["note"] or ""
    print_table(rows, [("id", "JOB"), ("state", "STATE"), ("patient_id", "PATIENT ID"),
                       ("patient_name", "NAME"), ("instances", "IMAGES"), ("size", "SIZE"),
                       ("media", "MEDIUM"), ("progress_text", "PROGRESS"),
                       ("updated", "UPDATED"), ("why", "ERROR / NOTE")])
    return 0


def _details(conn, job_id: str) -> dict:
    data = _job(conn, job_id)
    data["detail"] = json.loads(data["detail"]) if data["detail"] else None
    data["studies"] = [dict(r) for r in conn.execute(
        "SELECT study_instance_uid, COUNT(*) AS instances, SUM(size) AS bytes "
        "FROM media_job_instances WHERE job_id = ? GROUP BY study_instance_uid", (job_id,))]
    data["volumes_detail"] = [dict(r) for r in conn.execute(
        "SELECT * FROM media_volumes WHERE job_id = ? ORDER BY volume", (job_id,))]
    data["log"] = [dict(r) for r in conn.execute(
        "SELECT at, state, message FROM media_log WHERE job_id = ? ORDER BY id", (job_id,))]
    return data


def cmd_show(args) -> int:
    cfg = load_config(args.config)
    conn = _index(cfg)
    if args.follow:
        return follow(conn, args.job_id)
    data = _details(conn, args.job_id)
    if args.json:
        print_json(data)
        return 0
    print(f"job          {data['id']}")
    print(f"state        {data['state']}")
    print(f"progress     {format_progress(data)}")
    if data["error"]:
        print(f"error        {data['error']}")
    if data["note"]:
        print(f"waiting      {data['note']}")
    print(f"patient      {data['patient_name']} ({data['patient_id']})")
    print(f"contents     {data['instances']} instance(s), {human_bytes(data['bytes'])}, "
          f"{len(data['studies'])} stud{'y' if len(data['studies']) == 1 else 'ies'}")
    print(f"grouped by   {data['group_kind']}")
    if data["volumes"]:
        print(f"media        {data['volumes']} ({data['writer']}, profile {data['profile']}); "
              f"working on {data['volume']}; attempts on it: {data['attempts']}")
    for key in ("created_at", "closed_at", "started_at", "finished_at", "purged_at"):
        if data[key]:
            print(f"{key.replace('_at', ''):12} {format_time(data[key])}")
    for v in data["volumes_detail"]:
        print(f"  volume {v['volume']}: {v['state']}, {v['instances']} instance(s), "
              f"{human_bytes(v['bytes'])}" + (f", on {v['medium']}" if v["medium"] else ""))
    print("history")
    for entry in data["log"]:
        print(f"  {format_time(entry['at'])}  {entry['state']:10} {entry['message']}")
    return 0


def follow(conn, job_id: str, interval: float = 1.0) -> int:
    """Print the job's progress until it ends; exit 0 only when it is done."""
    last = None
    while True:
        job = _job(conn, job_id)
        line = f"{job['id']} {job['state']}: {format_progress(job)}"
        why = job["error"] or job["note"]
        if why:
            line += f" ({why})"
        if line != last:
            print(line, flush=True)
            last = line
        if job["state"] in END_STATES:
            return 0 if job["state"] == "done" else 1
        time.sleep(interval)


def queue_command(state_dir: Path, command: str, job_id: str | None,
                  argument: str | None = None) -> int:
    path = Path(state_dir) / "media" / "index.db"
    if not path.exists():
        raise CliError(f"no media index under {state_dir} (has the media service ever run "
                       "with this configuration?)")
    conn = connect(path)
    try:
        conn.execute("BEGIN IMMEDIATE")
        if argument is None:
            cur = conn.execute("INSERT INTO media_commands (command, job_id, created_at) "
                               "VALUES (?, ?, ?)", (command, job_id, time.time()))
        else:
            cur = conn.execute("INSERT INTO media_commands (command, job_id, created_at, "
                               "argument) VALUES (?, ?, ?, ?)",
                               (command, job_id, time.time(), argument))
        conn.execute("COMMIT")
        return cur.lastrowid
    except sqlite3.OperationalError as exc:
        raise CliError(f"cannot queue the command in {path}: {exc}") from None
    finally:
        conn.close()


def cmd_command(args) -> int:
    cfg = load_config(args.config)
    conn = _index(cfg)
    if args.job_id:
        _job(conn, args.job_id)
    command_id = queue_command(cfg.box.state_dir, args.command, args.job_id,
                               getattr(args, "argument", None))
    snap = service_snapshot(conn, "media")
    running = bool(snap) and not snap.get("stopped") and snap["age"] < STALE_SECONDS
    if not running:
        print(f"queued {args.command} (the media service is not running; it will execute "
              "the command when it starts)")
        return 0
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        row = conn.execute("SELECT handled_at, result FROM media_commands WHERE id = ?",
                           (command_id,)).fetchone()
        if row is not None and row["handled_at"] is not None:
            print(row["result"])
            if row["result"].startswith("refused"):
                return 1
            if getattr(args, "follow", False) and args.command == "fetch":
                return follow_retrieve(conn, int(row["result"].split()[1]))
            if getattr(args, "follow", False):
                job_id = args.job_id or _job_of(row["result"])
                if job_id:
                    return follow(conn, job_id)
            return 0
        time.sleep(0.2)
    print(f"dicombox: the media service did not answer within {args.timeout:g} s; the "
          f"{args.command} command stays queued", file=sys.stderr)
    return 1


def _job_of(result: str) -> str | None:
    words = result.split()
    if len(words) > 1 and words[0] == "job":
        return words[1]
    return None


# -- retrieves -------------------------------------------------------------------------


def cmd_fetch(args) -> int:
    cfg = load_config(args.config)
    if cfg.media.source(args.source) is None:
        known = ", ".join(s.name for s in cfg.media.sources) or "none is configured"
        raise CliError(f"no source {args.source!r} in media.sources ({known})")
    from ..media.retrieve import check_request
    problem = check_request(args.study or "", args.accession or "", args.patient_id or "")
    if problem:
        raise CliError(problem)
    _retrieves_table(_index(cfg))
    args.argument = json.dumps({"source": args.source, "study": args.study,
                                "accession": args.accession, "patient_id": args.patient_id,
                                "burn": args.burn})
    return cmd_command(args)


def cmd_fetch_cancel(args) -> int:
    cfg = load_config(args.config)
    _retrieves_table(_index(cfg))
    args.argument = str(args.retrieve)
    return cmd_command(args)


def _retrieves_table(conn) -> None:
    try:
        conn.execute("SELECT 1 FROM media_retrieves LIMIT 1")
    except sqlite3.OperationalError:
        raise CliError("the media index has no retrieve table yet (restart the media "
                       "service once with this version)") from None


def format_retrieve(r: dict) -> str:
    counts = f"{r['completed']} received"
    if r["failed"] or r["warning"]:
        counts += f", {r['failed']} failed, {r['warning']} warning(s)"
    if r["remaining"] is not None and r["state"] == "running":
        counts += f", {r['remaining']} to go"
    return counts


def cmd_fetches(args) -> int:
    cfg = load_config(args.config)
    conn = _index(cfg)
    _retrieves_table(conn)
    rows = [dict(r) for r in conn.execute("SELECT * FROM media_retrieves ORDER BY id")]
    if args.json:
        print_json(rows)
        return 0
    for r in rows:
        r["progress"] = format_retrieve(r)
        r["created"] = format_time(r["created_at"])
        r["message"] = r["message"] or ""
        r["jobs"] = r["jobs"] or ""
    for r in rows:
        r["what"] = r["study_instance_uid"] or (
            f"accession {r['accession_number']}" if r["accession_number"]
            else f"patient {r['patient_id']}")
    print_table(rows, [("id", "ID"), ("state", "STATE"), ("source", "SOURCE"),
                       ("what", "STUDY"), ("progress", "INSTANCES"),
                       ("jobs", "JOBS"), ("created", "QUEUED"), ("message", "RESULT")])
    return 0


def follow_retrieve(conn, retrieve_id: int, interval: float = 1.0) -> int:
    """Print the progress of the retrieve (and of those its query queued) until
    they end; exit 0 only when all are done."""
    last: dict[int, str] = {}
    while True:
        rows = [dict(r) for r in conn.execute(
            "SELECT * FROM media_retrieves WHERE id = ? OR parent = ? ORDER BY id",
            (retrieve_id, retrieve_id))]
        for r in rows:
            ended = r["state"] in ("done", "failed") and r["settled"]
            line = f"retrieve {r['id']} {r['state']}: "
            line += format_retrieve(r) if r["study_instance_uid"] else "query"
            if r["message"]:
                line += f" ({r['message']})"
            if ended and r["study_instance_uid"]:
                line += f"; jobs: {r['jobs'] or 'none'}"
            if line != last.get(r["id"]):
                print(line, flush=True)
                last[r["id"]] = line
        if all(r["state"] in ("done", "failed") and r["settled"] for r in rows):
            return 0 if all(r["state"] == "done" for r in rows) else 1
        time.sleep(interval)
