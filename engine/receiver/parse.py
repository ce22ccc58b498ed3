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
import io
import re
import struct
import zlib

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag
from pydicom.uid import UID

from engine.receiver.ledger import InstanceMeta
from engine.receiver.statuses import StoreStatus

UNDEFINED_LENGTH = 0xFFFFFFFF
PIXEL_DATA = 0x7FE00010
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, PIXEL_DATA})
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_MAX_DEPTH = 32
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


class _Walker:
    """Follows element headers through a dataset; lengths must fit and sequences must close."""

    def __init__(self, data: bytes, implicit: bool, little: bool) -> None:
        self.data = memoryview(data)
        self.implicit = implicit
        self.order = "<" if little else ">"
        self.pixel_data_length: int | None = None
        self.has_pixels = False

    def _truncated(self, what: str, offset: int) -> InstanceRejected:
        return InstanceRejected(StoreStatus.CANNOT_UNDERSTAND_TRUNCATED, f"dataset ends inside {what} at byte {offset}")

    def _tag_and_length(self, pos: int) -> tuple[int, int]:
        if pos + 8 > len(self.data):
            raise self._truncated("an item header", pos)
        group, element, length = struct.unpack_from(self.order + "HHL", self.data, pos)
        return (group << 16) | element, length

    def elements(self, pos: int, depth: int, in_item: bool, implicit: bool) -> int:
        """Walk elements from ``pos`` to the end (top level) or to the item delimiter; returns the end."""
        if depth > _MAX_DEPTH:
            raise InstanceRejected(StoreStatus.CANNOT_UNDERSTAND, f"sequences nested deeper than {_MAX_DEPTH}")
        end = len(self.data)
        while pos < end:
            if pos + 8 > end:
                raise self._truncated("an element header", pos)
            group, element = struct.unpack_from(self.order + "HH", self.data, pos)
            tag = (group << 16) | element
            if tag == _ITEM_END and in_item:
                return pos + 8
            if group == 0xFFFE:
                raise InstanceRejected(StoreStatus.CANNOT_UNDERSTAND,
                                       f"unexpected delimiter {BaseTag(tag)} at byte {pos}")
            vr = b""
            if implicit:
                (length,) = struct.unpack_from(self.order + "L", self.data, pos + 4)
                pos += 8
            else:
                vr = bytes(self.data[pos + 4:pos + 6])
                if not (vr.isalpha() and vr.isupper()):
                    raise InstanceRejected(StoreStatus.CANNOT_UNDERSTAND, f"invalid VR at byte {pos + 4}")
                if vr in _LONG_VRS:
                    if pos + 12 > end:
                        raise self._truncated("an element header", pos)
                    (length,) = struct.unpack_from(self.order + "L", self.data, pos + 8)
                    pos += 12
                else:
                    (length,) = struct.unpack_from(self.order + "H", self.data, pos + 6)
                    pos += 8
            if depth == 0 and tag in _PIXEL_TAGS:
                self.has_pixels = True
                if tag == PIXEL_DATA:
                    self.pixel_data_length = length
            if length == UNDEFINED_LENGTH:
                # An undefined-length UN holds an implicit VR little endian sequence (PS3.5 6.2.2).
                pos = self.items(pos, depth + 1, implicit=implicit or vr == b"UN")
            elif pos + length > end:
                raise self._truncated(f"the value of {BaseTag(tag)}", pos)
            else:
                pos += length
        if in_item:
            raise self._truncated("an item without its delimiter", pos)
        return pos

    def items(self, pos: int, depth: int, implicit: bool) -> int:
        """Walk the items of an undefined-length sequence (or encapsulated pixel data) to its delimiter."""
        while True:
            tag, length = self._tag_and_length(pos)
            pos += 8
            if tag == _SEQUENCE_END:
                return pos
            if tag != _ITEM:
                raise InstanceRejected(StoreStatus.CANNOT_UNDERSTAND, f"expected an item at byte {pos - 8}")
            if length == UNDEFINED_LENGTH:
                pos = self.elements(pos, depth, in_item=True, implicit=implicit)
            elif pos + length > len(self.data):
                raise self._truncated("an item", pos)
            else:
                pos += length


def _expected_native_pixel_bytes(ds: Dataset) -> int | None:
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


def _stop_at_pixels(tag: BaseTag, vr: str | None, length: int) -> bool:
    return int(tag) in _PIXEL_TAGS


def parse_instance(raw: bytes, transfer_syntax: UID, inflated_cap: int, priority_tag: str = "") -> InstanceMeta:
    """Check the received dataset is complete and read its header facts (pixel data is never read).

    ``priority_tag`` names the element whose text orders the queue (``routing.priority_tag``).
    """
    body = inflate(raw, inflated_cap) if transfer_syntax.is_deflated else raw
    implicit, little = transfer_syntax.is_implicit_VR, transfer_syntax.is_little_endian
    walker = _Walker(body, implicit, little)
    walker.elements(0, depth=0, in_item=False, implicit=implicit)
    try:
        header = read_dataset(io.BytesIO(body), implicit, little, stop_when=_stop_at_pixels)
        meta = InstanceMeta.from_dataset(header, priority_tag)
    except ValueError as exc:
        raise InstanceRejected(StoreStatus.CANNOT_UNDERSTAND_HEADER, f"header cannot be read: {exc}") from exc
    except (EOFError, KeyError, struct.error, NotImplementedError) as exc:
        raise InstanceRejected(StoreStatus.CANNOT_UNDERSTAND,
                               f"dataset cannot be parsed ({type(exc).__name__})") from exc
    if not walker.has_pixels and needs_pixel_data(meta.sop_class_uid):
        raise InstanceRejected(StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                               f"no pixel data in an instance of {UID(meta.sop_class_uid).name}")
    if walker.pixel_data_length is not None and not transfer_syntax.is_encapsulated:
        expected = _expected_native_pixel_bytes(header)
        if expected is not None and walker.pixel_data_length < expected:
            raise InstanceRejected(StoreStatus.CANNOT_UNDERSTAND_TRUNCATED,
                                   f"pixel data has {walker.pixel_data_length} bytes, the image needs {expected}")
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
