"""The IHE Portable Data for Imaging extras of a file-set: README.TXT, INDEX.HTM, IHE_PDI/.

IHE PDI asks for a ``README.TXT`` in the root (what the medium is, who made
it with what, how to use it), an ``INDEX.HTM`` that a web browser opens to see
what is on it, and web content under ``IHE_PDI/``.  None of these files is
referenced from the DICOMDIR; every name is an ISO 9660 level 1 name (8.3,
uppercase) so that the same names appear on every system.

``README.TXT`` is plain ASCII with CR LF line ends (it must open in any
editor); patient names appear there in their alphabetic form only,
transliterated to ASCII.  The HTML pages are UTF-8 XHTML and show names in
every form the instance carries (alphabetic, ideographic, phonetic), decoded
with the instance's own Specific Character Set.
"""

from __future__ import annotations

import html
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from .. import __version__

PRODUCT = "dicombox"


@dataclass
class SeriesInfo:
    number: str = ""
    modality: str = ""
    description: str = ""
    instances: int = 0


@dataclass
class StudyInfo:
    uid: str = ""
    date: str = ""
    time: str = ""
    description: str = ""
    accession: str = ""
    study_id: str = ""
    referring: str = ""
    series: dict[str, SeriesInfo] = field(default_factory=dict)

    @property
    def instances(self) -> int:
        return sum(s.instances for s in self.series.values())

    @property
    def modalities(self) -> str:
        seen: list[str] = []
        for s in self.series.values():
            if s.modality and s.modality not in seen:
                seen.append(s.modality)
        return ", ".join(seen)


@dataclass
class PatientInfo:
    patient_id: str = ""
    name: str = ""          # every component group, for the HTML pages
    ascii_name: str = ""    # alphabetic group in ASCII, for README.TXT
    birth_date: str = ""
    sex: str = ""
    studies: dict[str, StudyInfo] = field(default_factory=dict)


def _group(text: str) -> str:
    """One component group ``Family^Given^Middle^Prefix^Suffix`` for people to read."""
    parts = (text.split("^") + [""] * 5)[:5]
    family, given, middle, prefix, suffix = (p.strip() for p in parts)
    rest = " ".join(p for p in (prefix, given, middle, suffix) if p)
    if family and rest:
        return f"{family}, {rest}"
    return family or rest


def _ideographic(text: str) -> str:
    return " ".join(p.strip() for p in text.split("^") if p.strip())


def display_name(value) -> str:
    """A Person Name with every group it has: ``Yamada, Tarou (山田 太郎 / やまだ たろう)``."""
    text = str(value or "")
    groups = (text.split("=") + ["", ""])[:3]
    first = _group(groups[0])
    others = [g for g in (_ideographic(groups[1]), _ideographic(groups[2])) if g]
    if first and others:
        return f"{first} ({' / '.join(others)})"
    return first or " / ".join(others)


def ascii_name(value) -> str:
    """The alphabetic group of a Person Name in plain ASCII (accents dropped)."""
    text = str(value or "").split("=")[0]
    plain = unicodedata.normalize("NFKD", _group(text)).encode("ascii", "ignore").decode()
    return plain.strip() or "(name not in Latin letters; see INDEX.HTM)"


def _date(da: str) -> str:
    da = (da or "").strip()
    if len(da) == 8 and da.isdigit():
        return f"{da[:4]}-{da[4:6]}-{da[6:]}"
    return da


def _time(tm: str) -> str:
    tm = (tm or "").strip()
    if len(tm) >= 4 and tm[:4].isdigit():
        return f"{tm[:2]}:{tm[2:4]}"
    return tm


def study_page_name(index: int) -> str:
    return f"ST{index:06d}.HTM"


def _plain(text: str) -> str:
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()


def readme(patients: list[PatientInfo], *, volume_text: str, label, profile,
           fileset_id: str, instances: int) -> str:
    """The README.TXT of a medium, as text (written ASCII with CR LF)."""
    created = label.created.strftime("%Y-%m-%d %H:%M")
    lines = [
        f"DICOM MEDIUM  -  {volume_text}",
        "=" * 60,
        "",
        "This medium holds medical images and reports in DICOM format: a DICOM",
        "file-set (DICOM PS3.10) with a DICOMDIR directory in its root. It follows",
        "the IHE Portable Data for Imaging (PDI) profile and the DICOM media",
        f"application profile {profile.name}:",
        f"{profile.title}.",
        "",
        f"Created:      {created}",
        f"Created by:   {_plain(label.institution) or '(institution not configured)'}",
        f"Created with: {PRODUCT} {__version__} on the box {_plain(label.box_name)!s}",
        f"Job:          {_plain(label.job_id)}    File-set ID: {fileset_id}",
        f"Volume:       {volume_text}",
    ]
    if label.volumes > 1:
        lines += ["",
                  f"The job did not fit on one medium and was written on {label.volumes}.",
                  "Every medium is a complete file-set of its own: open each one; a",
                  "study or series may continue on the next medium."]
    lines += ["", "CONTENTS", "--------",
              f"{len(patients)} patient(s), "
              f"{sum(len(p.studies) for p in patients)} stud(y/ies), {instances} instance(s):", ""]
    for p in patients:
        lines.append(f"  Patient {p.ascii_name}   ID {_plain(p.patient_id)}"
                     + (f"   born {_date(p.birth_date)}" if p.birth_date else ""))
        for s in p.studies.values():
            desc = _plain(s.description) or "(no description)"
            lines.append(f"    {_date(s.date)} {_time(s.time)}  {s.modalities:<8} {desc}"
                         f"  ({len(s.series)} series, {s.instances} instances"
                         + (f", accession {_plain(s.accession)}" if s.accession else "") + ")")
    lines += [
        "",
        "HOW TO VIEW",
        "-----------",
        "Open the DICOMDIR file (or the whole medium) with a DICOM viewer; every",
        "DICOM viewer and PACS import tool reads it.  This medium does not",
        "contain viewer software.  To see what it contains without a DICOM",
        "viewer, open INDEX.HTM in a web browser.",
        "",
        "FILES",
        "-----",
        "DICOMDIR     the DICOM directory of this file-set",
        "PT*/...      the DICOM files (patient/study/series/instance folders)",
        "INDEX.HTM    list of the patients and studies, for a web browser",
        "IHE_PDI/     web pages of the studies (referenced from INDEX.HTM)",
        "README.TXT   this file",
        "",
        "NOTE",
        "----",
        "The images on this medium are copies for information and exchange.",
        "Diagnosis should be made with the original images at a diagnostic",
        "workstation.  This medium contains personal health information:",
        "keep it safe.",
        "",
    ]
    return "\r\n".join(_plain(line) for line in lines)


_HEAD = """<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Strict//EN" \
"http://www.w3.org/TR/xhtml1/DTD/xhtml1-strict.dtd">
<html xmlns="http://www.w3.org/1999/xhtml" xml:lang="en" lang="en">
<head>
<meta http-equiv="Content-Type" content="text/html; charset=UTF-8" />
<title>{title}</title>
<style type="text/css">body {{ font-family: sans-serif; }} \
table {{ border-collapse: collapse; }} \
td, th {{ border: 1px solid #999; padding: 2px 6px; text-align: left; }}</style>
</head>
<body>
"""

_TAIL = "</body>\n</html>\n"


def _e(text) -> str:
    return html.escape(str(text or ""), quote=True)


def index_htm(patients: list[PatientInfo], pages: dict[str, str], *, volume_text: str,
              label, profile, fileset_id: str) -> str:
    """INDEX.HTM: the patients and studies on the medium, linking to IHE_PDI/ pages."""
    out = [_HEAD.format(title=_e(f"DICOM medium {fileset_id} - {volume_text}")),
           f"<h1>DICOM medium &#8212; {_e(volume_text)}</h1>\n",
           f"<p>Created {_e(label.created.strftime('%Y-%m-%d %H:%M'))} by "
           f"{_e(label.institution or 'the institution')} with {PRODUCT} {__version__} "
           f"(box {_e(label.box_name)}, job {_e(label.job_id)}). File-set ID "
           f"{_e(fileset_id)}, media application profile {_e(profile.name)}.</p>\n",
           "<p>Open the DICOMDIR file of this medium with a DICOM viewer to see the images. "
           'See <a href="README.TXT">README.TXT</a> for details.</p>\n']
    for p in patients:
        out.append(f"<h2>{_e(p.name or '(no name)')}</h2>\n<p>Patient ID {_e(p.patient_id)}"
                   + (f", born {_e(_date(p.birth_date))}" if p.birth_date else "")
                   + (f", sex {_e(p.sex)}" if p.sex else "") + "</p>\n")
        out.append("<table>\n<tr><th>Date</th><th>Time</th><th>Modality</th>"
                   "<th>Description</th><th>Accession</th><th>Series</th>"
                   "<th>Instances</th></tr>\n")
        for s in p.studies.values():
            page = pages[s.uid]
            out.append(
                f'<tr><td><a href="IHE_PDI/{page}">{_e(_date(s.date))}</a></td>'
                f"<td>{_e(_time(s.time))}</td><td>{_e(s.modalities)}</td>"
                f"<td>{_e(s.description)}</td><td>{_e(s.accession)}</td>"
                f"<td>{len(s.series)}</td><td>{s.instances}</td></tr>\n")
        out.append("</table>\n")
    out.append(_TAIL)
    return "".join(out)


def study_htm(patient: PatientInfo, study: StudyInfo, *, volume_text: str) -> str:
    """One IHE_PDI/ page per study: its series."""
    out = [_HEAD.format(title=_e(f"{study.description or 'Study'} - {volume_text}")),
           f"<h1>{_e(study.description or '(study without description)')}</h1>\n",
           f"<p>Patient {_e(patient.name)}, ID {_e(patient.patient_id)}</p>\n",
           f"<p>Study date {_e(_date(study.date))} {_e(_time(study.time))}, "
           f"accession {_e(study.accession)}, study ID {_e(study.study_id)}"
           + (f", referring physician {_e(display_name(study.referring))}"
              if study.referring else "") + "</p>\n",
           f"<p>Study Instance UID {_e(study.uid)}</p>\n",
           "<table>\n<tr><th>Series</th><th>Modality</th><th>Description</th>"
           "<th>Instances</th></tr>\n"]
    for s in study.series.values():
        out.append(f"<tr><td>{_e(s.number)}</td><td>{_e(s.modality)}</td>"
                   f"<td>{_e(s.description)}</td><td>{s.instances}</td></tr>\n")
    out.append("</table>\n")
    out.append(f'<p><a href="../INDEX.HTM">Back to the index</a> ({_e(volume_text)})</p>\n')
    out.append(_TAIL)
    return "".join(out)


def write_extras(root: Path, patients: list[PatientInfo], *, volume_text: str, label,
                 profile, fileset_id: str, instances: int) -> list[Path]:
    """Write README.TXT, INDEX.HTM and IHE_PDI/ under ``root``; return the files written."""
    pages: dict[str, str] = {}
    n = 0
    for p in patients:
        for s in p.studies.values():
            n += 1
            pages[s.uid] = study_page_name(n)
    written = []
    pdi = root / "IHE_PDI"
    pdi.mkdir(exist_ok=True)
    for p in patients:
        for s in p.studies.values():
            path = pdi / pages[s.uid]
            path.write_text(study_htm(p, s, volume_text=volume_text), "utf-8")
            written.append(path)
    path = root / "INDEX.HTM"
    path.write_text(index_htm(patients, pages, volume_text=volume_text, label=label,
                              profile=profile, fileset_id=fileset_id), "utf-8")
    written.append(path)
    path = root / "README.TXT"
    path.write_bytes(readme(patients, volume_text=volume_text, label=label, profile=profile,
                            fileset_id=fileset_id, instances=instances).encode("ascii"))
    written.append(path)
    return written
