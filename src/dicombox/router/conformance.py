"""Tables of the conformance statement generated from the router's own lists."""

from __future__ import annotations

from ..config import Config
from ..dimse import status as st
from ..uids import VERIFICATION


def _router_contexts() -> str:
    from ..conformance import md_table
    cfg = Config()
    ts = ", ".join(cfg.storage.transfer_syntaxes)
    rows = [[VERIFICATION.name, VERIFICATION.uid,
             "ExplicitVRLittleEndian, ImplicitVRLittleEndian", "SCP", "None"],
            ["Every Storage SOP Class of Table 2 (and `storage.private_sop_classes`)",
             "see Table 2", f"{ts} (in this order of preference)", "SCP", "None"]]
    return md_table(["Abstract Syntax", "UID", "Transfer Syntaxes", "Role", "Ext. Neg."], rows)


def _store_statuses() -> str:
    from ..conformance import md_table
    rows = [
        ["Success", f"{st.SUCCESS:04X}", "The instance is in the spool, fsync'd, and indexed."],
        ["Refused: Out of Resources", f"{st.OUT_OF_RESOURCES:04X}",
         "Free space is below `storage.reserve_mb`, or the spool cannot be written."],
        ["Error: Data Set does not match SOP Class", f"{st.DATASET_MISMATCH:04X}",
         "The dataset's SOP Class/Instance UID differ from the C-STORE request."],
        ["Error: Cannot understand", f"{st.CANNOT_UNDERSTAND:04X}",
         "Study or Series Instance UID missing."],
        ["Failure: Cannot understand", f"{st.CANNOT_DECODE:04X}",
         "The dataset cannot be decoded; nothing is kept."],
        ["Failure: Processing failure", f"{st.HANDLER_FAILURE:04X}",
         "Unexpected internal error; logged with context, nothing is kept."],
    ]
    return md_table(["Service Status", "Code", "Meaning"], rows)


def conformance_tables() -> dict:
    return {"router-contexts": _router_contexts, "router-store-statuses": _store_statuses}
