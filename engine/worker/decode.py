"""Decode a series' Part-10 files into a :class:`~engine.api.Volume`.

Slices are ordered along the slice normal (cross product of the orientation's
row and column directions), not by InstanceNumber, which scanners do not always
set consistently. Rescale slope/intercept is applied per frame, vectorised.
Compressed transfer syntaxes decode through pydicom's pixel handlers
(pylibjpeg / openjpeg / libjpeg plugins).

A projection radiograph (DX, CR: no ImagePositionPatient or
ImageOrientationPatient) decodes to a (1, rows, cols) volume at the origin,
its pixel size from PixelSpacing or else ImagerPixelSpacing, and its
orientation from PatientOrientation when that names two perpendicular axes
(a PA chest's ``L\\F``: along a row to the patient's left, down a column
to the feet), else the default axial orientation.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from engine.api import SeriesInfo, Volume
from engine.dicom.walk import Part10, read_part10, read_part10_header
from engine.dicom.fast_header import NATIVE_LITTLE_ENDIAN, FastInstance, fast_instance, native_pixels
from engine.dicom.sources import SOURCE_HEADER_TAGS, SourceInstances

DEFAULT_ORIENTATION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
PATIENT_DIRECTIONS = {  # PatientOrientation letters as LPS unit vectors
    "L": (1.0, 0.0, 0.0), "R": (-1.0, 0.0, 0.0), "P": (0.0, 1.0, 0.0), "A": (0.0, -1.0, 0.0),
    "H": (0.0, 0.0, 1.0), "F": (0.0, 0.0, -1.0),
}


class DecodeError(Exception):
    """A series could not be turned into a volume; the message says why (no patient data)."""


@dataclass(frozen=True)
class FrameGeometry:
    """Where one frame sits: its source, frame number, position and rescale."""

    source: int
    frame: int
    position: tuple[float, float, float]
    slope: float
    intercept: float


def read_instance(blob: bytes | memoryview, index: int = 0) -> Part10 | Dataset:
    """One Part-10 file: walked by :func:`engine.dicom.walk.read_part10`, else read by pydicom.

    Either way the dataset's values are converted on first access and its
    pixels stay encoded until asked for.
    """
    part10 = read_part10(blob)
    if part10 is not None:
        return part10
    try:
        return pydicom.dcmread(io.BytesIO(blob), force=False)
    except (InvalidDicomError, EOFError, ValueError, KeyError) as exc:
        raise DecodeError(f"instance {index} of the series is not readable DICOM: {exc}") from exc


def _dataset(read: Part10 | Dataset) -> Dataset:
    return read.dataset if isinstance(read, Part10) else read


def slice_normal(orientation: Sequence[float]) -> np.ndarray:
    """Unit normal of an ImageOrientationPatient (row direction x column direction)."""
    row, col = np.asarray(orientation[:3], dtype=float), np.asarray(orientation[3:6], dtype=float)
    normal = np.cross(row, col)
    norm = np.linalg.norm(normal)
    if norm < 1e-6:
        raise DecodeError("ImageOrientationPatient has parallel row and column directions")
    return normal / norm


def _rescale(ds: Dataset, group: Dataset | None = None) -> tuple[float, float]:
    source = ds
    if group is not None and "PixelValueTransformationSequence" in group:
        source = group.PixelValueTransformationSequence[0]
    return float(getattr(source, "RescaleSlope", 1.0) or 1.0), float(getattr(source, "RescaleIntercept", 0.0) or 0.0)


def _frame_geometry(datasets: Sequence[Dataset]) -> tuple[list[FrameGeometry], tuple[float, ...], tuple[float, float]]:
    """Every frame's geometry, plus the series' orientation and in-plane spacing."""
    frames: list[FrameGeometry] = []
    orientation: tuple[float, ...] | None = None
    pixel_spacing: tuple[float, float] | None = None
    for index, ds in enumerate(datasets):
        count = int(getattr(ds, "NumberOfFrames", 1) or 1)
        shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else None
        per_frame = ds.PerFrameFunctionalGroupsSequence if "PerFrameFunctionalGroupsSequence" in ds else None
        for frame in range(1, count + 1):
            group = per_frame[frame - 1] if per_frame is not None else None
            position, frame_orientation, spacing = _plane(ds, group, shared)
            orientation = orientation or frame_orientation
            pixel_spacing = pixel_spacing or spacing
            slope, intercept = _rescale(ds, group if group is not None and "PixelValueTransformationSequence" in group else shared)
            frames.append(FrameGeometry(index, frame, position, slope, intercept))
    orientation = orientation or projection_orientation(datasets[0]) or DEFAULT_ORIENTATION
    return frames, orientation, pixel_spacing or (1.0, 1.0)


def projection_orientation(ds: Dataset) -> tuple[float, ...] | None:
    """Direction cosines from a projection image's PatientOrientation (``L\\F`` -> (1, 0, 0, 0, 0, -1)).

    Only two single-letter, perpendicular directions are used; oblique values
    such as ``LP`` and anything malformed give None.
    """
    value = getattr(ds, "PatientOrientation", None)
    letters = [str(v).strip().upper() for v in value] if value is not None and not isinstance(value, str) else []
    if len(letters) != 2 or not all(letter in PATIENT_DIRECTIONS for letter in letters):
        return None
    row, col = PATIENT_DIRECTIONS[letters[0]], PATIENT_DIRECTIONS[letters[1]]
    if abs(float(np.dot(row, col))) > 1e-6:
        return None
    return (*row, *col)


def _plane(
    ds: Dataset, group: Dataset | None, shared: Dataset | None
) -> tuple[tuple[float, float, float], tuple[float, ...] | None, tuple[float, float] | None]:
    def find(sequence: str, attribute: str):  # per-frame, then shared, then top level
        for holder in (group, shared):
            if holder is not None and sequence in holder and attribute in holder[sequence].value[0]:
                return holder[sequence].value[0][attribute].value
        return getattr(ds, attribute, None)

    position = find("PlanePositionSequence", "ImagePositionPatient")
    orientation = find("PlaneOrientationSequence", "ImageOrientationPatient")
    spacing = find("PixelMeasuresSequence", "PixelSpacing")
    if spacing is None:  # a projection radiograph may give only the detector's spacing
        spacing = getattr(ds, "ImagerPixelSpacing", None)
    return (
        tuple(float(v) for v in position) if position is not None else (0.0, 0.0, 0.0),
        tuple(float(v) for v in orientation) if orientation is not None else None,
        (float(spacing[0]), float(spacing[1])) if spacing is not None else None,
    )


def _native_pixels(ds: Dataset, frames: int) -> np.ndarray | None:
    """Uncompressed little-endian 8/16-bit grayscale read straight from the bytes (no copy); None otherwise.

    About 20x faster than pydicom's pixel handler for a CT slice (see
    :func:`engine.dicom.fast_header.native_pixels` for what qualifies).
    """
    meta = getattr(ds, "file_meta", None)
    syntax = getattr(meta, "TransferSyntaxUID", None)
    if syntax not in NATIVE_LITTLE_ENDIAN or "PixelData" not in ds:
        return None
    bits, stored = int(getattr(ds, "BitsAllocated", 0)), int(getattr(ds, "BitsStored", 0))
    signed = int(getattr(ds, "PixelRepresentation", 0)) == 1
    try:
        return native_pixels(ds.PixelData, frames, int(ds.Rows), int(ds.Columns), bits, stored, signed)
    except ValueError as exc:
        raise DecodeError(str(exc)) from exc


def _pixels(ds: Dataset, index: int) -> np.ndarray:
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if getattr(ds, "SamplesPerPixel", 1) != 1:
        raise DecodeError(f"instance {index}: only single-sample (grayscale) images are supported")
    try:
        native = _native_pixels(ds, frames)
    except DecodeError as exc:
        raise DecodeError(f"instance {index}: {exc}") from exc
    if native is not None:
        return native
    try:
        array = ds.pixel_array
    except (ValueError, RuntimeError, NotImplementedError, AttributeError) as exc:
        raise DecodeError(f"instance {index}: pixel data cannot be decoded ({type(exc).__name__}: {exc})") from exc
    return array.reshape(frames, int(ds.Rows), int(ds.Columns))


@dataclass(frozen=True)
class _SeriesGeometry:
    """Every frame's geometry, the series' orientation and in-plane spacing, and pixels already read (if any)."""

    frames: list[FrameGeometry]
    orientation: tuple[float, ...]
    row_col_mm: tuple[float, float]
    shapes: set[tuple[int, int]]
    pixels: list[np.ndarray]


def _fast_geometry(datasets: Sequence[Dataset], instances: Sequence[FastInstance]) -> _SeriesGeometry:
    """The geometry from header facts already read off the raw elements, with their pixels."""
    frames = [FrameGeometry(i, 1, item.position, item.slope, item.intercept) for i, item in enumerate(instances)]
    orientation = next((item.orientation for item in instances if item.orientation), None)
    orientation = orientation or projection_orientation(datasets[0]) or DEFAULT_ORIENTATION
    row_col_mm = next((item.spacing for item in instances if item.spacing), None) or (1.0, 1.0)
    return _SeriesGeometry(frames, tuple(orientation), row_col_mm, {item.pixels.shape[1:] for item in instances},
                           [item.pixels for item in instances])


def _dataset_geometry(datasets: Sequence[Dataset]) -> _SeriesGeometry:
    """The geometry read through pydicom (multi-frame, functional groups, projections); pixels not yet read."""
    frames, orientation, row_col_mm = _frame_geometry(datasets)
    return _SeriesGeometry(frames, tuple(orientation), row_col_mm,
                           {(int(ds.Rows), int(ds.Columns)) for ds in datasets}, [])


def _stack_in_order(pixels: list[np.ndarray], frames: list[FrameGeometry],
                    order: np.ndarray) -> tuple[np.ndarray, float, float]:
    """The frames stacked in ``order`` with one copy, and the one rescale that holds for all of them.

    When slices are rescaled differently the stack holds physical values (float32, slope 1, intercept 0).
    """
    in_source_order = [frame for array in pixels for frame in array]  # views, no copy
    raw = np.stack([in_source_order[i] for i in order])
    rescales = {(frames[i].slope, frames[i].intercept) for i in order}
    if len(rescales) == 1:
        slope, intercept = rescales.pop()
        return raw, slope, intercept
    slopes = np.array([frames[i].slope for i in order], dtype=np.float32)[:, None, None]
    intercepts = np.array([frames[i].intercept for i in order], dtype=np.float32)[:, None, None]
    return raw.astype(np.float32) * slopes + intercepts, 1.0, 0.0


def _slice_spacing(sorted_distances: np.ndarray, datasets: Sequence[Dataset]) -> float:
    """The median gap between slices along the normal; a single slice's SliceThickness (else 1 mm).

    The first dataset is read only for a single slice (sources may be built on first use).
    """
    if len(sorted_distances) > 1:
        return abs(float(np.median(np.diff(sorted_distances)))) or 1.0
    return abs(float(getattr(datasets[0], "SliceThickness", 1.0) or 1.0)) or 1.0


def build_volume(datasets: Sequence[Dataset], series: SeriesInfo,
                 fast: Sequence[FastInstance | None] = ()) -> Volume:
    """Stack all frames ordered along the slice normal, keeping the stored type when one rescale fits all.

    ``fast`` holds, per dataset, its header facts and pixels read straight from
    the raw elements (:func:`fast_instance`); without them (or for an instance
    whose entry is None) everything is read through pydicom.
    """
    if fast and all(item is not None for item in fast):
        geometry = _fast_geometry(datasets, fast)  # type: ignore[arg-type]
    else:
        geometry = _dataset_geometry(datasets)
    if len(geometry.shapes) != 1:
        raise DecodeError(f"frames of different sizes in one series: {sorted(geometry.shapes)}")
    normal = slice_normal(geometry.orientation)
    distances = np.array([np.dot(f.position, normal) for f in geometry.frames])
    order = np.argsort(distances, kind="stable")
    pixels = geometry.pixels or [_pixels(ds, i) for i, ds in enumerate(datasets)]
    stored, slope, intercept = _stack_in_order(pixels, geometry.frames, order)
    frames = geometry.frames
    return Volume(
        stored=stored,
        spacing=(_slice_spacing(distances[order], datasets), *geometry.row_col_mm),
        origin=frames[order[0]].position,
        orientation=geometry.orientation,
        sources=datasets if isinstance(datasets, SourceInstances) else list(datasets),
        frames=[(frames[i].source, frames[i].frame) for i in order],
        series=series,
        slope=float(slope),
        intercept=float(intercept),
    )


def decode_series(payload: Sequence[bytes | memoryview], series: SeriesInfo) -> Volume:
    """Parse and stack a series in one call (header facts from the raw elements where the files allow).

    When every instance is a single native grayscale frame the volume's sources
    are :class:`~engine.dicom.sources.SourceInstances` (datasets built when a
    writer asks); otherwise every instance is read into a dataset now.
    """
    headers = [read_part10_header(blob, SOURCE_HEADER_TAGS) for blob in payload]
    if headers and all(header is not None for header in headers):
        fast = [fast_instance(header) for header in headers]  # type: ignore[arg-type]
        if all(item is not None for item in fast):
            sources = SourceInstances(payload, [header.elements for header in headers])  # type: ignore[union-attr]
            return build_volume(sources, series, fast)
    read = [read_instance(blob, index) for index, blob in enumerate(payload)]
    if not read:
        raise DecodeError("the series has no instances")
    fast = [fast_instance(item) if isinstance(item, Part10) else None for item in read]
    return build_volume([_dataset(item) for item in read], series, fast)
