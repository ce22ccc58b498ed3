"""A derived image series (one instance per source slice) from ``ModelResult.derived_voxels``.

For reconstruction models (denoising, ...): each derived instance is a copy of
its source slice's header (same SOP class, patient, study, frame of reference
and geometry) with new pixel data, new UIDs derived from the source series, the
model and its version (so a re-run replaces the same instances), and the
derivation stated: ImageType DERIVED\\SECONDARY, Derivation Description and
Code, and a Source Image Sequence pointing at the source instance.

Derivation code: CID 7203 "Image Derivation" (extensible) has no concept for
noise reduction; DCM 113087 "Smoothing" is its member for processing that
reduces noise in the pixel values while keeping the pixel grid. DCM 113085
"Spatial resampling" would be wrong (the grid is unchanged) and DCM 113088
"Gaussian blur" names one specific filter. A writer for another kind of
reconstruction takes its own code (``DerivedSeriesWriter(derivation_code=...)``).
"""

from __future__ import annotations

import copy
import datetime
import io

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.coding import Code
from pydicom.sr.codedict import codes
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian

from engine import __version__
from engine.api import Artifact, ModelResult, ModelSpec, PluginError, SeriesInfo, Volume
from engine.logs import get_logger
from engine.outputs.uids import result_series_number, result_uid

log = get_logger(__name__)

DEFAULT_DERIVATION_CODE = codes.DCM.Smoothing
SOURCE_PURPOSE = codes.DCM.SourceImageForImageProcessingOperation  # CID 7202
# Header values of the source that would be wrong for the derived pixels or equipment, or that we set anew.
_DROPPED = frozenset(Tag(keyword) for keyword in (
    "PixelData", "FloatPixelData", "DoubleFloatPixelData", "ExtendedOffsetTable", "ExtendedOffsetTableLengths",
    "SmallestImagePixelValue", "LargestImagePixelValue", "SmallestPixelValueInSeries",
    "LargestPixelValueInSeries", "PixelPaddingValue", "PixelPaddingRangeLimit", "IconImageSequence",
    "SourceImageSequence", "DerivationCodeSequence", "DerivationDescription", "DigitalSignaturesSequence",
    "MACParametersSequence", "EncryptedAttributesSequence", "OriginalAttributesSequence", "StationName",
    "DeviceSerialNumber", "DeviceUID", "DataSetTrailingPadding",
))


def stored_range(ds: Dataset) -> tuple[int, int]:
    """The smallest and largest stored value ``ds``'s BitsStored and PixelRepresentation allow."""
    bits = int(ds.BitsStored)
    if int(getattr(ds, "PixelRepresentation", 0)) == 1:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def fit_rescale(values: np.ndarray, slope: float, intercept: float, low: int, high: int) -> tuple[float, float]:
    """(slope, intercept) that map ``values`` into stored [low, high]: the source's own when they fit.

    Otherwise a new pair: the slope grows only when the values span more than
    the stored range allows, and the intercept is a whole number at or below
    the smallest value; both are exact as written (DS, at most 16 characters).
    """
    smallest, largest = float(values.min()), float(values.max())
    if (smallest - intercept) / slope >= low - 0.5 and (largest - intercept) / slope <= high + 0.5:
        return slope, intercept
    span = max(largest - smallest, 1e-6)
    if span / slope > high - low - 2:  # two values of headroom for the rounding below
        slope = float(f"{span / (high - low - 2):.6g}")
        while span / slope > high - low - 1:
            slope = float(f"{slope * 1.000001:.6g}")
    intercept = float(np.floor(smallest - low * slope))
    return slope, intercept


def _header_copy(source: Dataset) -> Dataset:
    """A deep copy of ``source`` without pixel data, private tags or the values :data:`_DROPPED` lists."""
    ds = Dataset()
    for element in source:
        if element.tag.is_private or element.tag in _DROPPED:
            continue
        ds.add(copy.deepcopy(element))
    return ds


def _code_item(code: Code) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code.value, code.scheme_designator, code.meaning
    return item


class DerivedSeriesWriter:
    """Writes ``derived-0001.dcm``... (one per slice, in slice order) from ``result.derived_voxels``.

    Nothing when the result has no derived voxels. Pixel values are stored with
    the source slice's rescale, rounded; a slice whose values the source's
    stored range cannot hold gets its own Rescale Slope/Intercept instead
    (:func:`fit_rescale`), so nothing is clipped.
    """

    def __init__(self, derivation_code: Code = DEFAULT_DERIVATION_CODE) -> None:
        self._derivation_code = derivation_code

    def write(self, result: ModelResult, volume: Volume, spec: ModelSpec) -> list[Artifact]:
        if result.derived_voxels is None:
            return []
        derived = np.asarray(result.derived_voxels)
        where = f"model {spec.name!r}"
        if derived.shape != volume.shape:
            raise PluginError(f"{where}: derived_voxels shape {derived.shape} != volume {volume.shape}")
        if not np.isfinite(derived).all():
            raise PluginError(f"{where}: derived_voxels holds NaN or infinite values")
        if not volume.sources or any(frame != 1 for _, frame in volume.frames) or any(
                int(getattr(ds, "NumberOfFrames", 1) or 1) != 1 for ds in volume.sources):
            raise PluginError(f"{where}: a derived series needs single-frame source instances")
        series_uid = result_uid(volume.series, spec, "derived-series")
        now = datetime.datetime.now()
        artifacts = []
        rescaled = 0
        for index, (source_index, _) in enumerate(volume.frames):
            ds, own_rescale = self._instance(volume.sources[source_index], derived[index], index, series_uid, spec,
                                             volume.series, now)
            rescaled += own_rescale
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            artifacts.append(Artifact(name=f"derived-{index + 1:04d}.dcm", data=buffer.getvalue(),
                                      media_type="application/dicom"))
        log.info("derived_series.written", model=spec.name, instances=len(artifacts), rescaled_slices=rescaled)
        return artifacts

    def _instance(self, source: Dataset, values: np.ndarray, index: int, series_uid: str, spec: ModelSpec,
                  source_series: SeriesInfo, now: datetime.datetime) -> tuple[Dataset, bool]:
        """One derived instance and whether it needed a rescale of its own."""
        for keyword in ("SOPInstanceUID", "SOPClassUID", "Rows", "Columns", "BitsAllocated", "BitsStored"):
            if keyword not in source:
                raise PluginError(f"model {spec.name!r}: source instance {index} has no {keyword}")
        bits = int(source.BitsAllocated)
        if bits not in (8, 16, 32) or (int(source.Rows), int(source.Columns)) != values.shape:
            raise PluginError(f"model {spec.name!r}: source instance {index} has {bits}-bit "
                              f"{source.Rows}x{source.Columns} pixels, derived slice is {values.shape}")
        ds = _header_copy(source)
        slope = float(getattr(source, "RescaleSlope", 1.0) or 1.0)
        intercept = float(getattr(source, "RescaleIntercept", 0.0) or 0.0)
        low, high = stored_range(source)
        new_slope, new_intercept = fit_rescale(values, slope, intercept, low, high)
        own_rescale = (new_slope, new_intercept) != (slope, intercept)
        signed = int(getattr(source, "PixelRepresentation", 0)) == 1
        stored = np.clip(np.rint((values.astype(np.float64) - new_intercept) / new_slope), low, high)
        ds.PixelData = stored.astype(f"<{'i' if signed else 'u'}{bits // 8}").tobytes()
        if own_rescale:  # otherwise the source's own values, as copied
            ds.RescaleSlope, ds.RescaleIntercept = new_slope, new_intercept

        ds.SOPInstanceUID = result_uid(source_series, spec, f"derived-{source.SOPInstanceUID}")
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = result_series_number(spec.name, "derived")
        ds.InstanceNumber = index + 1
        ds.SeriesDescription = f"{spec.name} {spec.version} derived"[:64]
        ds.ImageType = ["DERIVED", "SECONDARY", *list(getattr(source, "ImageType", []))[2:]]
        ds.ContentDate = ds.InstanceCreationDate = now.strftime("%Y%m%d")
        ds.ContentTime = ds.InstanceCreationTime = now.strftime("%H%M%S")
        ds.Manufacturer = "ScanStream"
        ds.ManufacturerModelName = spec.name[:64]
        ds.SoftwareVersions = f"scanstream {__version__}; {spec.name} {spec.version}"[:64]
        ds.DerivationDescription = f"{spec.name} {spec.version}: {spec.description}"[:1024]
        ds.DerivationCodeSequence = [_code_item(self._derivation_code)]
        reference = Dataset()
        reference.ReferencedSOPClassUID = source.SOPClassUID
        reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
        reference.PurposeOfReferenceCodeSequence = [_code_item(SOURCE_PURPOSE)]
        ds.SourceImageSequence = [reference]

        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        return ds, own_rescale
