"""Tables of the conformance statement generated from the MPPS service's own rules."""

from __future__ import annotations

from pydicom.datadict import dictionary_description

from ..dimse import status as st
from ..uids import VERIFICATION
from . import model
from .notify import IAN_SOP_CLASS, SCN_SOP_CLASS
from .relay import TRANSFER_SYNTAXES as RELAY_TS
from .service import TRANSFER_SYNTAXES as SCP_TS

_TS_NAMES = {"1.2.840.10008.1.2": "ImplicitVRLittleEndian",
             "1.2.840.10008.1.2.1": "ExplicitVRLittleEndian",
             "1.2.840.10008.1.2.2": "ExplicitVRBigEndian"}


def _ts(uids) -> str:
    return ", ".join(_TS_NAMES[u] for u in uids)


def _contexts() -> str:
    from ..conformance import md_table
    rows = [
        [VERIFICATION.name, VERIFICATION.uid, _ts(SCP_TS[:2]), "SCP", "None"],
        ["Modality Performed Procedure Step", model.MPPS_SOP_CLASS, _ts(SCP_TS), "SCP", "None"],
    ]
    return md_table(["Abstract Syntax", "UID", "Transfer Syntaxes", "Role", "Ext. Neg."], rows)


def _proposed() -> str:
    from ..conformance import md_table
    rows = [
        ["Modality Performed Procedure Step", model.MPPS_SOP_CLASS, _ts(RELAY_TS), "SCU",
         "None", "relay to `mpps.destinations`"],
        ["Instance Availability Notification", IAN_SOP_CLASS, _ts(RELAY_TS), "SCU", "None",
         "`mpps.notifications.kind = \"ian\"`"],
        ["Basic Study Content Notification", SCN_SOP_CLASS, _ts(RELAY_TS), "SCU", "None",
         "`mpps.notifications.kind = \"scn\"`"],
    ]
    return md_table(["Abstract Syntax", "UID", "Transfer Syntaxes", "Role", "Ext. Neg.",
                     "When"], rows)


def _name(tag: int) -> str:
    try:
        return dictionary_description(tag)
    except KeyError:
        return "?"


def _attr_rows(attrs, depth: int = 0, type2_label: str = "2") -> list[list[str]]:
    rows = []
    for a in attrs:
        rows.append([">" * depth + _name(a.tag), model.tag_text(a.tag),
                     "1" if a.type1 else type2_label])
        rows += _attr_rows(a.items, depth + 1, type2_label)
    return rows


def _n_create_attributes() -> str:
    from ..conformance import md_table
    return md_table(["Attribute", "Tag", "Checked as type"], _attr_rows(model.N_CREATE_REQUIRED))


def _final_state() -> str:
    from ..conformance import md_table
    return md_table(["Attribute", "Tag", "Checked as type"],
                    _attr_rows(model.FINAL_STATE_REQUIRED))


def _not_allowed() -> str:
    from ..conformance import md_table
    return md_table(["Attribute", "Tag"],
                    [[_name(t), model.tag_text(t)] for t in model.N_SET_NOT_ALLOWED])


def _transitions() -> str:
    from ..conformance import md_table
    groups: dict[tuple[str, str, str], list[str]] = {}
    for (state, op, requested), outcome in model.TRANSITIONS.items():
        if isinstance(outcome, model.Accept):
            result = f"accepted, step is now {outcome.new_state}"
        else:
            result = f"{outcome.status:04X}" + (f", Error ID {outcome.error_id:04X}"
                                                  if outcome.error_id else "")
            result += f": {outcome.comment}"
        groups.setdefault((state, op, result), []).append(requested)
    rows = []
    for (state, op, result), requested in groups.items():
        given = "any" if len(requested) == 5 else ", ".join(requested)
        rows.append([state, op, given, result])
    return md_table(["Step state", "Request", "(0040,0252) in the request", "Result"], rows)


def _statuses() -> str:
    from ..conformance import md_table
    rows = [
        [f"{st.SUCCESS:04X}", "Success", "N-CREATE, N-SET",
         "Journaled (committed and fsync'd) and queued for every destination."],
        [f"{st.INVALID_ATTRIBUTE_VALUE:04X}", "Invalid attribute value", "N-CREATE, N-SET",
         "N-CREATE whose (0040,0252) is not IN PROGRESS; N-SET with an unknown status value or "
         "changing an attribute an N-SET may not change. Attribute Identifier List (0000,1005) "
         "and the response's Attribute List carry the attribute."],
        [f"{st.MISSING_ATTRIBUTE:04X}", "Missing attribute", "N-CREATE, N-SET",
         "A Type 1 (or, with `mpps.require_type2`, Type 2) attribute is absent, or a final-state "
         "attribute is absent at COMPLETED/DISCONTINUED. (0000,1005) names it."],
        [f"{st.MISSING_ATTRIBUTE_VALUE:04X}", "Missing attribute value", "N-CREATE, N-SET",
         "A Type 1 or final-state attribute is present without a value. (0000,1005) names it."],
        [f"{st.DUPLICATE_SOP_INSTANCE:04X}", "Duplicate SOP instance", "N-CREATE",
         "A procedure step with this SOP Instance UID exists."],
        [f"{st.NO_SUCH_OBJECT_INSTANCE:04X}", "No such object instance", "N-SET",
         "No procedure step with this SOP Instance UID."],
        [f"{st.PROCESSING_FAILURE:04X}", "Processing failure", "N-SET",
         f"The step is COMPLETED or DISCONTINUED: Error ID (0000,0903) "
         f"{model.ERROR_ID_NO_LONGER_UPDATABLE:04X}, Error Comment \"{model.NO_LONGER_UPDATABLE}\""
         " (PS3.4 Table F.7.2-2)."],
        [f"{st.PROCESSING_FAILURE:04X}", "Processing failure", "N-CREATE, N-SET",
         "The dataset cannot be decoded, the journal cannot be written, or the service is "
         "stopping; nothing was journaled, the modality may send again."],
    ]
    return md_table(["Status", "Meaning", "Operation", "When"], rows)


def conformance_tables() -> dict:
    return {"mpps-contexts": _contexts, "mpps-proposed": _proposed,
            "mpps-n-create-attributes": _n_create_attributes, "mpps-final-state": _final_state,
            "mpps-n-set-not-allowed": _not_allowed, "mpps-transitions": _transitions,
            "mpps-statuses": _statuses}
