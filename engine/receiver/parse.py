"""Checking a received dataset without re-encoding it: completeness, header facts, safe UIDs.

The bytes are walked element by element (headers only) to prove the dataset is
complete — pydicom's reader stops silently at a cut — then the header up to the
pixel data is parsed for :class:`InstanceMeta`. An image SOP class must carry
pixel data (a dataset cut between two elements looks complete otherwise). A
deflated dataset is inflated with a size cap first. Every problem raises
:class:`InstanceRejected` carrying the C-STORE status to answer and a reason safe
to log (no patient data).
"""

from __future__ import annotations

import functools
import re
import struct
import zlib

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.uid import UID

from engine.dicom.values import RawHeader
from engine.dicom.walk import MalformedDataset, walk_dataset
from engine.ledger.store import InstanceMeta, priority_key
from engine.receiver.statuses import StoreStatus

# What InstanceMeta and the pixel-size check read (by keyword), plus SpecificCharacterSet for the text values.
HEADER_KEYWORDS = ("SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
                   "Modality", "BodyPartExamined", "SeriesDescription", "InstanceNumber", "ImagePositionPatient",
                   "ImageOrientationPatient", "ImagesInAcquisition", "NumberOfFrames", "Rows", "Columns",
                   "BitsAllocated", "SamplesPerPixel", "PhotometricInterpretation")
_HEADER_TAGS = frozenset(int(tag_for_keyword(keyword) or 0) for keyword in HEADER_KEYWORDS)
_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_UID_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")


class InstanceRejected(Exception):
    """The instance is refused with ``status``; ``reason`` is safe to log."""

    def __init__(self, status: StoreStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def is_safe_uid(value: object) -> bool:
    """A UID of 1-64 characters: digits and dots, no empty or zero-padded components (PS3.5 9.1)."""
    text = "" if value is None else str(value)
    return 0 < len(text) <= 64 and bool(_UID_RE.match(text))


def inflate(raw: bytes, cap: int) -> bytes:
    """Inflate a deflated dataset (raw deflate, PS3.5 A.5), refusing to grow past ``cap`` bytes."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        data = inflater.decompress(raw, cap + 1)
    except zlib.error as exc:
        raise InstanceRejected(StoreStatus.CANNOT_UNDERSTAND_DEFLATE, f"deflate stream is corrupt: {exc}") from exc
    if len(data) > cap or inflater.unconsumed_tail:
        raise InstanceRejected(StoreStatus.OUT_OF_RESOURCES, f"inflated dataset exceeds the cap of {cap} bytes")
    if not inflater.eof:
        raise InstanceRejected(StoreStatus.CANNOT_UNDERSTAND_TRUNCATED, "deflate stream ends early")
    return data


def _expected_native_pixel_bytes(ds: Dataset | RawHeader) -> int | None:
    try:
        rows, columns, bits = int(ds.Rows), int(ds.Columns), int(ds.BitsAllocated)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
    except (AttributeError, TypeError, ValueError):
        return None
    if str(ds.get("PhotometricInterpretation", "")).strip() == "YBR_FULL_422":
        samples = 2  # chroma subsampled horizontally: Y1 Y2 Cb Cr per two pixels (PS3.3 C.7.6.3.1.2)
    return (rows * columns * frames * samples * bits + 7) // 8


@functools.lru_cache(maxsize=256)
def needs_pixel_data(sop_class_uid: str) -> bool:
    """Image storage SOP classes, whose Pixel Data is Type 1 (a dataset without it is cut or wrong)."""
    name = UID(sop_class_uid).name
    return "Image Storage" in name or name.endswith("Volume Storage")


@functools.lru_cache(maxsize=16)
def _header_tags(priority_tag: str) -> frozenset[int]:
    """The top-level tags :func:`parse_instance` keeps: the header facts and the priority element, if any."""
    if not priority_tag:
        return _HEADER_TAGS
    key = priority_key(priority_tag)
    tag = key if isinstance(key, int) else tag_for_keyword(key)
    return _HEADER_TAGS | ({int(tag)} if tag is not None else set())


def parse_instance(raw: bytes, transfer_syntax: UID, inflated_cap: int, priority_tag: str = "") -> InstanceMeta:
    """Check the received dataset is complete and read its header facts (pixel data is never read).

    ``priority_tag`` names the element whose text orders the queue (``routing.priority_tag``).
    """
    body = inflate(raw, inflated_cap) if transfer_syntax.is_deflated else raw
    try:
        walked = walk_dataset(body, transfer_syntax.is_implicit_VR, transfer_syntax.is_little_endian,
                              keep=_header_tags(priority_tag))
    except MalformedDataset as exc:
        status = StoreStatus.CANNOT_UNDERSTAND_TRUNCATED if exc.truncated else StoreStatus.CANNOT_UNDERSTAND
        raise InstanceRejected(status, exc.reason) from exc
    header = RawHeader(walked.elements)
    try:
        meta = InstanceMeta.from_dataset(header, priority_tag)
    except ValueError as exc:
        raise InstanceRejected(StoreStatus.CANNOT_UNDERSTAND_HEADER, f"header cannot be read: {exc}") from exc
    except (EOFError, KeyError, struct.error, NotImplementedError) as exc:
        raise InstanceRejected(StoreStatus.CANNOT_UNDERSTAND,
                               f"dataset cannot be parsed ({type(exc).__name__})") from exc
    if not walked.has_pixels and needs_pixel_data(meta.sop_class_uid):
        raise InstanceRejected(StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                               f"no pixel data in an instance of {UID(meta.sop_class_uid).name}")
    if walked.pixel_data_length is not None and not transfer_syntax.is_encapsulated:
        expected = _expected_native_pixel_bytes(header)
        if expected is not None and walked.pixel_data_length < expected:
            raise InstanceRejected(StoreStatus.CANNOT_UNDERSTAND_TRUNCATED,
                                   f"pixel data has {walked.pixel_data_length} bytes, the image needs {expected}")
    return meta


def validate_uids(meta: InstanceMeta, command_sop_instance: str, command_sop_class: str) -> None:
    """Dataset UIDs must be safe and match the C-STORE command (else 0xA900)."""
    for keyword, value in zip(_UID_KEYWORDS, (meta.study_uid, meta.series_uid, meta.sop_instance_uid,
                                              meta.sop_class_uid)):
        if not is_safe_uid(value):
            raise InstanceRejected(StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS, f"{keyword} is missing or unsafe")
    if meta.sop_instance_uid != str(command_sop_instance):
        raise InstanceRejected(StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                               "SOPInstanceUID differs from the command's AffectedSOPInstanceUID")
    if meta.sop_class_uid != str(command_sop_class):
        raise InstanceRejected(StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                               "SOPClassUID differs from the command's AffectedSOPClassUID")
