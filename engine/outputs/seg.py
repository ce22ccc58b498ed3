"""DICOM SEG (binary) built with highdicom, referencing the source instances frame by frame."""

from __future__ import annotations

import io

import highdicom as hd
import numpy as np
from pydicom.sr.codedict import codes

from engine import __version__
from engine.api import Artifact, ModelResult, ModelSpec, PluginError, Volume
from engine.outputs.sr import FINDING_TYPES
from engine.outputs.uids import derived_uid

SEG_SERIES_NUMBER = 9001


def _segment_descriptions(result: ModelResult, spec: ModelSpec) -> list[hd.seg.SegmentDescription]:
    algorithm = hd.AlgorithmIdentificationSequence(
        name=spec.name, version=spec.version, family=codes.cid7162.ArtificialIntelligence
    )
    return [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=label,
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=FINDING_TYPES.get(label.lower(), codes.SCT.Lesion),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for number, label in enumerate(result.segment_labels, start=1)
    ]


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
        if not result.segment_labels or not result.label_map.any():
            return []
        source_images = [volume.sources[index] for index, _ in volume.frames]
        series_uid = volume.series.series_uid
        seg = hd.seg.Segmentation(
            source_images=source_images,
            pixel_array=result.label_map.astype(np.uint8),
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=_segment_descriptions(result, spec),
            series_instance_uid=derived_uid(series_uid, spec.name, spec.version, "seg-series"),
            series_number=SEG_SERIES_NUMBER,
            sop_instance_uid=derived_uid(series_uid, spec.name, spec.version, "seg"),
            instance_number=1,
            manufacturer="ScanStream",
            manufacturer_model_name=spec.name,
            software_versions=f"scanstream {__version__}; {spec.name} {spec.version}",
            device_serial_number="0",
            series_description=f"{spec.name} {spec.version} segmentation"[:64],
        )
        buffer = io.BytesIO()
        seg.save_as(buffer, enforce_file_format=True)
        return [Artifact(name="seg.dcm", data=buffer.getvalue(), media_type="application/dicom")]
