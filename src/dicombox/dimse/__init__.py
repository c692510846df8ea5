"""pynetdicom glue: AE factory, association policy, presentation contexts, statuses."""

from .ae import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    AssociationPolicy,
    Listener,
    make_ae,
    storage_contexts,
)

__all__ = ["IMPLEMENTATION_CLASS_UID", "IMPLEMENTATION_VERSION_NAME", "AssociationPolicy",
           "Listener", "make_ae", "storage_contexts"]
