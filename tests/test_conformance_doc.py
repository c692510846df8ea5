"""The conformance statement is generated from the code's own lists and must not drift."""

from pathlib import Path

from dicombox.conformance import render

ROOT = Path(__file__).resolve().parent.parent


def test_conformance_statement_matches_the_code():
    expected = render(ROOT / "docs" / "conformance")
    actual = (ROOT / "docs" / "conformance.md").read_text("utf-8")
    assert actual == expected, (
        "docs/conformance.md is out of date: run `python -m dicombox.conformance`")


def test_every_storage_sop_class_is_published():
    from dicombox.uids import STORAGE_SOP_CLASSES
    text = (ROOT / "docs" / "conformance.md").read_text("utf-8")
    for uid in STORAGE_SOP_CLASSES:
        assert f"| {uid.name} | {uid.uid} |" in text
