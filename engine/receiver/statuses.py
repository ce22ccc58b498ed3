"""DICOM status codes and association-reject reasons used by the receiver (PS3.4 Annex B, PS3.8)."""

from __future__ import annotations

from enum import IntEnum


class StoreStatus(IntEnum):
    """C-STORE response statuses."""

    SUCCESS = 0x0000
    OUT_OF_RESOURCES = 0xA700
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000
    CANNOT_UNDERSTAND_TRUNCATED = 0xC001
    CANNOT_UNDERSTAND_DEFLATE = 0xC002


class RejectResult(IntEnum):
    """A-ASSOCIATE-RJ result field."""

    PERMANENT = 1
    TRANSIENT = 2


class RejectSource(IntEnum):
    """A-ASSOCIATE-RJ source field."""

    SERVICE_USER = 1
    SERVICE_PROVIDER_PRESENTATION = 3


class RejectReason(IntEnum):
    """A-ASSOCIATE-RJ reason field (meaning depends on the source)."""

    CALLING_AE_NOT_RECOGNISED = 3
    CALLED_AE_NOT_RECOGNISED = 7
    LOCAL_LIMIT_EXCEEDED = 2
