"""The receive path's own encoders write exactly what pydicom/pynetdicom would."""

import io

import pytest
from pydicom.filewriter import write_file_meta_info
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE

from dicombox.dimse import ae as _ae  # noqa: F401 - installs the box's file meta
from dicombox.dimse import receive
from dicombox.dimse.reactor import c_store_rsp_command

SC = "1.2.840.10008.5.1.4.1.1.7"
UIDS = ["1.2.3.4", "1.2.826.0.1.3680043.8.498.12345678901234567890",
        "2.25.115990870590008594318337194660194638012"]


@pytest.mark.parametrize("status", [0x0000, 0xB000, 0xA700, 0xC000])
@pytest.mark.parametrize("uid", UIDS)
def test_c_store_response_matches_pynetdicom(status, uid):
    rsp = C_STORE()
    rsp.MessageID = rsp.MessageIDBeingRespondedTo = 513
    rsp.AffectedSOPClassUID = SC
    rsp.AffectedSOPInstanceUID = uid
    rsp.Status = status
    msg = C_STORE_RSP()
    msg.primitive_to_message(rsp)
    (pdata,) = list(msg.encode_msg(1, 16384))
    ((context_id, pdv),) = pdata.presentation_data_value_list
    assert context_id == 1
    assert pdv == b"\x03" + c_store_rsp_command(SC, 513, status, uid)


@pytest.mark.parametrize("ts", ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.70",
                                "1.2.840.10008.1.2"])
@pytest.mark.parametrize("uid", UIDS)
def test_file_meta_matches_pydicom(ts, uid):
    from pynetdicom import dimse_messages
    meta = dimse_messages.create_file_meta if not receive._state["originals"] else \
        receive._state["originals"]["create_file_meta"]
    ref = io.BytesIO()
    write_file_meta_info(ref, meta(sop_class_uid=SC, sop_instance_uid=uid, transfer_syntax=ts))
    assert ref.getvalue() == receive.file_meta_bytes(receive.FileMeta(SC, uid, ts))


def test_sent_response_seen_by_handlers_is_the_real_message():
    """EVT_DIMSE_SENT handlers get a C_STORE_RSP whose command set is built on use."""
    from dicombox.dimse.reactor import _SentStoreResponse
    rsp = C_STORE()
    rsp.MessageID = rsp.MessageIDBeingRespondedTo = 9
    rsp.AffectedSOPClassUID = SC
    rsp.AffectedSOPInstanceUID = UIDS[1]
    rsp.Status = 0
    seen = _SentStoreResponse(rsp, 3)
    assert isinstance(seen, C_STORE_RSP)
    assert seen.context_id == 3
    ref = C_STORE_RSP()
    ref.primitive_to_message(rsp)
    assert seen.command_set == ref.command_set
    assert seen.command_set.Status == 0
    assert seen.message_to_primitive().AffectedSOPInstanceUID == UIDS[1]
