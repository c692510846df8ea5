"""``dicombox spool list|show``: what the router holds."""

from __future__ import annotations

from ..cli import CliError, format_time, load_config, print_json
from .common import parse_date, print_table, require_index


def register(sub) -> None:
    p = sub.add_parser("spool", help="list or show the instances in a service's spool")
    ssub = p.add_subparsers(dest="spool_command", required=True)
    lp = ssub.add_parser("list", help="list instances, newest last")
    lp.add_argument("--service", default="router", choices=["router", "media"])
    lp.add_argument("--patient", help="patient ID or name (substring, or * wildcards)")
    lp.add_argument("--study", help="Study Instance UID or accession number")
    lp.add_argument("--aet", help="calling AE title")
    lp.add_argument("--since", help="received at or after (YYYY-MM-DD[ HH:MM:SS])")
    lp.add_argument("--until", help="received before (YYYY-MM-DD[ HH:MM:SS])")
    lp.add_argument("--studies", action="store_true", help="one line per study")
    lp.add_argument("--limit", type=int)
    lp.add_argument("--json", action="store_true")
    lp.set_defaults(func=cmd_list)
    sp = ssub.add_parser("show", help="everything indexed about one instance")
    sp.add_argument("sop_instance_uid")
    sp.add_argument("--service", default="router", choices=["router", "media"])
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_show)


def _where(args):
    where, params = [], []
    if args.patient:
        pat = args.patient.replace("*", "%") if "*" in args.patient else f"%{args.patient}%"
        where.append("(patient_id LIKE ? OR patient_name LIKE ?)")
        params += [pat, pat]
    if args.study:
        where.append("(study_instance_uid = ? OR accession_number = ?)")
        params += [args.study, args.study]
    if args.aet:
        where.append("calling_aet = ?")
        params.append(args.aet)
    if args.since:
        where.append("received_at >= ?")
        params.append(parse_date(args.since))
    if args.until:
        where.append("received_at < ?")
        params.append(parse_date(args.until))
    return (" WHERE " + " AND ".join(where)) if where else "", params


def cmd_list(args) -> int:
    cfg = load_config(args.config)
    conn = require_index(cfg.box.state_dir, args.service)
    where, params = _where(args)
    limit = f" LIMIT {int(args.limit)}" if args.limit else ""
    if args.studies:
        rows = [dict(r) for r in conn.execute(
            "SELECT study_instance_uid, MAX(patient_id) AS patient_id, "
            "MAX(patient_name) AS patient_name, MAX(study_date) AS study_date, "
            "MAX(accession_number) AS accession_number, "
            "GROUP_CONCAT(DISTINCT modality) AS modalities, COUNT(*) AS instances, "
            "SUM(size) AS bytes, MAX(received_at) AS last_received "
            f"FROM instances{where} GROUP BY study_instance_uid "
            f"ORDER BY last_received{limit}", params)]
        if args.json:
            print_json(rows)
            return 0
        for r in rows:
            r["last_received"] = format_time(r["last_received"])
        print_table(rows, [("patient_id", "PATIENT ID"), ("patient_name", "NAME"),
                           ("study_date", "DATE"), ("accession_number", "ACCESSION"),
                           ("modalities", "MOD"), ("instances", "IMAGES"),
                           ("last_received", "LAST RECEIVED"),
                           ("study_instance_uid", "STUDY UID")])
        return 0
    rows = [dict(r) for r in conn.execute(
        f"SELECT * FROM instances{where} ORDER BY received_at, id{limit}", params)]
    if args.json:
        print_json(rows)
        return 0
    for r in rows:
        r["received"] = format_time(r["received_at"])
    print_table(rows, [("received", "RECEIVED"), ("calling_aet", "FROM"),
                       ("patient_id", "PATIENT ID"), ("patient_name", "NAME"),
                       ("modality", "MOD"), ("size", "BYTES"),
                       ("sop_instance_uid", "SOP INSTANCE UID")])
    return 0


def cmd_show(args) -> int:
    cfg = load_config(args.config)
    conn = require_index(cfg.box.state_dir, args.service)
    row = conn.execute("SELECT * FROM instances WHERE sop_instance_uid = ?",
                       (args.sop_instance_uid,)).fetchone()
    if row is None:
        raise CliError(f"no instance {args.sop_instance_uid} in the {args.service} spool")
    data = dict(row)
    data["file"] = str(cfg.box.state_dir / args.service / "spool" / data["path"])
    if args.json:
        print_json(data)
        return 0
    for key, value in data.items():
        if key == "received_at":
            value = f"{format_time(value)} ({value})"
        print(f"{key:24} {value}")
    return 0
