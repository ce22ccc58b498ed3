"""DICOM Comprehensive SR: a TID 1500 Measurement Report of classification and detection results.

Why Comprehensive SR (not Comprehensive 3D SR): every coordinate written here is a
2D SCOORD in the pixel space of one source image, which Comprehensive SR carries;
it is the older SOP class that more PACS and viewers store and display, and
highdicom's ``ComprehensiveSR`` builds it from the same TID 1500 content.

Codes used (all in DICOM PS3.16 or SNOMED CT):

- report title: DCM 126000 "Imaging Measurement Report" (CID 7021);
- observer: DCM 121007 "Device" (CID 270) with the model as device name / model name;
- procedure reported: LOINC "<modality> unspecified body region" (CID 100), else
  SCT 363679005 "Imaging procedure";
- finding type (DCM 121071 "Finding", TID 1501/1410): SCT 27925004 "Nodule" and
  SCT 52988006 "Lesion" for those labels, else the label as a local code in the
  private scheme ``99SCANSTREAM``;
- presence (classification): qualitative evaluation DCM 121052 "Presence of
  property" = SCT 52101004 "Present" / SCT 272519000 "Absent" (CID 241). Not
  "Finding": in a TID 1501 group DCM 121071 is the finding type, and readers
  (highdicom among them) take the first such item as the type;
- probability: numeric DCM 111012 "Certainty of Finding" in UCUM "1" ("no units",
  CID 7181), the value in [0, 1].
"""

from __future__ import annotations

import io
import math
from typing import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from engine import __version__
from engine.api import Artifact, Finding, ImageRegion, ModelResult, ModelSpec, PluginError, Volume
from engine.logs import get_logger
from engine.outputs.uids import SCANSTREAM_UID_ROOT, result_series_number, result_uid

log = get_logger(__name__)

LOCAL_SCHEME = "99SCANSTREAM"
FINDING_TYPES = {"nodule": codes.SCT.Nodule, "lesion": codes.SCT.Lesion}
PROCEDURES = {
    "CT": codes.cid100.CTUnspecifiedBodyRegion,
    "MR": codes.cid100.MRIUnspecifiedBodyRegion,
    "PT": codes.cid100.PETUnspecifiedBodyRegion,
    "NM": codes.cid100.NMUnspecifiedBodyRegion,
    "DX": codes.cid100.XRUnspecifiedBodyRegion,
    "CR": codes.cid100.XRUnspecifiedBodyRegion,
}
PRESENCE = codes.DCM.PresenceOfProperty
PRESENT, ABSENT = codes.SCT.Present, codes.SCT.Absent
PROBABILITY = codes.DCM.CertaintyOfFinding
PROBABILITY_UNIT = codes.UCUM.NoUnits


def finding_type(label: str) -> Code | hd.sr.CodedConcept:
    """The coded concept of a finding label: SNOMED CT where known, else a local code."""
    known = FINDING_TYPES.get(label.lower())
    if known is not None:
        return known
    return hd.sr.CodedConcept(value=label, scheme_designator=LOCAL_SCHEME, meaning=label[:64])


def _category(label: str) -> Code | None:
    """Morphologically abnormal structure for the known lesion types; unstated for other labels."""
    return codes.SCT.MorphologicallyAbnormalStructure if label.lower() in FINDING_TYPES else None


def check_regions(result: ModelResult, volume: Volume, spec: ModelSpec) -> None:
    """Raise :class:`PluginError` naming the model when a finding's region is off the volume or malformed."""
    slices, rows, cols = volume.shape
    for number, finding in enumerate(result.findings, start=1):
        for region in finding.regions:
            where = f"model {spec.name!r}: finding {number} ({finding.label})"
            if not 0 <= region.slice_index < slices:
                raise PluginError(f"{where}: region slice_index {region.slice_index} is outside 0..{slices - 1}")
            c0, r0, c1, r1 = region.box
            if not all(math.isfinite(v) for v in region.box) or not (0 <= c0 <= c1 <= cols and 0 <= r0 <= r1 <= rows):
                raise PluginError(f"{where}: region box {region.box} is not (col_min, row_min, col_max, row_max) "
                                  f"within the {cols}x{rows} image")


def _procedure(volume: Volume) -> Code:
    return PROCEDURES.get(volume.series.modality.upper(), codes.SCT.ImagingProcedure)


def _observation_context(spec: ModelSpec) -> hd.sr.ObservationContext:
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=generate_uid(prefix=SCANSTREAM_UID_ROOT, entropy_srcs=["device", spec.name, spec.version]),
        name=spec.name,
        manufacturer_name="ScanStream",
        model_name=f"{spec.name} {spec.version}"[:64],
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(observer_type=codes.cid270.Device,
                                                      observer_identifying_attributes=device))


def _probability(value: float | None) -> list[hd.sr.Measurement]:
    if value is None:
        return []
    return [hd.sr.Measurement(name=PROBABILITY, value=float(value), unit=PROBABILITY_UNIT)]


def _instance_references(volume: Volume) -> list[hd.sr.SourceImageForMeasurementGroup]:
    """Every source instance once (a multi-frame instance as a whole)."""
    return [hd.sr.SourceImageForMeasurementGroup.from_source_image(ds) for ds in volume.sources]


def _classification_groups(result: ModelResult, volume: Volume, spec: ModelSpec,
                           algorithm: hd.sr.AlgorithmIdentification,
                           ) -> list[hd.sr.MeasurementsAndQualitativeEvaluations]:
    """One TID 1501 group per label: presence and probability, referring to every source instance."""
    present = {finding.label for finding in result.findings}
    groups = []
    for label, probability in result.class_probabilities.items():
        tracking = hd.sr.TrackingIdentifier(identifier=label[:64],
                                            uid=result_uid(volume.series, spec, f"sr-label-{label}"))
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking,
            finding_type=finding_type(label),
            algorithm_id=algorithm,
            measurements=_probability(probability),
            qualitative_evaluations=[hd.sr.QualitativeEvaluation(PRESENCE, PRESENT if label in present else ABSENT)],
            source_images=_instance_references(volume),
        ))
    return groups


def _source_for_region(volume: Volume, region: ImageRegion) -> hd.sr.SourceImageForRegion:
    index, frame = volume.frames[region.slice_index]
    source: Dataset = volume.sources[index]
    frames = [frame] if "NumberOfFrames" in source else None
    return hd.sr.SourceImageForRegion.from_source_image(source, referenced_frame_numbers=frames)


def _rectangle(box: tuple[float, float, float, float]) -> np.ndarray:
    """A closed POLYLINE through the box corners, (column, row) pairs as SCOORD expects."""
    c0, r0, c1, r1 = box
    return np.array([[c0, r0], [c1, r0], [c1, r1], [c0, r1], [c0, r0]], dtype=np.float32)


def _detection_groups(result: ModelResult, volume: Volume, spec: ModelSpec,
                      algorithm: hd.sr.AlgorithmIdentification,
                      ) -> list[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations]:
    """One TID 1410 group per region: a planar ROI lies on one image, the tracking UID ties a finding's slices."""
    groups = []
    for number, finding in enumerate(result.findings, start=1):
        if not finding.regions:
            continue
        tracking_uid = result_uid(volume.series, spec, f"sr-finding-{number}")
        for region in finding.regions:
            groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(identifier=f"{finding.label} {number}"[:64],
                                                             uid=tracking_uid),
                referenced_region=hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                                                    graphic_data=_rectangle(region.box),
                                                    source_image=_source_for_region(volume, region)),
                finding_type=finding_type(finding.label),
                finding_category=_category(finding.label),
                algorithm_id=algorithm,
                measurements=_probability(finding.probability),
            ))
    return groups


def _has_regions(findings: Sequence[Finding]) -> bool:
    return any(finding.regions for finding in findings)


class SrWriter:
    """Writes ``sr.dcm`` for classification and detection results; no file for anything else."""

    def write(self, result: ModelResult, volume: Volume, spec: ModelSpec) -> list[Artifact]:
        if not result.class_probabilities and not _has_regions(result.findings):
            return []
        if not volume.sources:
            raise PluginError(f"model {spec.name!r}: SR needs the source instances")
        check_regions(result, volume, spec)
        algorithm = hd.sr.AlgorithmIdentification(name=spec.name, version=spec.version)
        groups: list = _classification_groups(result, volume, spec, algorithm)
        groups += _detection_groups(result, volume, spec, algorithm)
        report = hd.sr.MeasurementReport(
            observation_context=_observation_context(spec),
            procedure_reported=_procedure(volume),
            imaging_measurements=groups,
            title=codes.cid7021.ImagingMeasurementReport,
        )
        document = hd.sr.ComprehensiveSR(
            evidence=volume.sources,
            content=report[0],
            series_instance_uid=result_uid(volume.series, spec, "sr-series"),
            series_number=result_series_number(spec.name, "sr"),
            sop_instance_uid=result_uid(volume.series, spec, "sr"),
            instance_number=1,
            manufacturer="ScanStream",
            is_complete=True,
            manufacturer_model_name=spec.name,
            software_versions=f"scanstream {__version__}; {spec.name} {spec.version}",
            device_serial_number="0",
            series_description=f"{spec.name} {spec.version} report"[:64],
        )
        buffer = io.BytesIO()
        document.save_as(buffer, enforce_file_format=True)
        log.info("output.sr.written", model=spec.name, groups=len(groups), bytes=buffer.tell())
        return [Artifact(name="sr.dcm", data=buffer.getvalue(), media_type="application/dicom")]
