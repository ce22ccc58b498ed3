"""DICOM status codes and association-reject reasons used by the receiver (PS3.4 Annex B, PS3.8 9.3.4)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class StoreStatus(IntEnum):
    """C-STORE response statuses; 0xC0xx distinguishes why a dataset could not be understood."""

    SUCCESS = 0x0000
    PROCESSING_FAILURE = 0x0110  # a defect in the receiver, logged with its traceback
    OUT_OF_RESOURCES = 0xA700
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000
    CANNOT_UNDERSTAND_TRUNCATED = 0xC001
    CANNOT_UNDERSTAND_DEFLATE = 0xC002
    CANNOT_UNDERSTAND_HEADER = 0xC003


class RejectResult(IntEnum):
    """A-ASSOCIATE-RJ result field."""

    PERMANENT = 1
    TRANSIENT = 2


class RejectSource(IntEnum):
    """A-ASSOCIATE-RJ source field."""

    SERVICE_USER = 1
    SERVICE_PROVIDER_ACSE = 2
    SERVICE_PROVIDER_PRESENTATION = 3


@dataclass(frozen=True)
class Rejection:
    """One A-ASSOCIATE-RJ (result, source, reason) triple; the reason's meaning depends on the source."""

    result: RejectResult
    source: RejectSource
    reason: int


CALLING_AE_NOT_RECOGNISED = Rejection(RejectResult.PERMANENT, RejectSource.SERVICE_USER, 3)
CALLED_AE_NOT_RECOGNISED = Rejection(RejectResult.PERMANENT, RejectSource.SERVICE_USER, 7)
LOCAL_LIMIT_EXCEEDED = Rejection(RejectResult.TRANSIENT, RejectSource.SERVICE_PROVIDER_PRESENTATION, 2)
