"""The verdict rules of the three modes, and the commitment configuration's errors."""

import subprocess

import pytest

from dicombox.commit.model import Copy, judge

from helpers import DICOMBOX, write_config

CT, MR = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4"
NOW = 1000.0


def verdict(mode, copies, held=CT, missing_deadline=NOW + 1, deadline=NOW + 1,
            upstream=frozenset({"pacs"}), unsupported="delivered"):
    v = judge(mode, CT, held, copies, NOW, missing_deadline, deadline, upstream, unsupported)
    return (v.state, v.reason)


def copy(dest="pacs", state="delivered", committed=False, refused=False):
    return Copy(dest, state, committed, refused)


CASES = [
    # (name, arguments, expected)
    ("missing, still time", dict(mode="local", copies=[], held=None), ("pending", None)),
    ("missing, too late", dict(mode="local", copies=[], held=None, missing_deadline=NOW),
     ("failed", 0x0112)),
    ("other class", dict(mode="local", copies=[], held=MR), ("failed", 0x0119)),
    ("local, held", dict(mode="local", copies=None), ("committed", None)),
    ("forwarded, no table", dict(mode="forwarded", copies=None), ("pending", None)),
    ("forwarded, no table, too late", dict(mode="forwarded", copies=None, deadline=NOW),
     ("failed", 0x0110)),
    ("forwarded, routed nowhere", dict(mode="forwarded", copies=[]), ("committed", None)),
    ("forwarded, one pending",
     dict(mode="forwarded", copies=[copy(), copy("archive", "retry")]), ("pending", None)),
    ("forwarded, one pending, too late",
     dict(mode="forwarded", copies=[copy(), copy("archive", "retry")], deadline=NOW),
     ("failed", 0x0110)),
    ("forwarded, all delivered",
     dict(mode="forwarded", copies=[copy(), copy("archive")]), ("committed", None)),
    ("forwarded, dead-letter", dict(mode="forwarded", copies=[copy(), copy("archive", "dead")]),
     ("failed", 0x0110)),
    ("upstream, delivered not committed", dict(mode="upstream", copies=[copy()]),
     ("pending", None)),
    ("upstream, committed", dict(mode="upstream", copies=[copy(committed=True)]),
     ("committed", None)),
    ("upstream, refused by the destination",
     dict(mode="upstream", copies=[copy(refused=True)]), ("failed", 0x0110)),
    ("upstream, unsupported destination counts delivery",
     dict(mode="upstream", copies=[copy(committed=True), copy("archive")]),
     ("committed", None)),
    ("upstream, unsupported destination not yet delivered",
     dict(mode="upstream", copies=[copy(committed=True), copy("archive", "pending")]),
     ("pending", None)),
    ("upstream, unsupported destination under 'fail'",
     dict(mode="upstream", copies=[copy(committed=True), copy("archive")], unsupported="fail"),
     ("failed", 0x0110)),
]


@pytest.mark.parametrize("kw,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_verdicts(kw, expected):
    assert verdict(**kw) == expected


DEST = [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104}]
BAD = [
    ({"commitment": {"mode": "remote"}}, "commitment.mode", "one of 'local'"),
    ({"commitment": {"mode": "forwarded"}}, "commitment.mode", "at least one [[destinations]]"),
    ({"commitment": {"upstream": [{"destination": "nowhere"}]}, "destinations": DEST},
     "commitment.upstream[0].destination", "no destination named 'nowhere'"),
    ({"commitment": {"upstream": [{"destination": "pacs"}, {"destination": "pacs"}]},
      "destinations": DEST}, "commitment.upstream[1].destination", "listed twice"),
    ({"commitment": {"local_timeout": -1}}, "commitment.local_timeout", "at least 0"),
    ({"remote_aes": [{"ae_title": "MOD", "host": "127.0.0.1"},
                     {"ae_title": "MOD", "host": "127.0.0.2"}]},
     "remote_aes[1].ae_title", "listed twice"),
    ({"remote_aes": [{"ae_title": "MOD", "host": "127.0.0.1", "mode": "upstream"}]},
     "remote_aes[0].mode", "at least one [[destinations]]"),
    ({"remote_aes": [{"ae_title": "MOD"}]}, "remote_aes[0].host", "is required"),
]


@pytest.mark.parametrize("sections,key,problem", BAD, ids=[b[1] for b in BAD])
def test_bad_commitment_configuration(tmp_path, sections, key, problem):
    path = write_config(tmp_path, **sections)
    r = subprocess.run([*DICOMBOX, "config", "check", str(path)], capture_output=True,
                       text=True)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{key}: " in lines[0] and problem in lines[0], r.stderr
