"""``dicombox queue``: the forwarding queues; ``queue list``; ``queue retry``."""

from __future__ import annotations

import sqlite3
import time

from ..cli import CliError, format_time, load_config, print_json
from ..router import queue as q
from ..store.db import connect
from .common import print_table, require_index, service_snapshot


def register(sub) -> None:
    p = sub.add_parser("queue", help="the forwarding queue of every destination")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_summary)
    qsub = p.add_subparsers(dest="queue_command")
    lp = qsub.add_parser("list", help="list queued instances (dead-letter ones by default)")
    lp.add_argument("--state", choices=[*q.STATES, "all"], default="dead")
    lp.add_argument("--destination")
    lp.add_argument("--limit", type=int, default=100)
    lp.add_argument("--json", action="store_true")
    lp.set_defaults(func=cmd_list)
    rp = qsub.add_parser("retry", help="retry now what waits for a retry (and, with --dead, "
                                       "what is in dead-letter)")
    rp.add_argument("--dead", action="store_true", help="also retry dead-letter instances")
    rp.add_argument("--destination", help="only this destination")
    rp.set_defaults(func=cmd_retry)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def collect(cfg, conn) -> dict:
    now = time.time()
    try:
        counts = q.summary(conn, now)
    except sqlite3.OperationalError:
        counts = {}   # the router never ran with forwarding
    snap = service_snapshot(conn, "router") or {}
    live = ((snap.get("forwarding") or {}).get("destinations") or {}) if (
        not snap.get("stopped")) else {}
    out = {}
    for dest in cfg.destinations:
        e = counts.get(dest.name) or q.summary_entry()
        e.update({"configured": True, "ae_title": dest.ae_title,
                  "address": f"{dest.host}:{dest.port}", "enabled": dest.enabled})
        if dest.name in live:
            e["paused_for"] = live[dest.name].get("paused_for", 0)
        out[dest.name] = e
    for name, e in counts.items():
        if name not in out:
            out[name] = {**e, "configured": False}
    return out


def cmd_summary(args) -> int:
    cfg = load_config(args.config)
    conn = require_index(cfg.box.state_dir, "router")
    data = collect(cfg, conn)
    if args.json:
        print_json(data)
        return 0
    if not data:
        print("no destinations configured and nothing queued")
        return 0
    rows = []
    for name, e in data.items():
        err = e.get("last_error") or ""
        if err and e.get("last_error_at"):
            err = f"{format_time(e['last_error_at'])} {err}"
        note = "" if e.get("configured", True) else " (not configured)"
        rows.append({"name": name + note, "pending": e["pending"] + e["retry"],
                     "retry": e["retry"], "in_flight": e["in_flight"],
                     "delivered": e["delivered"], "dead": e["dead"],
                     "oldest": _age(e["oldest_age"]), "error": err[:100]})
    print_table(rows, [("name", "DESTINATION"), ("pending", "PENDING"),
                       ("retry", "(RETRYING)"), ("in_flight", "IN FLIGHT"),
                       ("delivered", "DELIVERED"), ("dead", "DEAD"),
                       ("oldest", "OLDEST"), ("error", "LAST ERROR")])
    return 0


def cmd_list(args) -> int:
    cfg = load_config(args.config)
    conn = require_index(cfg.box.state_dir, "router")
    where, params = [], []
    if args.state != "all":
        where.append("q.state = ?")
        params.append(args.state)
    if args.destination:
        where.append("q.destination = ?")
        params.append(args.destination)
    sql = ("SELECT q.*, i.patient_id, i.modality, i.study_instance_uid "
           "FROM forward_queue q JOIN instances i ON i.id = q.instance_id")
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY q.id LIMIT {int(args.limit)}"
    try:
        rows = [dict(r) for r in conn.execute(sql, params)]
    except sqlite3.OperationalError:
        rows = []
    if args.json:
        print_json(rows)
        return 0
    for r in rows:
        r["queued"] = format_time(r["created_at"])
    print_table(rows, [("queued", "QUEUED"), ("destination", "DESTINATION"),
                       ("state", "STATE"), ("attempts", "TRIES"), ("modality", "MOD"),
                       ("sop_instance_uid", "SOP INSTANCE UID"), ("last_error", "LAST ERROR")])
    return 0


def cmd_retry(args) -> int:
    cfg = load_config(args.config)
    require_index(cfg.box.state_dir, "router").close()
    known = {d.name for d in cfg.destinations}
    if args.destination and args.destination not in known:
        raise CliError(f"unknown destination {args.destination!r} "
                       f"(configured: {', '.join(sorted(known)) or 'none'})", 2)
    conn = connect(cfg.box.state_dir / "router" / "index.db")
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            n = q.requeue(conn, args.dead, args.destination, time.time())
        except sqlite3.OperationalError as exc:
            conn.execute("ROLLBACK")
            raise CliError(f"cannot update the queue: {exc}") from None
        conn.execute("COMMIT")
    finally:
        conn.close()
    what = "waiting or dead-letter" if args.dead else "waiting"
    where = f" for {args.destination}" if args.destination else ""
    print(f"{n} {what} instance(s){where} queued for sending now "
          "(a running router picks them up at its next look at the queue)")
    return 0
