"""Values of raw DICOM elements read without pydicom, for the plain cases; pydicom for everything else.

Converting an element through pydicom (keyword lookup, value conversion,
validation) costs tens of microseconds; the receiver reads ~15 values of every
instance it stores and the worker a dozen of every instance it decodes. Most
are plain: ASCII text without backslashes or control characters (so no
character set question), a decimal or integer string, or one unsigned short.
Those are read here with exactly pydicom's result (text loses trailing spaces
and NULs, as pydicom strips them); anything else is :data:`NOT_PLAIN` and the
caller asks pydicom. :class:`RawHeader` wraps that as the small part of the
:class:`~pydicom.dataset.Dataset` interface the receiver's header facts use.
"""

from __future__ import annotations

import functools
import re
import struct
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

NOT_PLAIN: Any = object()  # "ask pydicom"
TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "LO", "SH", "TM", "UC", "UI"})
_INTEGER = re.compile(r"^\s*[+-]?\d+\s*$")
_DECIMAL = re.compile(r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$")


@functools.lru_cache(maxsize=1024)
def element_vr(tag: int) -> str:
    """The dictionary VR of a tag (for implicit VR data), "" when unknown or ambiguous."""
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return ""
    return vr if len(vr) == 2 else ""


def _plain_ascii(value: bytes) -> str | None:
    """The value as text when it is printable ASCII without backslashes (one value, no escapes)."""
    if not value.isascii() or b"\\" in value or any(byte < 0x20 for byte in value.rstrip(b"\x00")):
        return None
    return value.decode("ascii")


def plain_value(raw: RawDataElement) -> Any:
    """The element's value as pydicom would give it, or :data:`NOT_PLAIN` (see the module doc)."""
    vr = raw.VR or element_vr(int(raw.tag))
    value = raw.value if raw.value is not None else b""
    if vr == "US":
        if len(value) != 2:
            return NOT_PLAIN
        return struct.unpack("<H" if raw.is_little_endian else ">H", value)[0]
    if vr in TEXT_VRS:
        text = _plain_ascii(value)
        return NOT_PLAIN if text is None else text.rstrip("\x00 ")
    if vr == "IS":
        text = _plain_ascii(value)
        if text is None or (text.strip() and not _INTEGER.match(text)):
            return NOT_PLAIN
        return int(text) if text.strip() else None  # pydicom reads an empty number as None
    if vr == "DS":
        if not value.isascii():
            return NOT_PLAIN
        text = value.decode("ascii").rstrip("\x00 ")
        if not text.strip():
            return None
        parts = text.split("\\")
        if not all(_DECIMAL.match(part) for part in parts):
            return NOT_PLAIN
        numbers = [float(part) for part in parts]
        return numbers[0] if len(numbers) == 1 else numbers
    return NOT_PLAIN


class RawHeader:
    """``get(keyword or tag)`` and attribute access over raw elements: plain values read here, the rest by pydicom.

    A value that pydicom would give as a DataElement for an integer key is given
    as its value when plain (callers read ``getattr(element, "value", element)``).
    """

    def __init__(self, elements: dict[BaseTag, RawDataElement]) -> None:
        self._elements = elements
        self._dataset: Dataset | None = None

    def _pydicom(self) -> Dataset:
        if self._dataset is None:
            self._dataset = Dataset(dict(self._elements))
        return self._dataset

    def get(self, key: str | int, default: Any = None) -> Any:
        """The value for a keyword (or the element or value for a tag), ``default`` when absent."""
        tag = tag_for_keyword(key) if isinstance(key, str) else int(key)
        raw = self._elements.get(BaseTag(tag)) if tag is not None else None
        if raw is None:
            return default
        value = plain_value(raw)
        return self._pydicom().get(key, default) if value is NOT_PLAIN else value

    def __contains__(self, key: str | int) -> bool:
        tag = tag_for_keyword(key) if isinstance(key, str) else int(key)
        return tag is not None and BaseTag(tag) in self._elements

    def __getattr__(self, keyword: str) -> Any:
        if keyword.startswith("_") or keyword not in self:
            raise AttributeError(keyword)
        return self.get(keyword)
