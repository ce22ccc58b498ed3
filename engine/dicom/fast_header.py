"""A single-frame image's geometry, rescale and native pixels read straight from its raw elements.

Reading a dozen attributes through pydicom costs ~0.6 ms per CT slice
(keyword lookup, value conversion and validation each time); the worker does
it for every instance of every job. For the common case, one uncompressed
little-endian grayscale frame per instance, the values are parsed here from
the bytes :func:`engine.dicom.walk.read_part10` indexed, in microseconds.
Anything else (multi-frame and enhanced images, compressed or colour pixels,
signed values with unused high bits, a value that does not parse) gives None
and the caller reads the instance through pydicom, which also words the errors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom.dataelem import RawDataElement
from pydicom.tag import BaseTag
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from engine.dicom.values import NOT_PLAIN, plain_value
from engine.dicom.walk import PIXEL_DATA, Part10Header

NATIVE_LITTLE_ENDIAN = frozenset({ImplicitVRLittleEndian, ExplicitVRLittleEndian})
ROWS, COLUMNS, SAMPLES = BaseTag(0x00280010), BaseTag(0x00280011), BaseTag(0x00280002)
BITS_ALLOCATED, BITS_STORED, PIXEL_REPRESENTATION = BaseTag(0x00280100), BaseTag(0x00280101), BaseTag(0x00280103)
NUMBER_OF_FRAMES = BaseTag(0x00280008)
POSITION, ORIENTATION = BaseTag(0x00200032), BaseTag(0x00200037)
PIXEL_SPACING, IMAGER_PIXEL_SPACING = BaseTag(0x00280030), BaseTag(0x00181164)
SLOPE, INTERCEPT = BaseTag(0x00281053), BaseTag(0x00281052)
FUNCTIONAL_GROUPS = (BaseTag(0x52009229), BaseTag(0x52009230))  # shared, per-frame
# Every element :func:`fast_instance` reads: a walk that keeps these is enough for it.
FAST_HEADER_TAGS = frozenset({ROWS, COLUMNS, SAMPLES, BITS_ALLOCATED, BITS_STORED, PIXEL_REPRESENTATION,
                              NUMBER_OF_FRAMES, POSITION, ORIENTATION, PIXEL_SPACING, IMAGER_PIXEL_SPACING, SLOPE,
                              INTERCEPT, *FUNCTIONAL_GROUPS, BaseTag(PIXEL_DATA)})


@dataclass(frozen=True)
class FastInstance:
    """What the volume needs of one single-frame instance."""

    position: tuple[float, float, float]
    orientation: tuple[float, ...] | None
    spacing: tuple[float, float] | None
    slope: float
    intercept: float
    pixels: np.ndarray  # (1, rows, columns) in the stored type


def native_pixels(data: bytes | memoryview, frames: int, rows: int, columns: int, bits: int, stored: int,
                  signed: bool) -> np.ndarray | None:
    """Uncompressed little-endian 8/16-bit grayscale values as (frames, rows, columns), no copy; None if not that.

    Unsigned values with unused high bits are masked; signed values with unused
    bits (which need sign extension) give None. Raises ValueError when the
    pixel data is shorter than the image.
    """
    if bits not in (8, 16) or (signed and stored != bits):
        return None
    dtype = np.dtype(f"<{'i' if signed else 'u'}{bits // 8}")
    count = frames * rows * columns
    if len(data) < count * dtype.itemsize:
        raise ValueError(f"pixel data holds {len(data)} bytes, {count * dtype.itemsize} expected")
    array = np.frombuffer(data, dtype=dtype, count=count).astype(dtype.newbyteorder("="), copy=False)
    if not signed and stored < bits:
        array = array & np.array((1 << stored) - 1, dtype=array.dtype)
    return array.reshape(frames, rows, columns)


def _unsigned(elements: dict[BaseTag, RawDataElement], tag: BaseTag, default: int | None = None) -> int | None:
    raw = elements.get(tag)
    if raw is None or not raw.value:
        return default
    value = plain_value(raw)
    if not isinstance(value, int):
        raise ValueError(f"{tag} is not one unsigned value")
    return value


def _decimals(elements: dict[BaseTag, RawDataElement], tag: BaseTag, count: int) -> tuple[float, ...] | None:
    raw = elements.get(tag)
    if raw is None:
        return None
    value = plain_value(raw)
    if value is NOT_PLAIN:
        raise ValueError(f"{tag} is not plain")
    if value is None or value == "":
        return None
    values = tuple(float(v) for v in (value if isinstance(value, list) else [value]))
    if len(values) != count:
        raise ValueError(f"{tag} has {len(values)} values, {count} expected")
    return values


def fast_instance(part10: Part10Header) -> FastInstance | None:
    """The instance's facts from its raw elements, or None when it must go through pydicom (see module doc)."""
    elements = part10.elements
    if part10.transfer_syntax not in NATIVE_LITTLE_ENDIAN or any(tag in elements for tag in FUNCTIONAL_GROUPS):
        return None
    try:
        frames = _decimals(elements, NUMBER_OF_FRAMES, 1)
        if frames is not None and frames != (1.0,):
            return None
        if _unsigned(elements, SAMPLES, 1) != 1:
            return None
        rows, columns, bits = (_unsigned(elements, tag) for tag in (ROWS, COLUMNS, BITS_ALLOCATED))
        pixel_data = elements.get(BaseTag(PIXEL_DATA))
        if rows is None or columns is None or bits is None or pixel_data is None or pixel_data.value is None:
            return None
        stored = _unsigned(elements, BITS_STORED, bits) or bits
        signed = _unsigned(elements, PIXEL_REPRESENTATION, 0) == 1
        pixels = native_pixels(pixel_data.value, 1, rows, columns, bits, stored, signed)
        if pixels is None:
            return None
        position = _decimals(elements, POSITION, 3) or (0.0, 0.0, 0.0)
        spacing = _decimals(elements, PIXEL_SPACING, 2) or _decimals(elements, IMAGER_PIXEL_SPACING, 2)
        slope = (_decimals(elements, SLOPE, 1) or (1.0,))[0] or 1.0
        intercept = (_decimals(elements, INTERCEPT, 1) or (0.0,))[0] or 0.0
        return FastInstance(position=position, orientation=_decimals(elements, ORIENTATION, 6),  # type: ignore[arg-type]
                            spacing=spacing, slope=slope, intercept=intercept, pixels=pixels)  # type: ignore[arg-type]
    except ValueError:
        return None
