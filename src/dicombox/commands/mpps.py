"""``dicombox mpps list|show|retry``: procedure steps, their relay and notifications."""

from __future__ import annotations

import json

from ..cli import CliError, format_time, load_config, print_json
from ..store.db import connect
from .common import print_table, require_index


def register(sub) -> None:
    p = sub.add_parser("mpps", help="procedure steps received, their relay and notifications")
    msub = p.add_subparsers(dest="mpps_command", required=True)
    lp = msub.add_parser("list", help="one line per procedure step, newest last")
    lp.add_argument("--state", choices=["in-progress", "completed", "discontinued"])
    lp.add_argument("--undelivered", action="store_true",
                    help="only steps with messages still to relay (pending or dead-letter)")
    lp.add_argument("--dead", action="store_true", help="only steps with dead-letter messages")
    lp.add_argument("--notifications", action="store_true",
                    help="list the study-arrived notifications instead")
    lp.add_argument("--limit", type=int)
    lp.add_argument("--json", action="store_true")
    lp.set_defaults(func=cmd_list)
    sp = msub.add_parser("show", help="one procedure step: attributes, journal, relay")
    sp.add_argument("sop_instance_uid")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_show)
    rp = msub.add_parser("retry", help="send dead-letter (and waiting) messages again now")
    rp.add_argument("sop_instance_uid", nargs="?", help="only this procedure step")
    rp.add_argument("--destination", help="only this destination")
    rp.add_argument("--notifications", action="store_true",
                    help="retry study-arrived notifications instead")
    rp.set_defaults(func=cmd_retry)


def _deliveries(conn, uid: str) -> dict:
    """Per destination: counts by state and the last error."""
    out: dict[str, dict] = {}
    for r in conn.execute("SELECT destination, state, last_error, attempts FROM deliveries "
                          "WHERE sop_instance_uid = ? ORDER BY seq", (uid,)):
        d = out.setdefault(r["destination"], {"done": 0, "pending": 0, "dead": 0,
                                              "last_error": ""})
        d[r["state"]] += 1
        if r["state"] != "done" and r["last_error"]:
            d["last_error"] = r["last_error"]
    return out


def _summary(d: dict) -> str:
    total = d["done"] + d["pending"] + d["dead"]
    if d["dead"]:
        return f"DEAD {d['dead']}/{total}"
    if d["pending"]:
        return f"waiting {d['pending']}/{total}"
    return f"delivered {total}/{total}"


def cmd_list(args) -> int:
    cfg = load_config(args.config)
    conn = require_index(cfg.box.state_dir, "mpps")
    if args.notifications:
        return _list_notifications(conn, args)
    where, params = [], []
    if args.state:
        where.append("state = ?")
        params.append(args.state.upper().replace("-", " "))
    if args.undelivered or args.dead:
        states = "('dead')" if args.dead else "('pending', 'dead')"
        where.append("sop_instance_uid IN (SELECT sop_instance_uid FROM deliveries "
                     f"WHERE state IN {states})")
    sql = "SELECT * FROM steps" + (" WHERE " + " AND ".join(where) if where else "")
    sql += " ORDER BY created_at"
    if args.limit:
        sql += f" LIMIT {int(args.limit)}"
    rows = []
    for r in conn.execute(sql, params):
        row = dict(r)
        row.pop("dataset")
        row["destinations"] = _deliveries(conn, r["sop_instance_uid"])
        rows.append(row)
    if args.json:
        print_json(rows)
        return 0
    names = [d.name for d in cfg.mpps.destinations]
    for row in rows:
        row["received"] = format_time(row["created_at"])
        for name in names:
            d = row["destinations"].get(name)
            row[f"dest:{name}"] = _summary(d) if d else "-"
    print_table(rows, [("received", "RECEIVED"), ("calling_aet", "FROM"),
                       ("state", "STATE"), ("patient_id", "PATIENT ID"),
                       ("accession_number", "ACCESSION"), ("modality", "MOD"),
                       *[(f"dest:{n}", n.upper()) for n in names],
                       ("sop_instance_uid", "SOP INSTANCE UID")])
    return 0


def _list_notifications(conn, args) -> int:
    rows = [dict(r) for r in conn.execute(
        "SELECT id, study_instance_uid, kind, sop_instance_uid, reason, state, attempts, "
        "last_error, created_at, delivered_at, payload FROM notifications ORDER BY id")]
    for r in rows:
        r["instances"] = json.loads(r.pop("payload")).get("instances", 0)
    if args.json:
        print_json(rows)
        return 0
    for r in rows:
        r["queued"] = format_time(r["created_at"])
        r["kind"] = r["kind"].upper()
    print_table(rows, [("queued", "QUEUED"), ("kind", "KIND"), ("state", "STATE"),
                       ("instances", "IMAGES"), ("attempts", "TRIES"),
                       ("study_instance_uid", "STUDY UID"), ("last_error", "LAST ERROR")])
    return 0


def cmd_show(args) -> int:
    from ..mpps import journal

    cfg = load_config(args.config)
    conn = require_index(cfg.box.state_dir, "mpps")
    step = conn.execute("SELECT * FROM steps WHERE sop_instance_uid = ?",
                        (args.sop_instance_uid,)).fetchone()
    if step is None:
        raise CliError(f"no procedure step {args.sop_instance_uid} in the MPPS journal")
    ds = journal.from_bytes(step["dataset"])
    messages = [dict(r) for r in conn.execute(
        "SELECT id, seq, operation, state_after, calling_aet, received_at FROM messages "
        "WHERE sop_instance_uid = ? ORDER BY seq", (args.sop_instance_uid,))]
    deliveries = [dict(r) for r in conn.execute(
        "SELECT destination, seq, state, attempts, next_attempt_at, last_status, last_error, "
        "delivered_at FROM deliveries WHERE sop_instance_uid = ? ORDER BY destination, seq",
        (args.sop_instance_uid,))]
    info = dict(step)
    info.pop("dataset")
    if args.json:
        print_json({**info, "attributes": ds.to_json_dict(), "messages": messages,
                    "deliveries": deliveries})
        return 0
    for key, value in info.items():
        if key.endswith("_at"):
            value = format_time(value)
        print(f"{key:20} {value}")
    print("\njournal:")
    for m in messages:
        print(f"  #{m['seq']} {m['operation']:8} -> {m['state_after']:13} "
              f"from {m['calling_aet']} at {format_time(m['received_at'])}")
    print("\nrelay:")
    for d in deliveries:
        when = (f"delivered {format_time(d['delivered_at'])}" if d["state"] == "done" else
                f"next try {format_time(d['next_attempt_at'])}" if d["state"] == "pending"
                else "dead-letter")
        line = f"  {d['destination']:16} #{d['seq']} {d['state']:8} tries {d['attempts']}  {when}"
        if d["last_error"] and d["state"] != "done":
            line += f"\n  {'':16} {d['last_error']}"
        print(line)
    print("\nattributes:")
    print(ds)
    return 0


def cmd_retry(args) -> int:
    from ..mpps import journal

    cfg = load_config(args.config)
    require_index(cfg.box.state_dir, "mpps").close()
    if args.destination and args.destination not in {d.name for d in cfg.mpps.destinations}:
        known = ", ".join(d.name for d in cfg.mpps.destinations) or "none configured"
        raise CliError(f"unknown destination {args.destination!r} (known: {known})", 2)
    conn = connect(cfg.box.state_dir / "mpps" / "index.db")
    try:
        conn.execute("BEGIN IMMEDIATE")
        if args.notifications:
            n = journal.retry_notifications(conn, args.sop_instance_uid)
        else:
            n = journal.retry(conn, args.sop_instance_uid, args.destination)
        conn.execute("COMMIT")
    finally:
        conn.close()
    what = "notification(s)" if args.notifications else "message(s)"
    print(f"{n} {what} queued to be sent again now")
    return 0
