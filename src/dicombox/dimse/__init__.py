"""pynetdicom glue: AE factory, association policy, presentation contexts, statuses."""

from .ae import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    NODELAY_HANDLERS,
    AssociationPolicy,
    Listener,
    make_ae,
    nodelay,
    refusal_text,
    storage_contexts,
)

__all__ = ["IMPLEMENTATION_CLASS_UID", "IMPLEMENTATION_VERSION_NAME", "AssociationPolicy",
           "Listener", "NODELAY_HANDLERS", "make_ae", "nodelay", "refusal_text",
           "storage_contexts"]
