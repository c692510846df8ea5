"""The Modality Performed Procedure Step rules of PS3.4 F.7, as data.

:data:`TRANSITIONS` is the state machine: for the step's current state, the
operation and the Performed Procedure Step Status the request carries, it
gives either the new state or the refusal (status, Error ID, comment).  The
attribute tables (:data:`N_CREATE_REQUIRED`, :data:`N_SET_NOT_ALLOWED`,
:data:`FINAL_STATE_REQUIRED`) are Table F.7.2-1 reduced to what an SCP checks.
:func:`check` applies them and returns a :class:`Verdict`; nothing here does
any I/O, so every rule is tested directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pydicom.tag import Tag

from ..dimse import status as st

MPPS_SOP_CLASS = "1.2.840.10008.3.1.2.3.3"

ABSENT = "ABSENT"  # no such procedure step yet
IN_PROGRESS = "IN PROGRESS"
COMPLETED = "COMPLETED"
DISCONTINUED = "DISCONTINUED"
FINAL_STATES = (COMPLETED, DISCONTINUED)
#: Stand-ins for the status a request carries: none, or a value not in PS3.3 C.4.14.
NOT_GIVEN = "(not given)"
OTHER = "(other value)"

N_CREATE = "N-CREATE"
N_SET = "N-SET"

#: Error ID of PS3.4 Table F.7.2-2.
ERROR_ID_NO_LONGER_UPDATABLE = 0xA710
NO_LONGER_UPDATABLE = "Performed Procedure Step Object may no longer be updated"

STATUS_TAG = Tag(0x0040, 0x0252)


@dataclass(frozen=True)
class Refusal:
    status: int
    comment: str
    error_id: int | None = None
    #: The tag the refusal is about (reported in the response).
    tag: int | None = None


@dataclass(frozen=True)
class Accept:
    new_state: str


_REFUSE_CREATE_STATUS = Refusal(st.INVALID_ATTRIBUTE_VALUE,
                                "N-CREATE requires (0040,0252) = IN PROGRESS", tag=STATUS_TAG)
_DUPLICATE = Refusal(st.DUPLICATE_SOP_INSTANCE, "a procedure step with this SOP Instance UID "
                     "exists")
_UNKNOWN = Refusal(st.NO_SUCH_OBJECT_INSTANCE, "no such procedure step")
_FINAL = Refusal(st.PROCESSING_FAILURE, NO_LONGER_UPDATABLE, ERROR_ID_NO_LONGER_UPDATABLE)
_BAD_STATUS = Refusal(st.INVALID_ATTRIBUTE_VALUE, "(0040,0252) must be IN PROGRESS, COMPLETED "
                      "or DISCONTINUED", tag=STATUS_TAG)

_REQUESTED = (NOT_GIVEN, IN_PROGRESS, COMPLETED, DISCONTINUED, OTHER)

#: (current state, operation, requested status) -> Accept or Refusal.  Complete:
#: every combination has an entry (a test checks it).
TRANSITIONS: dict[tuple[str, str, str], Accept | Refusal] = {
    **{(ABSENT, N_CREATE, r): _REFUSE_CREATE_STATUS for r in _REQUESTED},
    (ABSENT, N_CREATE, IN_PROGRESS): Accept(IN_PROGRESS),
    **{(s, N_CREATE, r): _DUPLICATE
       for s in (IN_PROGRESS, COMPLETED, DISCONTINUED) for r in _REQUESTED},
    **{(ABSENT, N_SET, r): _UNKNOWN for r in _REQUESTED},
    (IN_PROGRESS, N_SET, NOT_GIVEN): Accept(IN_PROGRESS),
    (IN_PROGRESS, N_SET, IN_PROGRESS): Accept(IN_PROGRESS),
    (IN_PROGRESS, N_SET, COMPLETED): Accept(COMPLETED),
    (IN_PROGRESS, N_SET, DISCONTINUED): Accept(DISCONTINUED),
    (IN_PROGRESS, N_SET, OTHER): _BAD_STATUS,
    **{(s, N_SET, r): _FINAL for s in FINAL_STATES for r in _REQUESTED},
}


@dataclass(frozen=True)
class Attr:
    """A required attribute: ``type1`` needs a value, otherwise presence is required."""

    tag: int
    type1: bool
    #: Requirements inside each item, for sequences.
    items: tuple[Attr, ...] = ()


def _a(keyword_tag: int, type1: bool, *items: Attr) -> Attr:
    return Attr(keyword_tag, type1, items)


_REF_SOP = (_a(0x00081150, True), _a(0x00081155, True))
_SERIES_ITEM = (
    _a(0x00081050, False),  # Performing Physician's Name
    _a(0x00181030, True),   # Protocol Name
    _a(0x00081070, False),  # Operators' Name
    _a(0x0020000E, True),   # Series Instance UID
    _a(0x0008103E, False),  # Series Description
    _a(0x00080054, False),  # Retrieve AE Title
    _a(0x00081140, False, *_REF_SOP),  # Referenced Image Sequence
    _a(0x00400220, False, *_REF_SOP),  # Referenced Non-Image Composite SOP Instance Seq.
)

#: Table F.7.2-1, N-CREATE column: Type 1 (value required) and Type 2 (presence).
N_CREATE_REQUIRED: tuple[Attr, ...] = (
    _a(0x00400270, True,  # Scheduled Step Attributes Sequence
       _a(0x0020000D, True),   # Study Instance UID
       _a(0x00081110, False, *_REF_SOP),  # Referenced Study Sequence
       _a(0x00080050, False),  # Accession Number
       _a(0x00401001, False),  # Requested Procedure ID
       _a(0x00321060, False),  # Requested Procedure Description
       _a(0x00400009, False),  # Scheduled Procedure Step ID
       _a(0x00400007, False),  # Scheduled Procedure Step Description
       _a(0x00400008, False)),  # Scheduled Protocol Code Sequence
    _a(0x00100010, False),  # Patient's Name
    _a(0x00100020, False),  # Patient ID
    _a(0x00100030, False),  # Patient's Birth Date
    _a(0x00100040, False),  # Patient's Sex
    _a(0x00081120, False, *_REF_SOP),  # Referenced Patient Sequence
    _a(0x00400253, True),   # Performed Procedure Step ID
    _a(0x00400241, True),   # Performed Station AE Title
    _a(0x00400242, False),  # Performed Station Name
    _a(0x00400243, False),  # Performed Location
    _a(0x00400244, True),   # Performed Procedure Step Start Date
    _a(0x00400245, True),   # Performed Procedure Step Start Time
    _a(0x00400252, True),   # Performed Procedure Step Status
    _a(0x00400254, False),  # Performed Procedure Step Description
    _a(0x00400255, False),  # Performed Procedure Type Description
    _a(0x00081032, False),  # Procedure Code Sequence
    _a(0x00400250, False),  # Performed Procedure Step End Date
    _a(0x00400251, False),  # Performed Procedure Step End Time
    _a(0x00080060, True),   # Modality
    _a(0x00200010, False),  # Study ID
    _a(0x00400260, False),  # Performed Protocol Code Sequence
    _a(0x00400340, False, *_SERIES_ITEM),  # Performed Series Sequence
)

#: Attributes an N-SET may not change ("Not allowed" in Table F.7.2-1).
N_SET_NOT_ALLOWED: tuple[int, ...] = (
    0x00400270, 0x00100010, 0x00100020, 0x00100021, 0x00100024, 0x00101002,
    0x00100030, 0x00100040, 0x00081120, 0x00380010, 0x00380014, 0x00380060,
    0x00380064, 0x00380062, 0x00400253, 0x00400241, 0x00400242, 0x00400243,
    0x00400244, 0x00400245, 0x00080060, 0x00200010,
)

#: Items of sequences present in an N-SET must still carry their Type 1 attributes.
N_SET_ITEMS: tuple[Attr, ...] = (_a(0x00400340, False, *_SERIES_ITEM),)

#: The "Final State" column: required once the status is COMPLETED or DISCONTINUED.
FINAL_STATE_REQUIRED: tuple[Attr, ...] = (
    _a(0x00400250, True),  # Performed Procedure Step End Date
    _a(0x00400251, True),  # Performed Procedure Step End Time
    _a(0x00400340, True, *_SERIES_ITEM),  # Performed Series Sequence, at least one item
)


@dataclass
class Verdict:
    """The outcome of :func:`check`: a refusal, or the state after the request."""

    refusal: Refusal | None = None
    new_state: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def accepted(self) -> bool:
        return self.refusal is None


def tag_text(tag: int) -> str:
    t = Tag(tag)
    return f"({t.group:04X},{t.element:04X})"


def _empty(ds: Dataset, tag: int) -> bool:
    value = ds[tag].value
    if value is None:
        return True
    if isinstance(value, (str, bytes, list, tuple)) or hasattr(value, "__len__"):
        return len(value) == 0
    return False


def missing(ds: Dataset, attrs: tuple[Attr, ...], type2: bool = True,
            path: str = "") -> Refusal | None:
    """The first unmet requirement of ``attrs`` in ``ds``, as a refusal."""
    for a in attrs:
        where = f"{path}{tag_text(a.tag)}"
        if a.tag not in ds:
            if a.type1 or type2:
                return Refusal(st.MISSING_ATTRIBUTE, f"missing {where}", tag=a.tag)
            continue
        if a.type1 and _empty(ds, a.tag):
            return Refusal(st.MISSING_ATTRIBUTE_VALUE, f"{where} has no value", tag=a.tag)
        if a.items and ds[a.tag].VR == "SQ":
            for item in ds[a.tag].value:
                refusal = missing(item, a.items, type2, f"{where}>")
                if refusal is not None:
                    return refusal
    return None


def requested_status(ds: Dataset) -> str:
    if STATUS_TAG not in ds:
        return NOT_GIVEN
    value = str(ds[STATUS_TAG].value or "").strip()
    return value if value in (IN_PROGRESS, COMPLETED, DISCONTINUED) else OTHER


def check(current: str, operation: str, request: Dataset, merged: Dataset | None = None,
          require_type2: bool = True) -> Verdict:
    """Validate one request.

    ``current`` is the step's state (:data:`ABSENT` if unknown), ``request``
    the Attribute List (N-CREATE) or Modification List (N-SET), ``merged``
    (N-SET only) the step's attributes with the modification applied, used
    for the final-state requirements.
    """
    outcome = TRANSITIONS[(current, operation, requested_status(request))]
    if isinstance(outcome, Refusal):
        return Verdict(refusal=outcome)
    if operation == N_CREATE:
        refusal = missing(request, N_CREATE_REQUIRED, require_type2)
        if refusal is not None:
            return Verdict(refusal=refusal)
    else:
        present = tuple(a for a in N_SET_ITEMS if a.tag in request)
        refusal = missing(request, present, require_type2)
        if refusal is not None:
            return Verdict(refusal=refusal)
        if outcome.new_state in FINAL_STATES:
            refusal = missing(merged if merged is not None else request, FINAL_STATE_REQUIRED)
            if refusal is not None:
                return Verdict(refusal=Refusal(
                    refusal.status, f"{outcome.new_state} needs {refusal.comment[8:]}"
                    if refusal.comment.startswith("missing ") else
                    f"{outcome.new_state}: {refusal.comment}", tag=refusal.tag))
    return Verdict(new_state=outcome.new_state)


def not_allowed_change(current: Dataset, modification: Dataset) -> Refusal | None:
    """An N-SET may not change the attributes Table F.7.2-1 marks "Not allowed".

    Repeating an attribute with the value it already has is harmless and accepted.
    """
    for tag in N_SET_NOT_ALLOWED:
        if tag not in modification:
            continue
        if tag in current and current[tag].value == modification[tag].value:
            continue
        return Refusal(st.INVALID_ATTRIBUTE_VALUE,
                       f"{tag_text(tag)} may not be changed by N-SET", tag=tag)
    return None


def merge(current: Dataset, modification: Dataset) -> Dataset:
    """The step's attributes after an N-SET: top-level attributes are replaced
    (a sequence with all its items, PS3.4 F.7.2.2.2)."""
    merged = Dataset()
    for elem in current:
        merged.add(elem)
    scs_before = current.get("SpecificCharacterSet")
    scs_new = modification.get("SpecificCharacterSet")
    if scs_new is not None and scs_new != scs_before and scs_before is not None:
        # PS3.4 F.7.2.2.3: the N-SET's character set does not replace the
        # previous one; keep one representation by converting to UTF-8.
        merged = _to_utf8(merged)
        modification = _to_utf8(modification)
    for elem in modification:
        if elem.tag == 0x00080005 and "SpecificCharacterSet" in merged:
            continue
        merged[elem.tag] = elem
    return merged


def _to_utf8(ds: Dataset) -> Dataset:
    out = Dataset()
    for elem in ds:
        out.add(elem)  # decodes text with the dataset's character set
    out.decode()
    out.SpecificCharacterSet = "ISO_IR 192"
    return out
