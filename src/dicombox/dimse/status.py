"""DIMSE status codes the box returns (PS3.4 B.2.3, C, F, J and PS3.7 Annex C)."""

SUCCESS = 0x0000
# Storage (PS3.4 Table B.2-1)
OUT_OF_RESOURCES = 0xA700
DATASET_MISMATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
# PS3.7 C.5: general failures
PROCESSING_FAILURE = 0x0110
NO_SUCH_SOP_CLASS = 0x0118
NO_SUCH_OBJECT_INSTANCE = 0x0112
DUPLICATE_SOP_INSTANCE = 0x0111
INVALID_ATTRIBUTE_VALUE = 0x0106
MISSING_ATTRIBUTE = 0x0120
MISSING_ATTRIBUTE_VALUE = 0x0121
NO_SUCH_ATTRIBUTE = 0x0105
INVALID_OBJECT_INSTANCE = 0x0117
CLASS_INSTANCE_CONFLICT = 0x0119
NO_SUCH_ACTION_TYPE = 0x0123
UNRECOGNIZED_OPERATION = 0x0211
RESOURCE_LIMITATION = 0x0213
# pynetdicom's conventions for undecodable datasets and handler failures
CANNOT_DECODE = 0xC210
HANDLER_FAILURE = 0xC211

NAMES = {
    SUCCESS: "Success",
    OUT_OF_RESOURCES: "Refused: Out of Resources",
    DATASET_MISMATCH: "Error: Data Set does not match SOP Class",
    CANNOT_UNDERSTAND: "Error: Cannot understand",
    CANNOT_DECODE: "Failure: Cannot understand (dataset could not be decoded)",
    HANDLER_FAILURE: "Failure: Cannot understand (processing failure)",
    PROCESSING_FAILURE: "Processing failure",
    NO_SUCH_SOP_CLASS: "No such SOP class",
    NO_SUCH_OBJECT_INSTANCE: "No such object instance",
    DUPLICATE_SOP_INSTANCE: "Duplicate SOP instance",
    INVALID_ATTRIBUTE_VALUE: "Invalid attribute value",
    MISSING_ATTRIBUTE: "Missing attribute",
    MISSING_ATTRIBUTE_VALUE: "Missing attribute value",
    NO_SUCH_ATTRIBUTE: "No such attribute",
    INVALID_OBJECT_INSTANCE: "Invalid object instance",
    CLASS_INSTANCE_CONFLICT: "Class-instance conflict",
    NO_SUCH_ACTION_TYPE: "No such action type",
    UNRECOGNIZED_OPERATION: "Unrecognized operation",
    RESOURCE_LIMITATION: "Resource limitation",
}


def describe(code: int) -> str:
    return f"0x{code:04X} {NAMES.get(code, '')}".strip()
