"""One pass over a DICOM dataset's element headers: proves it complete and indexes its top-level elements.

Both ends of the engine read DICOM headers on the hot path: the receiver for
every C-STORE (is the dataset whole, which series is it), the worker for every
instance of a job (geometry, pixels, and the source datasets the output
writers copy). pydicom's reader costs ~0.5 ms per CT header because it builds
Python objects for every element; this walk only follows the headers (a
``struct`` unpack each) and keeps the elements asked for as pydicom
:class:`~pydicom.dataelem.RawDataElement` values, which pydicom converts
lazily when an attribute is read. A :class:`~pydicom.dataset.Dataset` built from
them behaves as one from ``dcmread``.

Sequences of undefined length and encapsulated pixel data are followed item by
item to their delimiter; lengths must fit the buffer and every sequence must
close, else :class:`MalformedDataset` says where.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Container
from dataclasses import dataclass, field

from pydicom.dataelem import RawDataElement
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.tag import BaseTag
from pydicom.uid import UID

UNDEFINED_LENGTH = 0xFFFFFFFF
PIXEL_DATA = 0x7FE00010
PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, PIXEL_DATA})
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_MAX_DEPTH = 32
_VR_TEXT = {vr.encode(): vr for vr in ("AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "OB",
                                       "OD", "OF", "OL", "OV", "OW", "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM",
                                       "UC", "UI", "UL", "UN", "UR", "US", "UT", "UV")}
_PREAMBLE_END = 132  # 128-byte preamble + "DICM"


class MalformedDataset(Exception):
    """The bytes are not a whole dataset; ``truncated`` tells a cut from a malformed header."""

    def __init__(self, reason: str, *, truncated: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.truncated = truncated


@dataclass
class WalkedDataset:
    """What one walk found: the kept top-level elements and the pixel data facts."""

    elements: dict[BaseTag, RawDataElement] = field(default_factory=dict)
    has_pixels: bool = False
    pixel_data_length: int | None = None
    end: int = 0


class _Walker:
    """Follows element headers through a dataset; lengths must fit and sequences must close."""

    def __init__(self, data: bytes | memoryview, implicit: bool, little: bool, keep: Container[int] | None,
                 *, group_only: int | None = None) -> None:
        self.data = data if isinstance(data, bytes) else bytes(data)  # bytes slices are cheaper than a view's
        self.implicit = implicit
        self.little = little
        order = "<" if little else ">"
        self._tag = struct.Struct(order + "HH")
        self._tag_length = struct.Struct(order + "HHL")
        self._long = struct.Struct(order + "L")
        self._short = struct.Struct(order + "H")
        self.keep = keep
        self.group_only = group_only
        self.found = WalkedDataset()

    def _truncated(self, what: str, offset: int) -> MalformedDataset:
        return MalformedDataset(f"dataset ends inside {what} at byte {offset}", truncated=True)

    def _tag_and_length(self, pos: int) -> tuple[int, int]:
        if pos + 8 > len(self.data):
            raise self._truncated("an item header", pos)
        group, element, length = self._tag_length.unpack_from(self.data, pos)
        return (group << 16) | element, length

    def _keep(self, tag: int, vr: bytes, length: int, start: int, stop: int, implicit: bool) -> None:
        """Index one top-level element whose value is ``data[start:stop]``."""
        vr_text: str | None = (_VR_TEXT.get(vr) or vr.decode()) if vr else None
        if length == UNDEFINED_LENGTH and tag != PIXEL_DATA and (vr_text in (None, "UN", "SQ")):
            # An undefined-length UN holds an implicit VR little endian sequence (PS3.5 6.2.2); in implicit VR
            # an undefined length can only be a sequence. Its items (delimiter excluded) read as one of defined length.
            vr_text, length = "SQ", stop - start
            implicit = implicit or vr == b"UN"
        key = BaseTag(tag)
        self.found.elements[key] = RawDataElement(key, vr_text, length, self.data[start:stop], start, implicit,
                                                  self.little)

    def _element_header(self, pos: int, implicit: bool) -> tuple[bytes, int, int]:
        """The VR (empty in implicit VR), value length and value offset of the element whose tag is at ``pos``."""
        data = self.data
        if implicit:
            (length,) = self._long.unpack_from(data, pos + 4)
            return b"", length, pos + 8
        vr = data[pos + 4:pos + 6]
        if vr not in _VR_TEXT and not (vr.isalpha() and vr.isupper()):
            raise MalformedDataset(f"invalid VR at byte {pos + 4}", truncated=False)
        if vr not in _LONG_VRS:
            (length,) = self._short.unpack_from(data, pos + 6)
            return vr, length, pos + 8
        if pos + 12 > len(data):
            raise self._truncated("an element header", pos)
        (length,) = self._long.unpack_from(data, pos + 8)
        return vr, length, pos + 12

    def _value_end(self, tag: int, vr: bytes, length: int, start: int, depth: int, implicit: bool) -> tuple[int, int]:
        """Where the value starting at ``start`` ends and where the next element starts (they differ when an
        undefined length is walked to its delimiter)."""
        if length == UNDEFINED_LENGTH:
            pos = self.items(start, depth + 1, implicit=implicit or vr == b"UN")
            return pos - 8, pos  # the sequence delimiter is not part of the value
        if start + length > len(self.data):
            raise self._truncated(f"the value of {BaseTag(tag)}", start)
        return start + length, start + length

    def _top_level(self, tag: int, vr: bytes, length: int, start: int, stop: int, implicit: bool) -> None:
        """Note the pixel data facts and keep the element when it was asked for."""
        if tag in PIXEL_TAGS:
            self.found.has_pixels = True
            if tag == PIXEL_DATA:
                self.found.pixel_data_length = length
        if self.keep is None or tag in self.keep:
            self._keep(tag, vr, length, start, stop, implicit)

    def elements(self, pos: int, depth: int, in_item: bool, implicit: bool) -> int:
        """Walk elements from ``pos`` to the end (top level) or to the item delimiter; returns the end."""
        if depth > _MAX_DEPTH:
            raise MalformedDataset(f"sequences nested deeper than {_MAX_DEPTH}", truncated=False)
        data, end, unpack_tag = self.data, len(self.data), self._tag.unpack_from
        while pos < end:
            if pos + 8 > end:
                raise self._truncated("an element header", pos)
            group, element = unpack_tag(data, pos)
            if self.group_only is not None and depth == 0 and group != self.group_only:
                return pos
            tag = (group << 16) | element
            if tag == _ITEM_END and in_item:
                return pos + 8
            if group == 0xFFFE:
                raise MalformedDataset(f"unexpected delimiter {BaseTag(tag)} at byte {pos}", truncated=False)
            vr, length, start = self._element_header(pos, implicit)
            value_end, pos = self._value_end(tag, vr, length, start, depth, implicit)
            if depth == 0:
                self._top_level(tag, vr, length, start, value_end, implicit)
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
                raise MalformedDataset(f"expected an item at byte {pos - 8}", truncated=False)
            if length == UNDEFINED_LENGTH:
                pos = self.elements(pos, depth, in_item=True, implicit=implicit)
            elif pos + length > len(self.data):
                raise self._truncated("an item", pos)
            else:
                pos += length


def walk_dataset(data: bytes | memoryview, implicit: bool, little: bool,
                 keep: Container[int] | None = None, start: int = 0) -> WalkedDataset:
    """Walk the dataset in ``data[start:]``; keep the top-level elements whose tags are in ``keep`` (all when None).

    Raises :class:`MalformedDataset` when the bytes are cut or a header is wrong.
    """
    walker = _Walker(data, implicit, little, keep)
    walker.found.end = walker.elements(start, depth=0, in_item=False, implicit=implicit)
    return walker.found


@dataclass(frozen=True)
class Part10Header:
    """What a walk of a Part-10 file kept: top-level elements (all, or those asked for) and the transfer syntax."""

    elements: dict[BaseTag, RawDataElement]
    transfer_syntax: UID


@dataclass(frozen=True)
class Part10(Part10Header):
    """A Part-10 file read by :func:`read_part10`: every raw top-level element, the syntax and the dataset."""

    dataset: FileDataset


def _walk_part10(data: bytes, keep: Container[int] | None) -> tuple[WalkedDataset, WalkedDataset, UID] | None:
    """The file meta group, the dataset (elements in ``keep``, all when None) and the syntax, or None (see
    :func:`read_part10`)."""
    if len(data) < _PREAMBLE_END + 12 or data[128:132] != b"DICM":
        return None
    try:
        meta_walker = _Walker(data, implicit=False, little=True, keep=None, group_only=0x0002)
        meta_end = meta_walker.elements(_PREAMBLE_END, depth=0, in_item=False, implicit=False)
        syntax_element = meta_walker.found.elements.get(BaseTag(0x00020010))
        if syntax_element is None or not syntax_element.value:
            return None
        syntax = UID(syntax_element.value.decode("ascii", "replace").rstrip("\x00 "))
        if not syntax.is_transfer_syntax or syntax.is_deflated or not syntax.is_little_endian:
            return None
        body = walk_dataset(data, syntax.is_implicit_VR, little=True, keep=keep, start=meta_end)
    except MalformedDataset:
        return None
    return meta_walker.found, body, syntax


def read_part10_header(blob: bytes | memoryview, keep: Container[int]) -> Part10Header | None:
    """The file walked whole (so it is proven complete) keeping only the top-level elements in ``keep``;
    None where :func:`read_part10` would give None. No pydicom dataset is built."""
    walked = _walk_part10(blob if isinstance(blob, bytes) else bytes(blob), keep)
    if walked is None:
        return None
    _, body, syntax = walked
    return Part10Header(body.elements, syntax)


def read_part10(blob: bytes | memoryview) -> Part10 | None:
    """A Part-10 file as a lazily converted pydicom dataset, or None when pydicom's own reader must do it.

    Handles files with the 128-byte preamble in Implicit or Explicit VR Little
    Endian or an encapsulated (compressed) syntax; deflated and big endian
    datasets, files without a preamble and anything this walk refuses are left
    to ``pydicom.dcmread`` (None).
    """
    data = blob if isinstance(blob, bytes) else bytes(blob)
    walked = _walk_part10(data, None)
    if walked is None:
        return None
    meta, body, syntax = walked
    file_meta = FileMetaDataset(meta.elements)
    dataset = FileDataset(io.BytesIO(), dict(body.elements), preamble=data[:128], file_meta=file_meta,
                          is_implicit_VR=syntax.is_implicit_VR, is_little_endian=True)
    dataset.set_original_encoding(syntax.is_implicit_VR, True, dataset._character_set)
    return Part10(elements=body.elements, transfer_syntax=syntax, dataset=dataset)
