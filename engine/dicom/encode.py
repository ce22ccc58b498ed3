"""Explicit VR little endian elements written straight to bytes, and Part-10 files that splice them in.

For the places where building and encoding a pydicom dataset element by
element costs more than the work itself: the file meta group of every received
instance, and the per-source reference lists of a result object (one item per
source instance: hundreds for a long series, each a few bytes, each ~0.2 ms
through pydicom's dataset and writer).
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterable, Mapping

from pydicom.charset import default_encoding
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import dcmwrite, write_dataset
from pydicom.uid import ExplicitVRLittleEndian

LONG_LENGTH_VRS = frozenset((b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT",
                             b"UV"))
ITEM_TAG = struct.pack("<HH", 0xFFFE, 0xE000)


def element(tag: int, vr: bytes, value: bytes) -> bytes:
    """One element: tag, VR, 16- or 32-bit length (by VR) and ``value`` (already padded to even length)."""
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    if vr in LONG_LENGTH_VRS:
        return head + vr + b"\x00\x00" + struct.pack("<L", len(value)) + value
    return head + vr + struct.pack("<H", len(value)) + value


def padded(text: str, pad: bytes) -> bytes:
    """ASCII ``text`` padded to even length (NUL for UI, space for the text VRs)."""
    data = text.encode("ascii")
    return data + pad if len(data) % 2 else data


def uid_element(tag: int, uid: str) -> bytes:
    """A UI element."""
    return element(tag, b"UI", padded(uid, b"\x00"))


def item(encoded_elements: Iterable[bytes]) -> bytes:
    """One sequence item of defined length holding ``encoded_elements`` (given in ascending tag order)."""
    body = b"".join(encoded_elements)
    return ITEM_TAG + struct.pack("<L", len(body)) + body


def sequence(tag: int, items: Iterable[bytes]) -> bytes:
    """An SQ element of defined length holding the encoded ``items``: how pydicom writes a sequence."""
    return element(tag, b"SQ", b"".join(items))


def part10_with_elements(dataset: Dataset, encoded: Mapping[int, bytes]) -> bytes:
    """``dataset`` as a Part-10 file (what ``save_as(enforce_file_format=True)`` writes) with the
    pre-encoded top-level ``encoded`` elements (tag -> element bytes) spliced in, in tag order.

    ``dataset`` must be explicit VR little endian and must not hold the spliced tags.
    Text in the pieces after the first is encoded with the dataset's character set.
    """
    if dataset.file_meta.get("TransferSyntaxUID") != ExplicitVRLittleEndian:
        raise ValueError("splicing pre-encoded elements needs Explicit VR Little Endian")
    clash = [f"{tag:08X}" for tag in encoded if tag in dataset]
    if clash:
        raise ValueError(f"the dataset already holds the spliced element(s) {', '.join(clash)}")
    tags = sorted(encoded)
    starts, stops = [None, *(tag + 1 for tag in tags)], [*tags, None]  # piece i: [starts[i], stops[i])
    head = dataset[starts[0]:stops[0]]
    head.file_meta = dataset.file_meta
    head.preamble = getattr(dataset, "preamble", None)
    out = io.BytesIO()
    dcmwrite(out, head, enforce_file_format=True)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    charset = dataset.get("SpecificCharacterSet", default_encoding)
    for index, tag in enumerate(tags):
        body.write(encoded[tag])
        write_dataset(body, dataset[starts[index + 1]:stops[index + 1]], parent_encoding=charset)
    return out.getvalue() + body.getvalue()
