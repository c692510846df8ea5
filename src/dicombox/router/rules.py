"""Routing rules: which destinations an instance goes to, and why.

Rules are evaluated in the configured order when an instance is indexed
(inside the transaction that commits it).  A rule matches when every
condition it sets holds; an unset condition matches anything:

* list conditions (calling/called AE titles, modalities, SOP classes) match
  when the value equals one of the listed values (AE titles compared without
  padding spaces);
* text conditions are regular expressions *searched* in the attribute
  (``re.search``: anchor with ``^...$`` for an exact match; ``(?i)`` for
  case-insensitive).

With ``forwarding.rule_mode = "first"`` the first matching rule decides (its
destinations, possibly none); with ``"all"`` every matching rule adds its
destinations.  When no rule matched, ``forwarding.default_destinations``
apply.  The result is one queue row per (instance, destination), named after
the first rule that chose that destination (``default`` for the default route).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

DEFAULT_RULE = "default"

#: (rule field, instance attribute, label, kind): the conditions a rule may set.
CONDITIONS: tuple[tuple[str, str, str, str], ...] = (
    ("calling_aets", "calling_aet", "calling AE title", "one-of"),
    ("called_aets", "called_aet", "called AE title", "one-of"),
    ("modalities", "modality", "Modality", "one-of"),
    ("sop_classes", "sop_class_uid", "SOP Class UID", "one-of"),
    ("study_description", "study_description", "Study Description", "regex"),
    ("series_description", "series_description", "Series Description", "regex"),
    ("institution_name", "institution_name", "Institution Name", "regex"),
    ("body_part_examined", "body_part_examined", "Body Part Examined", "regex"),
    ("patient_id", "patient_id", "Patient ID", "regex"),
    ("accession_number", "accession_number", "Accession Number", "regex"),
)


@dataclass(frozen=True)
class Verdict:
    """How one rule judged one instance."""

    rule: str
    matched: bool
    reasons: tuple[str, ...]
    destinations: tuple[str, ...]


@dataclass
class Decision:
    """Where an instance goes: destination -> the rule that sent it there."""

    routes: dict[str, str] = field(default_factory=dict)
    verdicts: list[Verdict] = field(default_factory=list)
    default_used: bool = False


class _Compiled:
    def __init__(self, rule):
        self.rule = rule
        self.tests = []
        for name, attr, label, kind in CONDITIONS:
            value = getattr(rule, name)
            if not value:
                continue
            if kind == "one-of":
                allowed = {v.strip() for v in value}
                self.tests.append((attr, label, kind, allowed, value))
            else:
                self.tests.append((attr, label, kind, re.compile(value), value))

    def judge(self, attrs: Mapping, explain: bool = False) -> Verdict:
        reasons = []
        matched = True
        for attr, label, kind, test, shown in self.tests:
            actual = str(attrs.get(attr, "") or "")
            ok = (actual.strip() in test) if kind == "one-of" else (
                test.search(actual) is not None)
            matched = matched and ok
            if explain:
                wanted = "one of " + ", ".join(shown) if kind == "one-of" else f"/{shown}/"
                reasons.append(f"{label} {actual!r} "
                               f"{'matches' if ok else 'does not match'} {wanted}")
            elif not matched:
                break
        if explain and not self.tests:
            reasons.append("no conditions: matches everything")
        return Verdict(self.rule.name, matched, tuple(reasons), tuple(self.rule.destinations))


class RuleSet:
    """The configured rules, compiled once."""

    def __init__(self, rules, mode: str = "first", default_destinations=()):
        self.rules = [_Compiled(r) for r in rules]
        self.mode = mode
        self.default = tuple(default_destinations)

    @classmethod
    def from_config(cls, config) -> RuleSet:
        return cls(config.rules, config.forwarding.rule_mode,
                   config.forwarding.default_destinations)

    def decide(self, attrs: Mapping, explain: bool = False) -> Decision:
        """Route an instance described by ``attrs`` (InstanceInfo field names)."""
        decision = Decision()
        any_matched = False
        for compiled in self.rules:
            verdict = compiled.judge(attrs, explain)
            if explain:
                decision.verdicts.append(verdict)
            if not verdict.matched:
                continue
            any_matched = True
            for dest in verdict.destinations:
                decision.routes.setdefault(dest, verdict.rule)
            if self.mode == "first":
                break
        if not any_matched and self.default:
            decision.default_used = True
            for dest in self.default:
                decision.routes.setdefault(dest, DEFAULT_RULE)
        return decision

    def route(self, attrs: Mapping) -> dict[str, str]:
        return self.decide(attrs).routes
