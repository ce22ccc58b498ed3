"""STOW-RS receive (PS3.18 10.5): the parts of a ``multipart/related; type="application/dicom"`` body, each a
Part-10 file, stored through the C-STORE handler, so the same checks, caps, durability and routing apply.

Each part's file meta gives the SOP class and instance and the transfer syntax
(C-STORE's command and presentation context); the dataset after the meta goes
to :class:`engine.receiver.handlers.StoreHandler` exactly as a C-STORE's would,
and its status becomes the part's: 0x0000 in the Referenced SOP Sequence, any
other in the Failed SOP Sequence with its Failure Reason. HTTP: 200 when every
part was stored, 202 when some were, 409 when none. A part that is not a
Part-10 file is failed with 0xC000 before anything is stored for it.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any, Callable

import pydicom
from pydicom.errors import InvalidDicomError

from engine.receiver.acse import AssociationInfo
from engine.receiver.association import StoreRequest
from engine.receiver.statuses import StoreStatus

PREAMBLE = 128
_GROUP_LENGTH = struct.Struct("<HH2sHI")  # (0002,0000) UL, explicit VR little endian: 12 bytes


class StowBodyError(ValueError):
    """The body as a whole is not a STOW request (no multipart/related of application/dicom parts)."""


def split_parts(content_type: str, body: bytes) -> list[tuple[str, bytes]]:
    """(Content-Type, bytes) of each part of a multipart/related body; raises :class:`StowBodyError`."""
    message = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode("latin-1") + body)
    if message.get_content_type() != "multipart/related" or not message.get_boundary():
        raise StowBodyError('the body must be multipart/related; type="application/dicom" with a boundary')
    if (message.get_param("type") or "application/dicom").lower() != "application/dicom":
        raise StowBodyError('only type="application/dicom" parts are accepted (not DICOM JSON or XML)')
    parts = [(part.get_content_type(), part.get_payload(decode=True) or b"") for part in message.iter_parts()]
    if not parts or message.defects:
        raise StowBodyError("the multipart body has no parts or a broken structure (missing closing boundary?)")
    return parts


def dataset_offset(part: bytes) -> int:
    """Where the dataset starts after a Part-10 file's preamble and meta group; raises ValueError."""
    if part[PREAMBLE:PREAMBLE + 4] != b"DICM":
        raise ValueError("no DICM prefix after the 128-byte preamble")
    group, element, vr, _length, value = _GROUP_LENGTH.unpack_from(part, PREAMBLE + 4)
    if (group, element, vr) != (0x0002, 0x0000, b"UL"):
        raise ValueError("the file meta group does not start with its group length")
    offset = PREAMBLE + 4 + _GROUP_LENGTH.size + value
    if offset >= len(part):
        raise ValueError("the file ends inside its meta group")
    return offset


@dataclass(frozen=True)
class PartOutcome:
    """One part's answer: its SOP class and instance (empty when unreadable) and its status."""

    sop_class_uid: str
    sop_instance_uid: str
    status: int


class StowStore:
    """Stores STOW parts through the C-STORE handler (``store``), as calling AE ``calling_ae``."""

    def __init__(self, store: Callable[[StoreRequest], int], called_ae: str) -> None:
        self._store = store
        self._called_ae = called_ae

    def store_part(self, content_type: str, part: bytes, peer: AssociationInfo,
                   study_uid: str | None = None) -> PartOutcome:
        """Store one part; the answer for it (see the module docstring)."""
        if content_type != "application/dicom":
            return PartOutcome("", "", int(StoreStatus.CANNOT_UNDERSTAND))
        try:
            offset = dataset_offset(part)
            meta = pydicom.dcmread(io.BytesIO(part[:offset])).file_meta  # the meta group alone: no dataset parse
            sop_class, sop_instance = str(meta.MediaStorageSOPClassUID), str(meta.MediaStorageSOPInstanceUID)
            syntax = str(meta.TransferSyntaxUID)
        except (ValueError, struct.error, InvalidDicomError, AttributeError, EOFError, OSError):
            return PartOutcome("", "", int(StoreStatus.CANNOT_UNDERSTAND))
        if study_uid is not None:
            try:
                header = pydicom.dcmread(io.BytesIO(part), stop_before_pixels=True,
                                         specific_tags=["StudyInstanceUID"])
                in_study = str(header.get("StudyInstanceUID", "")) == study_uid
            except (ValueError, InvalidDicomError, EOFError, OSError):
                in_study = True  # the handler answers for a dataset it cannot parse
            if not in_study:
                return PartOutcome(sop_class, sop_instance, int(StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS))
        status = self._store(StoreRequest(peer, sop_class, sop_instance, syntax, part[offset:]))
        return PartOutcome(sop_class, sop_instance, status)


def stow_response(outcomes: list[PartOutcome]) -> tuple[int, dict[str, Any]]:
    """The HTTP status and DICOM JSON body of a STOW answer."""
    def item(outcome: PartOutcome, reason_tag: str | None) -> dict[str, Any]:
        entry: dict[str, Any] = {}
        if outcome.sop_class_uid:
            entry["00081150"] = {"vr": "UI", "Value": [outcome.sop_class_uid]}
        if outcome.sop_instance_uid:
            entry["00081155"] = {"vr": "UI", "Value": [outcome.sop_instance_uid]}
        if reason_tag:
            entry[reason_tag] = {"vr": "US", "Value": [outcome.status]}
        return entry

    stored = [o for o in outcomes if o.status == StoreStatus.SUCCESS]
    failed = [o for o in outcomes if o.status != StoreStatus.SUCCESS]
    body: dict[str, Any] = {}
    if stored:
        body["00081199"] = {"vr": "SQ", "Value": [item(o, None) for o in stored]}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": [item(o, "00081197") for o in failed]}
    return (200 if not failed else 202 if stored else 409), body
