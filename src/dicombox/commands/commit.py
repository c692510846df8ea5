"""``dicombox commit list|show``: the storage commitment requests the router holds."""

from __future__ import annotations

import sqlite3

from ..cli import CliError, format_time, load_config, print_json
from .common import print_table, require_index

STATES = ("waiting", "ready", "reported", "abandoned")


def register(sub) -> None:
    p = sub.add_parser("commit", help="storage commitment requests and their reports")
    csub = p.add_subparsers(dest="commit_command", required=True)
    lp = csub.add_parser("list", help="requests (newest last), their state and counts")
    lp.add_argument("--state", choices=STATES, help="only requests in this state")
    lp.add_argument("--aet", help="only requests from this calling AE title")
    lp.add_argument("--limit", type=int, help="only the last N requests")
    lp.add_argument("--upstream", action="store_true",
                    help="list the box's own requests to its destinations instead")
    lp.add_argument("--json", action="store_true")
    lp.set_defaults(func=cmd_list)
    sp = csub.add_parser("show", help="one request and every instance it references")
    sp.add_argument("transaction_uid", help="its Transaction UID (or its number in the list)")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_show)


def _query(conn: sqlite3.Connection, sql: str, params=()) -> list[dict]:
    try:
        return [dict(r) for r in conn.execute(sql, params)]
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []
        raise CliError(f"cannot read the router's index: {exc}") from None


def cmd_list(args) -> int:
    cfg = load_config(args.config)
    conn = require_index(cfg.box.state_dir, "router")
    if args.upstream:
        return _list_upstream(conn, args)
    where, params = [], []
    if args.state:
        where.append("state = ?")
        params.append(args.state)
    if args.aet:
        where.append("TRIM(calling_aet) = ?")
        params.append(args.aet.strip())
    sql = ("SELECT id, transaction_uid, calling_aet, peer_address, mode, state, received_at, "
           "items, committed, failed, items - committed - failed AS pending, resolved_at, "
           "event_type, report_attempts, next_report_at, reported_at, reported_via, "
           "last_error FROM commit_requests")
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY id DESC"
    if args.limit:
        sql += f" LIMIT {int(args.limit)}"
    rows = list(reversed(_query(conn, sql, params)))
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        print("no storage commitment requests")
        return 0
    for r in rows:
        r["received"] = format_time(r["received_at"])
        r["calling_aet"] = r["calling_aet"].strip()
        if r["state"] == "reported":
            r["report"] = f"{format_time(r['reported_at'])} ({r['reported_via']})"
        elif r["state"] == "ready":
            r["report"] = f"attempt {r['report_attempts'] + 1} at " \
                          f"{format_time(r['next_report_at'])}"
        else:
            r["report"] = "-"
        r["last_error"] = (r["last_error"] or "")[:60]
    print_table(rows, [("id", "#"), ("received", "RECEIVED"), ("calling_aet", "FROM"),
                       ("mode", "MODE"), ("state", "STATE"), ("items", "ITEMS"),
                       ("committed", "OK"), ("failed", "FAILED"), ("pending", "PENDING"),
                       ("report", "REPORT"), ("last_error", "LAST ERROR"),
                       ("transaction_uid", "TRANSACTION UID")])
    return 0


def _list_upstream(conn: sqlite3.Connection, args) -> int:
    sql = ("SELECT u.id, u.transaction_uid, u.destination, u.state, u.created_at, "
           "u.requested_at, u.answered_at, u.last_error, COUNT(ui.queue_id) AS items, "
           "COALESCE(SUM(ui.state = 'committed'), 0) AS committed, "
           "COALESCE(SUM(ui.state = 'failed'), 0) AS failed "
           "FROM commit_upstream u LEFT JOIN commit_upstream_items ui ON ui.upstream_id = u.id "
           "GROUP BY u.id ORDER BY u.id DESC")
    if args.limit:
        sql += f" LIMIT {int(args.limit)}"
    rows = list(reversed(_query(conn, sql)))
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        print("no storage commitment requests to destinations")
        return 0
    for r in rows:
        r["created"] = format_time(r["created_at"])
        r["answered"] = format_time(r["answered_at"])
        r["last_error"] = (r["last_error"] or "")[:60]
    print_table(rows, [("id", "#"), ("created", "ASKED"), ("destination", "DESTINATION"),
                       ("state", "STATE"), ("items", "ITEMS"), ("committed", "COMMITTED"),
                       ("failed", "FAILED"), ("answered", "ANSWERED"),
                       ("last_error", "LAST ERROR"), ("transaction_uid", "TRANSACTION UID")])
    return 0


def cmd_show(args) -> int:
    cfg = load_config(args.config)
    conn = require_index(cfg.box.state_dir, "router")
    key = args.transaction_uid
    rows = _query(conn, "SELECT * FROM commit_requests WHERE transaction_uid = ? "
                        "OR CAST(id AS TEXT) = ? ORDER BY id", (key, key))
    if not rows:
        raise CliError(f"no storage commitment request {key}")
    for req in rows:
        req["instances"] = _query(
            conn, "SELECT seq, sop_class_uid, sop_instance_uid, state, failure_reason, "
                  "resolved_at FROM commit_items WHERE request_id = ? ORDER BY seq",
            (req["id"],))
    if args.json:
        print_json(rows if len(rows) > 1 else rows[0])
        return 0
    for req in rows:
        instances = req.pop("instances")
        for k, v in req.items():
            if (k.endswith("_at") or k.endswith("deadline")) and v:
                v = f"{format_time(v)} ({v})"
            print(f"{k:18} {v}")
        for item in instances:
            item["failure_reason"] = (f"{item['failure_reason']:04X}H"
                                      if item["failure_reason"] is not None else "")
        print()
        print_table(instances, [("seq", "#"), ("state", "STATE"), ("failure_reason", "REASON"),
                                ("sop_class_uid", "SOP CLASS"),
                                ("sop_instance_uid", "SOP INSTANCE")])
    return 0
