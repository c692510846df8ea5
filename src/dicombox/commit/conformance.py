"""Tables of the conformance statement generated from the commitment code's own lists."""

from __future__ import annotations

from ..dimse import status as st
from ..uids import STORAGE_COMMITMENT_PUSH
from .model import FAILURE_REASONS, FAILURE_WHEN, MODES, REQUEST_TRANSITIONS
from .requests import ACTION_STATUSES
from .scp import TRANSFER_SYNTAXES
from .upstream import INVALID_ARGUMENT_VALUE, NO_SUCH_EVENT_TYPE

_TS_NAMES = {"1.2.840.10008.1.2": "ImplicitVRLittleEndian",
             "1.2.840.10008.1.2.1": "ExplicitVRLittleEndian"}


def _ts() -> str:
    return ", ".join(_TS_NAMES[str(u)] for u in TRANSFER_SYNTAXES)


def _contexts() -> str:
    from ..conformance import md_table
    name, uid = STORAGE_COMMITMENT_PUSH.name, STORAGE_COMMITMENT_PUSH.uid
    rows = [
        ["accepted", name, uid, _ts(), "SCP",
         "SCU/SCP role selection accepted as proposed", "modality's N-ACTION"],
        ["accepted", name, uid, _ts(), "SCU",
         "SCU/SCP role selection accepted as proposed (requestor as SCP)",
         "destination's N-EVENT-REPORT (upstream mode)"],
        ["proposed", name, uid, _ts(), "SCP",
         "SCU/SCP role selection: SCU role 0, SCP role 1 (unless the AE's "
         "`role_selection = false`)", "report on a new association"],
        ["proposed", name, uid, _ts(), "SCU", "None", "request to a destination (upstream)"],
    ]
    return md_table(["", "Abstract Syntax", "UID", "Transfer Syntaxes", "Role", "Ext. Neg.",
                     "Used for"], rows)


def _modes() -> str:
    from ..conformance import md_table
    return md_table(["Mode", "An instance is reported committed when"],
                    [[f"`{m}`", text] for m, text in MODES])


def _action_statuses() -> str:
    from ..conformance import md_table
    rows = [[st.NAMES.get(code, ""), f"{code:04X}", text] for code, text in ACTION_STATUSES]
    return md_table(["Service Status", "Code", "Meaning"], rows)


def _failure_reasons() -> str:
    from ..conformance import md_table
    rows = [[f"{code:04X}H", FAILURE_REASONS[code], FAILURE_WHEN[code]]
            for code in sorted(FAILURE_WHEN)]
    return md_table(["Failure Reason (0008,1197)", "Meaning", "Reported when"], rows)


def _request_states() -> str:
    from ..conformance import md_table
    rows = [[f"`{a}`", f"`{b}`", why] for (a, b), why in REQUEST_TRANSITIONS.items()]
    return md_table(["From", "To", "When"], rows)


def _report_statuses() -> str:
    from ..conformance import md_table
    rows = [
        [f"{st.SUCCESS:04X}", "The destination's report is recorded: `committed_at` is set "
                              "on the forwarding rows it names as committed."],
        [f"{INVALID_ARGUMENT_VALUE:04X}", "The Transaction UID is not one the box sent."],
        [f"{NO_SUCH_EVENT_TYPE:04X}", "Event Type ID other than 1 or 2."],
        [f"{st.PROCESSING_FAILURE:04X}", "The Event Information cannot be decoded or "
                                         "recorded."],
    ]
    return md_table(["Status", "Returned when (N-EVENT-REPORT received in upstream mode)"],
                    rows)


def conformance_tables() -> dict:
    return {"commit-contexts": _contexts, "commit-modes": _modes,
            "commit-action-statuses": _action_statuses,
            "commit-failure-reasons": _failure_reasons,
            "commit-request-states": _request_states,
            "commit-report-statuses": _report_statuses}
