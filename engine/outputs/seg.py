"""DICOM SEG (binary) built with highdicom, referencing the source instances frame by frame.

highdicom builds the object from the segmented planes' sources only: its cost
per source image (checks, plane positions, derivation items, ~0.4 ms each
through pydicom) then follows what the model found, not the series length, and
empty planes have no frame either way. The rest of the series enters where the
standard puts it: the shared pixel measures of the first source with the slice
spacing of the whole series (highdicom's rule, applied before it omits empty
frames; given the segmented planes alone it would measure their spacing), and
every source instance in the Source Image Sequence and the Common Instance
Reference module, encoded straight to bytes. The result equals highdicom's own
SEG from all the sources (tests/unit/test_seg_parity.py, element by element).
"""

from __future__ import annotations

from typing import Any

import highdicom as hd
import numpy as np
from highdicom.spatial import get_volume_positions
from pydicom.sr.codedict import codes
from pydicom.valuerep import format_number_as_ds

from engine import __version__
from engine.api import Artifact, ModelResult, ModelSpec, PluginError, Volume
from engine.dicom.encode import item, part10_with_elements, sequence, uid_element
from engine.dicom.sources import source_header
from engine.outputs.segment_codes import segment_coding
from engine.outputs.uids import result_series_number, result_uid

REFERENCED_SERIES_SEQUENCE = 0x00081115
SOURCE_IMAGE_SEQUENCE = 0x00082112
REFERENCED_INSTANCE_SEQUENCE = 0x0008114A
REFERENCED_SOP_CLASS_UID = 0x00081150
REFERENCED_SOP_INSTANCE_UID = 0x00081155
SERIES_INSTANCE_UID = 0x0020000E


def _segment_descriptions(result: ModelResult, spec: ModelSpec) -> list[hd.seg.SegmentDescription]:
    algorithm = hd.AlgorithmIdentificationSequence(
        name=spec.name, version=spec.version, family=codes.cid7162.ArtificialIntelligence
    )
    return [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=label,
            segmented_property_category=category,
            segmented_property_type=kind,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for number, label in enumerate(result.segment_labels, start=1)
        for category, kind in [segment_coding(label, result.segment_codes)]
    ]


def seg_options(result: ModelResult, volume: Volume, spec: ModelSpec) -> dict[str, Any]:
    """highdicom ``Segmentation`` arguments other than the sources, the pixels and the pixel measures."""
    return dict(
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=_segment_descriptions(result, spec),
        series_instance_uid=result_uid(volume.series, spec, "seg-series"),
        series_number=result_series_number(spec.name, "seg"),
        sop_instance_uid=result_uid(volume.series, spec, "seg"),
        instance_number=1,
        manufacturer="ScanStream",
        manufacturer_model_name=spec.name,
        software_versions=f"scanstream {__version__}; {spec.name} {spec.version}",
        device_serial_number="0",
        series_description=f"{spec.name} {spec.version} segmentation"[:64],
    )


def series_pixel_measures(volume: Volume) -> hd.PixelMeasuresSequence:
    """The first source's pixel measures, with the spacing between slices of the whole series when the
    source does not state one and none when the series is irregular: what highdicom writes given every source."""
    first = volume.sources[volume.frames[0][0]]
    stated = first.get("SpacingBetweenSlices", None)
    measures = hd.PixelMeasuresSequence(pixel_spacing=first.PixelSpacing, slice_thickness=first.SliceThickness,
                                        spacing_between_slices=stated)
    if stated is None:
        positions = [source_header(volume.sources, index).get("ImagePositionPatient") for index, _ in volume.frames]
        spacing, _ = get_volume_positions(image_positions=positions, image_orientation=first.ImageOrientationPatient)
        if spacing is not None:
            measures[0].SpacingBetweenSlices = format_number_as_ds(spacing)
    return measures


def source_references(volume: Volume) -> dict[int, bytes]:
    """Source Image Sequence and Referenced Series Sequence (per series, in slice order) listing every source;
    read from the sources' headers, so no source dataset is built for them."""
    per_series: dict[str, list[bytes]] = {}
    for index, _ in volume.frames:
        header = source_header(volume.sources, index)
        reference = item((uid_element(REFERENCED_SOP_CLASS_UID, header.get("SOPClassUID")),
                          uid_element(REFERENCED_SOP_INSTANCE_UID, header.get("SOPInstanceUID"))))
        per_series.setdefault(header.get("SeriesInstanceUID"), []).append(reference)
    series_items = (item((sequence(REFERENCED_INSTANCE_SEQUENCE, references), uid_element(SERIES_INSTANCE_UID, uid)))
                    for uid, references in per_series.items())
    return {SOURCE_IMAGE_SEQUENCE: sequence(SOURCE_IMAGE_SEQUENCE, (r for refs in per_series.values() for r in refs)),
            REFERENCED_SERIES_SEQUENCE: sequence(REFERENCED_SERIES_SEQUENCE, series_items)}


class SegWriter:
    """Writes ``seg.dcm`` from ``result.label_map``; no file when the map is empty."""

    def write(self, result: ModelResult, volume: Volume, spec: ModelSpec) -> list[Artifact]:
        if result.label_map is None:
            return []
        if result.label_map.shape != volume.shape:
            raise PluginError(
                f"model {spec.name!r}: label_map shape {result.label_map.shape} != volume {volume.shape}"
            )
        if not volume.sources or any(frame != 1 for _, frame in volume.frames):
            raise PluginError(f"model {spec.name!r}: SEG needs single-frame source instances")
        label_map = result.label_map
        planes = np.flatnonzero(label_map.reshape(label_map.shape[0], -1).any(axis=1))
        if not result.segment_labels or not len(planes):
            return []
        seg = hd.seg.Segmentation(
            source_images=[volume.sources[volume.frames[index][0]] for index in planes],
            pixel_array=label_map[planes].astype(np.uint8),
            **seg_options(result, volume, spec),
        )
        seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence = series_pixel_measures(volume)
        references = source_references(volume)
        for tag in references:
            del seg[tag]
        data = part10_with_elements(seg, references)
        return [Artifact(name="seg.dcm", data=data, media_type="application/dicom")]
