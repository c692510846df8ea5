"""``dicombox status``: services, listeners, spool usage and counts."""

from __future__ import annotations

from ..cli import SERVICES, enabled_services, format_time, load_config, print_json
from .common import disk_free, human_bytes, open_index, service_snapshot

#: A service whose last published state is older than this is shown as down.
STALE_SECONDS = 20


def register(sub) -> None:
    p = sub.add_parser("status", help="the services, their listeners, spool usage and counts")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)


def collect(cfg) -> dict:
    out = {"config": cfg.source, "state_dir": str(cfg.box.state_dir),
           "free_bytes": disk_free(cfg.box.state_dir), "services": {}}
    for name in SERVICES:
        section = getattr(cfg, name, None)
        entry = {"enabled": name in enabled_services(cfg)}
        if section is not None and hasattr(section, "ae_title"):
            entry["listener"] = (f"{section.ae_title}@{cfg.box.listen_address}:"
                                 f"{section.port}")
        conn = open_index(cfg.box.state_dir, name)
        if conn is not None:
            snap = service_snapshot(conn, name)
            if snap:
                entry["running"] = not snap.get("stopped") and snap["age"] < STALE_SECONDS
                entry["state"] = snap
            try:
                row = conn.execute("SELECT COUNT(*) AS n, COALESCE(SUM(size), 0) AS b, "
                                   "COUNT(DISTINCT study_instance_uid) AS s "
                                   "FROM instances").fetchone()
                entry["spool"] = {"instances": row["n"], "bytes": row["b"], "studies": row["s"]}
            except Exception:  # noqa: BLE001 - a service without an instance table
                pass
            conn.close()
        entry.setdefault("running", False)
        out["services"][name] = entry
    return out


def cmd_status(args) -> int:
    cfg = load_config(args.config)
    data = collect(cfg)
    if args.json:
        print_json(data)
        return 0
    free = data["free_bytes"]
    print(f"configuration  {data['config']}")
    print(f"state          {data['state_dir']} ({human_bytes(free) if free else '?'} free)")
    for name, e in data["services"].items():
        state = "running" if e["running"] else ("disabled" if not e["enabled"] else "stopped")
        line = f"{name:8} {state:9} {e.get('listener', '')}"
        snap = e.get("state")
        if snap:
            line += f"  associations: {snap.get('active_associations', 0)}"
            c = snap.get("counters") or {}
            if c:
                line += ("  stored: {stored}  failed: {failed}  refused: {refused}"
                         .format(**{k: c.get(k, 0) for k in ("stored", "failed", "refused")}))
            if not e["running"]:
                line += f"  last seen {format_time(snap.get('updated_at'))}"
        print(line)
        sp = e.get("spool")
        if sp:
            print(f"{'':8} spool: {sp['instances']} instances in {sp['studies']} studies, "
                  f"{human_bytes(sp['bytes'])}")
    return 0
