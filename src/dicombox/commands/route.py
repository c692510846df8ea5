"""``dicombox route test FILE``: where the router would send a file, and why."""

from __future__ import annotations

from pathlib import Path

from ..cli import CliError, load_config, print_json
from ..router.rules import RuleSet
from ..store import DatasetError, read_header


def register(sub) -> None:
    p = sub.add_parser("route", help="routing rules")
    rsub = p.add_subparsers(dest="route_command", required=True)
    tp = rsub.add_parser("test", help="which destinations a file would go to, and why")
    tp.add_argument("file", type=Path)
    tp.add_argument("--calling-aet", default="",
                    help="the calling AE title to assume (rules may match on it)")
    tp.add_argument("--called-aet", default=None,
                    help="the called AE title to assume (default: router.ae_title)")
    tp.add_argument("--json", action="store_true")
    tp.set_defaults(func=cmd_test)


def cmd_test(args) -> int:
    cfg = load_config(args.config)
    if not args.file.is_file():
        raise CliError(f"{args.file}: no such file")
    try:
        attrs = read_header(args.file)
    except DatasetError as exc:
        raise CliError(f"{args.file}: {exc}") from None
    attrs["calling_aet"] = args.calling_aet
    attrs["called_aet"] = cfg.router.ae_title if args.called_aet is None else args.called_aet
    decision = RuleSet.from_config(cfg).decide(attrs, explain=True)
    known = {d.name: d for d in cfg.destinations}
    if args.json:
        print_json({
            "file": str(args.file),
            "attributes": {k: attrs.get(k, "") for k in (
                "calling_aet", "called_aet", "modality", "sop_class_uid",
                "study_description", "series_description", "institution_name",
                "body_part_examined", "patient_id", "accession_number")},
            "mode": cfg.forwarding.rule_mode,
            "rules": [{"rule": v.rule, "matched": v.matched, "reasons": list(v.reasons),
                       "destinations": list(v.destinations)} for v in decision.verdicts],
            "default_used": decision.default_used,
            "destinations": decision.routes,
        })
        return 0
    print(f"{args.file}: {attrs.get('modality') or '-'} {attrs.get('sop_class_uid')}, "
          f"calling AE {attrs['calling_aet'] or '(none)'}, called AE {attrs['called_aet']}")
    print(f"rule mode: {cfg.forwarding.rule_mode}")
    judged = {v.rule: v for v in decision.verdicts}
    for rule in cfg.rules:
        v = judged.get(rule.name)
        if v is None:
            print(f"  rule {rule.name}: not evaluated (an earlier rule matched)")
            continue
        verdict = "MATCHES" if v.matched else "no match"
        target = ", ".join(v.destinations) or "(no destinations: not forwarded)"
        print(f"  rule {v.rule}: {verdict} -> {target}")
        for reason in v.reasons:
            print(f"      {reason}")
    if not decision.verdicts:
        print("  no rules configured")
    if decision.default_used:
        print(f"  no rule matched: default route -> "
              f"{', '.join(cfg.forwarding.default_destinations)}")
    if not decision.routes:
        print("=> not forwarded anywhere")
        return 0
    print("=> " + ", ".join(
        f"{d} ({known[d].ae_title}@{known[d].host}:{known[d].port}, rule {rule})"
        if d in known else f"{d} (rule {rule})" for d, rule in decision.routes.items()))
    return 0
