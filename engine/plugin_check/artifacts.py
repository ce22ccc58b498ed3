"""What a model returns and writes, re-read as a receiver and a PACS would."""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np

from engine.api import Artifact, Finding, ModelResult, ModelSpec, Volume
from engine.plugin_check.report import CheckFailed

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
SR_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.88.22": "Enhanced SR",
    "1.2.840.10008.5.1.4.1.1.88.33": "Comprehensive SR",
    "1.2.840.10008.5.1.4.1.1.88.34": "Comprehensive 3D SR",
}


def check_result(result: Any, volume: Volume, spec: ModelSpec) -> str:
    """What the writers need of a result, checked against the volume; returns a one-line summary."""
    if not isinstance(result, ModelResult):
        raise CheckFailed(f"postprocess returned {type(result).__name__}, expected engine.api.ModelResult")
    summary = result.summary if len(result.summary) <= 60 else result.summary[:57] + "..."
    parts = [f"summary {summary!r}"]
    if not all(isinstance(f, Finding) for f in result.findings):
        raise CheckFailed("findings must be engine.api.Finding items")
    parts.append(f"{len(result.findings)} finding(s)")
    for finding in result.findings:
        for region in finding.regions:
            if not 0 <= region.slice_index < volume.shape[0]:
                raise CheckFailed(f"finding {finding.label!r}: region slice_index {region.slice_index} outside "
                                  f"0..{volume.shape[0] - 1}")
    if result.label_map is not None:
        label_map = np.asarray(result.label_map)
        if label_map.shape != volume.shape:
            raise CheckFailed(f"label_map shape {label_map.shape} is not the volume's {volume.shape}")
        if label_map.dtype != np.uint8:
            raise CheckFailed(f"label_map must be uint8 (0 = background, k = segment_labels[k-1]), got "
                              f"{label_map.dtype}")
        if int(label_map.max(initial=0)) > len(result.segment_labels):
            raise CheckFailed(f"label_map holds label {int(label_map.max())} but segment_labels has "
                              f"{len(result.segment_labels)} name(s)")
        parts.append(f"label_map with {int((label_map > 0).sum())} labelled voxel(s)")
    if result.derived_voxels is not None:
        if np.asarray(result.derived_voxels).shape != volume.shape:
            raise CheckFailed(f"derived_voxels shape {np.asarray(result.derived_voxels).shape} is not the volume's "
                              f"{volume.shape}")
        parts.append("derived_voxels")
    bad = {k: v for k, v in result.class_probabilities.items() if not 0.0 <= float(v) <= 1.0}
    if bad:
        raise CheckFailed(f"class_probabilities outside [0, 1]: {bad}")
    if result.class_probabilities:
        parts.append(f"{len(result.class_probabilities)} class probabilit(ies)")
    return ", ".join(parts)


def verify_artifact(artifact: Artifact, volume: Volume, spec: ModelSpec) -> str:
    """Re-read one written file as a receiver would; :class:`CheckFailed` says what is wrong."""
    if not artifact.data:
        raise CheckFailed(f"{artifact.name} is empty")
    if artifact.name.endswith(".json") or artifact.media_type == "application/json":
        try:
            document = json.loads(artifact.data)
        except ValueError as error:
            raise CheckFailed(f"{artifact.name} is not JSON: {error}") from None
        if artifact.name == "result.json":
            wanted = {"model": spec.name, "study_instance_uid": volume.series.study_uid,
                      "series_instance_uid": volume.series.series_uid}
            wrong = {k: document.get(k) for k, v in wanted.items() if document.get(k) != v}
            if wrong:
                raise CheckFailed(f"result.json has {wrong}, expected {wanted}")
        return f"{artifact.name} parses"
    if artifact.name.endswith(".dcm") or artifact.media_type == "application/dicom":
        return verify_dicom(artifact, volume)
    return f"{artifact.name} ({len(artifact.data)} bytes, {artifact.media_type})"


def verify_dicom(artifact: Artifact, volume: Volume) -> str:
    import highdicom as hd
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.uid import UID

    try:
        dataset = pydicom.dcmread(io.BytesIO(artifact.data))
    except (InvalidDicomError, EOFError, ValueError) as error:
        raise CheckFailed(f"{artifact.name} does not read as DICOM: {error}") from None
    sop_class = str(dataset.get("SOPClassUID", ""))
    if not sop_class:
        raise CheckFailed(f"{artifact.name} has no SOPClassUID")
    if str(dataset.get("StudyInstanceUID", "")) != volume.series.study_uid:
        raise CheckFailed(f"{artifact.name}: StudyInstanceUID is not the source study's")
    if not dataset.get("SeriesInstanceUID") or str(dataset.SeriesInstanceUID) == volume.series.series_uid:
        raise CheckFailed(f"{artifact.name}: a result needs its own SeriesInstanceUID, not the source series'")
    sources = {str(getattr(s, "SOPInstanceUID", "")) for s in volume.sources}
    if not dataset.get("SOPInstanceUID") or str(dataset.SOPInstanceUID) in sources:
        raise CheckFailed(f"{artifact.name}: SOPInstanceUID missing or equal to a source instance's")
    name = UID(sop_class).name
    if sop_class == SEG_SOP_CLASS:
        segmentation = hd.seg.segread(io.BytesIO(artifact.data))
        return f"{artifact.name}: {name}, {len(segmentation.SegmentSequence)} segment(s), re-read by highdicom"
    if sop_class in SR_SOP_CLASSES:
        report = hd.sr.srread(io.BytesIO(artifact.data))
        groups = len(report.content.get_planar_roi_measurement_groups()) if hasattr(
            report.content, "get_planar_roi_measurement_groups") else 0
        return f"{artifact.name}: {name}, re-read by highdicom ({groups} planar ROI group(s))"
    if "PixelData" in dataset:
        pixels = dataset.pixel_array
        return f"{artifact.name}: {name}, pixels {tuple(pixels.shape)}"
    return f"{artifact.name}: {name}"
