"""Routing rules, and `dicombox route test FILE` explaining them."""

import json

from fwdkit import cli

from dicombox import config
from dicombox.router.rules import RuleSet

from datagen import cr_image, ct_series, sr_document
from helpers import write_config

DESTS = [{"name": n, "ae_title": n.upper(), "host": "127.0.0.1", "port": 104 + i}
         for i, n in enumerate(("pacs", "archive", "cardio"))]
RULES = [
    {"name": "ct-from-scanner", "modalities": ["CT"], "calling_aets": ["SCANNER"],
     "destinations": ["pacs"]},
    {"name": "chest", "body_part_examined": "^CHEST$", "destinations": ["pacs", "cardio"]},
    {"name": "no-sr", "sop_classes": ["1.2.840.10008.5.1.4.1.1.88.11"], "destinations": []},
    {"name": "hospital", "institution_name": "(?i)test hosp", "destinations": ["archive"]},
]
CT = {"modality": "CT", "calling_aet": "SCANNER", "called_aet": "DICOMBOX",
      "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2", "institution_name": "Test Hospital"}


def _rules(tmp_path, mode="first", default=()):
    path = write_config(tmp_path, destinations=DESTS, rules=RULES,
                        forwarding={"rule_mode": mode, "default_destinations": list(default)})
    return path, RuleSet.from_config(config.load(path))


def test_first_match_decides(tmp_path):
    _, rules = _rules(tmp_path)
    assert rules.route(CT) == {"pacs": "ct-from-scanner"}
    assert rules.route({**CT, "calling_aet": "OTHER"}) == {"archive": "hospital"}
    chest = {**CT, "modality": "CR", "body_part_examined": "CHEST"}
    assert rules.route(chest) == {"pacs": "chest", "cardio": "chest"}
    # An empty destination list stops evaluation: the SR goes nowhere.
    sr = {**CT, "modality": "SR", "sop_class_uid": "1.2.840.10008.5.1.4.1.1.88.11"}
    assert rules.route(sr) == {}


def test_all_matches_add_up(tmp_path):
    _, rules = _rules(tmp_path, mode="all")
    assert rules.route(CT) == {"pacs": "ct-from-scanner", "archive": "hospital"}
    chest = {**CT, "body_part_examined": "CHEST"}
    assert rules.route(chest) == {"pacs": "ct-from-scanner", "cardio": "chest",
                                  "archive": "hospital"}


def test_default_route_only_when_nothing_matched(tmp_path):
    _, rules = _rules(tmp_path, default=["archive", "cardio"])
    other = {**CT, "calling_aet": "X", "institution_name": "Elsewhere"}
    assert rules.route(other) == {"archive": "default", "cardio": "default"}
    assert rules.route(CT) == {"pacs": "ct-from-scanner"}
    sr = {**other, "sop_class_uid": "1.2.840.10008.5.1.4.1.1.88.11"}
    assert rules.route(sr) == {}, "a matching rule with no destinations is not 'no match'"


def test_regex_is_searched_and_ae_titles_ignore_padding(tmp_path):
    _, rules = _rules(tmp_path)
    assert rules.route({**CT, "calling_aet": "SCANNER ", "modality": "CT"}) == {
        "pacs": "ct-from-scanner"}
    assert rules.route({"institution_name": "The TEST HOSPITAL of X"}) == {
        "archive": "hospital"}
    assert rules.route({"body_part_examined": "CHEST2"}) == {}


def test_route_test_explains(tmp_path):
    path, _ = _rules(tmp_path, default=["archive"])
    ct = ct_series(tmp_path / "ct", 1)[0]
    r = cli(path, "route", "test", ct, "--calling-aet", "SCANNER")
    out = r.stdout
    assert "rule ct-from-scanner: MATCHES -> pacs" in out
    assert "Modality 'CT' matches one of CT" in out
    assert "calling AE title 'SCANNER' matches one of SCANNER" in out
    assert "rule chest: not evaluated" in out
    assert out.strip().splitlines()[-1].startswith("=> pacs (PACS@127.0.0.1:104, rule "
                                                   "ct-from-scanner)")

    r = cli(path, "route", "test", ct, "--calling-aet", "OTHER", "--json")
    data = json.loads(r.stdout)
    assert data["destinations"] == {"archive": "hospital"}
    first = data["rules"][0]
    assert first["matched"] is False
    assert "calling AE title 'OTHER' does not match one of SCANNER" in first["reasons"]

    cr = cr_image(tmp_path / "cr")
    out = cli(path, "route", "test", cr).stdout
    assert "Body Part Examined 'CHEST' matches /^CHEST$/" in out
    assert "=> pacs" in out and "cardio" in out

    sr = sr_document(tmp_path / "sr")
    out = cli(path, "route", "test", sr).stdout
    assert "rule no-sr: MATCHES -> (no destinations: not forwarded)" in out
    assert out.strip().endswith("=> not forwarded anywhere")


def test_route_test_bad_input_is_one_line(tmp_path):
    path, _ = _rules(tmp_path)
    r = cli(path, "route", "test", tmp_path / "absent.dcm", check=False)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "no such file" in r.stderr
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all" * 10)
    r = cli(path, "route", "test", junk, check=False)
    assert r.returncode == 1 and r.stderr.count("\n") == 1
    assert "cannot decode" in r.stderr and "Traceback" not in r.stderr
