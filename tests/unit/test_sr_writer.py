"""SR writer: a TID 1500 report of detection regions and classification labels that refers to the source slices.

The builders here (phantom CT, hand-built DX and multi-frame volumes) are shared
with tests/unit/test_preview_writer.py.
"""

from __future__ import annotations

import io
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import (
    ComprehensiveSRStorage,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

from engine.api import Finding, ImageRegion, ModelResult, ModelSpec, PluginError, SeriesInfo, Volume
from engine.outputs.sr import SrWriter
from engine.outputs.uids import derived_uid, result_series_number
from engine.synthetic.ct_phantom import CTPhantom, generate_ct_phantom, write_ct_series
from engine.worker.decode import decode_series
from tests.unit.factories import writer_spec

PHANTOM_SEED = 4242  # never used in training


def make_spec(version: str = "1.3") -> ModelSpec:
    """A registered-looking model for the writers (its network is never run)."""
    return writer_spec("unit-model", version)


def ct_volume(folder: Path, nodules: int | None = 0) -> tuple[Volume, CTPhantom]:
    """An 8 x 64 x 64 phantom CT decoded from files handed over in shuffled order, and the phantom (its truth)."""
    phantom = generate_ct_phantom(PHANTOM_SEED, slices=8, size=64, nodules=nodules, nodule_radius_mm=(4.0, 5.0))
    paths = write_ct_series(phantom, folder)
    payload = [paths[i].read_bytes() for i in (5, 0, 7, 2, 6, 1, 4, 3)]  # sources not in slice order
    first = pydicom.dcmread(paths[0], stop_before_pixels=True)
    series = SeriesInfo(str(first.StudyInstanceUID), str(first.SeriesInstanceUID), "CT", CTImageStorage)
    return decode_series(payload, series), phantom


def _patient_and_study(ds: Dataset, study_uid: str, series_uid: str) -> None:
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Unit^Test", "UNIT", "", "O"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.StudyDate, ds.StudyTime, ds.StudyID = "20260101", "120000", "1"
    ds.AccessionNumber, ds.ReferringPhysicianName = "A1", ""
    ds.SeriesNumber, ds.InstanceNumber, ds.Manufacturer = 1, 1, "UnitTest"


def _part10(ds: Dataset) -> bytes:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def dx_volume(rows: int = 600, cols: int = 500, window: bool = False) -> Volume:
    """A chest radiograph as a DX For Presentation image: MONOCHROME1, ImagerPixelSpacing only, no plane geometry.

    Stored values rise from 0 at the left edge to 4000 at the right edge.
    """
    study, series = generate_uid(), generate_uid()
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = DigitalXRayImageStorageForPresentation, generate_uid()
    _patient_and_study(ds, study, series)
    ds.Modality, ds.PresentationIntentType, ds.ImageType = "DX", "FOR PRESENTATION", ["ORIGINAL", "PRIMARY"]
    ds.ImagerPixelSpacing = [0.15, 0.15]
    ds.PatientOrientation = ["L", "F"]
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME1"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if window:
        ds.WindowCenter, ds.WindowWidth = 2000, 4000
    ramp = np.linspace(0, 4000, cols).astype(np.uint16)
    ds.PixelData = np.tile(ramp, (rows, 1)).tobytes()
    volume = decode_series([_part10(ds)], SeriesInfo(study, series, "DX", DigitalXRayImageStorageForPresentation))
    assert volume.shape == (1, rows, cols)
    return volume


def multiframe_volume() -> Volume:
    """An Enhanced CT with 3 frames whose positions (z = 2, 0, 1) put frame 2 first along the normal."""
    study, series = generate_uid(), generate_uid()
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = EnhancedCTImageStorage, generate_uid()
    _patient_and_study(ds, study, series)
    ds.Modality, ds.FrameOfReferenceUID = "CT", generate_uid()
    ds.Rows = ds.Columns = 16
    ds.NumberOfFrames = 3
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    shared = Dataset()
    shared.PlaneOrientationSequence = [Dataset()]
    shared.PlaneOrientationSequence[0].ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared.PixelMeasuresSequence = [Dataset()]
    shared.PixelMeasuresSequence[0].PixelSpacing = [0.5, 0.5]
    shared.PixelMeasuresSequence[0].SliceThickness = 1.0
    ds.SharedFunctionalGroupsSequence = [shared]
    frames = []
    for z in (2.0, 0.0, 1.0):
        group = Dataset()
        group.PlanePositionSequence = [Dataset()]
        group.PlanePositionSequence[0].ImagePositionPatient = [0.0, 0.0, z]
        frames.append(group)
    ds.PerFrameFunctionalGroupsSequence = frames
    ds.PixelData = np.arange(3 * 16 * 16, dtype=np.uint16).tobytes()
    return decode_series([_part10(ds)], SeriesInfo(study, series, "CT", EnhancedCTImageStorage))


def _report(data: bytes) -> tuple[hd.sr.ComprehensiveSR, hd.sr.MeasurementReport]:
    sr = hd.sr.srread(io.BytesIO(data))
    return sr, hd.sr.MeasurementReport.from_sequence(sr.content)


def _instance_uid(volume: Volume, slice_index: int) -> str:
    return str(volume.sources[volume.frames[slice_index][0]].SOPInstanceUID)


def _rectangle(box):
    c0, r0, c1, r1 = box
    return [[c0, r0], [c1, r0], [c1, r1], [c0, r1], [c0, r0]]


def test_detection_sr_has_one_planar_roi_per_region_on_the_exact_source_slice(tmp_path) -> None:
    volume, _ = ct_volume(tmp_path)
    big = Finding("nodule", probability=0.91,
                  regions=[ImageRegion(i, (10.5, 12.5, 20.5 + i, 22.5)) for i in (2, 3, 4)])
    small = Finding("lesion", regions=[ImageRegion(6, (40.0, 30.0, 44.0, 35.0))])
    result = ModelResult(summary="2 findings", findings=[big, small])
    (artifact,) = SrWriter().write(result, volume, make_spec())
    assert artifact.name == "sr.dcm"
    sr, report = _report(artifact.data)

    assert sr.SOPClassUID == ComprehensiveSRStorage
    assert sr.StudyInstanceUID == volume.series.study_uid
    assert sr.SeriesInstanceUID == derived_uid(volume.series.series_uid, "unit-model", "1.3", "sr-series")
    assert sr.SOPInstanceUID == derived_uid(volume.series.series_uid, "unit-model", "1.3", "sr")
    assert (sr.SeriesNumber, sr.SeriesDescription, sr.Manufacturer) == (result_series_number("unit-model", "sr"),
                                                                  "unit-model 1.3 report", "ScanStream")
    assert "unit-model 1.3" in str(sr.SoftwareVersions)
    assert sr.ConceptNameCodeSequence[0].CodeValue == "126000"  # Imaging Measurement Report
    device = report.get_observer_contexts()[0].observer_identifying_attributes
    assert (device.name, device.model_name) == ("unit-model", "unit-model 1.3")

    groups = report.get_planar_roi_measurement_groups()
    assert len(groups) == 4
    expected = [(big, r) for r in big.regions] + [(small, r) for r in small.regions]
    for group, (finding, region) in zip(groups, expected):
        source = group.roi.ContentSequence[0].ReferencedSOPSequence[0]
        assert source.ReferencedSOPInstanceUID == _instance_uid(volume, region.slice_index)
        assert source.ReferencedSOPClassUID == CTImageStorage
        assert "ReferencedFrameNumber" not in source
        assert group.roi.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
        np.testing.assert_allclose(group.roi.value, _rectangle(region.box))
        measurements = group.get_measurements(name=codes.DCM.CertaintyOfFinding)
        if finding.probability is None:
            assert measurements == []
        else:
            assert [m.value for m in measurements] == [pytest.approx(finding.probability)]
            assert measurements[0].unit.value == "1"
    assert [g.finding_type for g in groups] == [codes.SCT.Nodule] * 3 + [codes.SCT.Lesion]
    assert len({g.tracking_uid for g in groups[:3]}) == 1 and groups[3].tracking_uid != groups[0].tracking_uid

    evidence = sr.get_evidence()
    assert {uid for _, _, uid, _ in evidence} == {str(ds.SOPInstanceUID) for ds in volume.sources}
    assert {study for study, _, _, _ in evidence} == {volume.series.study_uid}
    assert sr.CurrentRequestedProcedureEvidenceSequence[0].StudyInstanceUID == volume.series.study_uid


def test_sr_uids_are_stable_across_writes_and_change_with_the_version(tmp_path) -> None:
    volume, _ = ct_volume(tmp_path)
    result = ModelResult(summary="1", findings=[Finding("nodule", 0.5, regions=[ImageRegion(1, (1.0, 1.0, 5.0, 5.0))])])
    first, again = (pydicom.dcmread(io.BytesIO(SrWriter().write(result, volume, make_spec())[0].data))
                    for _ in range(2))
    other = pydicom.dcmread(io.BytesIO(SrWriter().write(result, volume, make_spec("1.4"))[0].data))
    assert (first.SOPInstanceUID, first.SeriesInstanceUID) == (again.SOPInstanceUID, again.SeriesInstanceUID)
    assert first.SOPInstanceUID != other.SOPInstanceUID and first.SeriesInstanceUID != other.SeriesInstanceUID


def test_classification_sr_on_a_radiograph_has_presence_and_probability_per_label() -> None:
    volume = dx_volume()
    result = ModelResult(summary="pneumothorax", findings=[Finding("pneumothorax", probability=0.87)],
                         class_probabilities={"pneumothorax": 0.87, "pleural_effusion_small": 0.12})
    sr, report = _report(SrWriter().write(result, volume, make_spec())[0].data)
    dx_uid = str(volume.sources[0].SOPInstanceUID)
    assert sr.StudyInstanceUID == volume.series.study_uid
    groups = report.get_image_measurement_groups()
    assert [g.finding_type.meaning for g in groups] == ["pneumothorax", "pleural_effusion_small"]
    presence = {g.finding_type.meaning: g.get_qualitative_evaluations(name=codes.DCM.PresenceOfProperty)[0].value
                for g in groups}
    assert presence == {"pneumothorax": codes.SCT.Present, "pleural_effusion_small": codes.SCT.Absent}
    probabilities = {g.finding_type.meaning: g.get_measurements(name=codes.DCM.CertaintyOfFinding)[0].value
                     for g in groups}
    assert probabilities == {"pneumothorax": pytest.approx(0.87), "pleural_effusion_small": pytest.approx(0.12)}
    for group in groups:
        assert [s.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for s in group.source_images] == [dx_uid]
        assert group.finding_type.scheme_designator == "99SCANSTREAM"
    assert report.get_image_measurement_groups(referenced_sop_instance_uid=dx_uid)
    procedures = [item.ConceptCodeSequence[0].CodeMeaning for item in sr.ContentSequence
                  if item.ConceptNameCodeSequence[0].CodeValue == "121058"]  # Procedure reported
    assert procedures == ["XR unspecified body region"]


def test_detection_on_a_radiograph_refers_to_the_dx_instance() -> None:
    volume = dx_volume()
    result = ModelResult(summary="1", findings=[Finding("nodule", 0.7, regions=[ImageRegion(0, (100, 200, 180, 260))])])
    _, report = _report(SrWriter().write(result, volume, make_spec())[0].data)
    (group,) = report.get_planar_roi_measurement_groups()
    source = group.roi.ContentSequence[0].ReferencedSOPSequence[0]
    assert source.ReferencedSOPInstanceUID == volume.sources[0].SOPInstanceUID
    assert source.ReferencedSOPClassUID == DigitalXRayImageStorageForPresentation
    np.testing.assert_allclose(group.roi.value, _rectangle((100, 200, 180, 260)))


def test_regions_on_a_multiframe_source_name_the_frame() -> None:
    volume = multiframe_volume()
    assert [frame for _, frame in volume.frames] == [2, 3, 1]
    result = ModelResult(summary="1", findings=[Finding("nodule", 0.6, regions=[ImageRegion(0, (2.0, 2.0, 6.0, 6.0)),
                                                                                ImageRegion(2, (3.0, 3.0, 7.0, 7.0))])])
    _, report = _report(SrWriter().write(result, volume, make_spec())[0].data)
    frames = [g.roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedFrameNumber
              for g in report.get_planar_roi_measurement_groups()]
    assert frames == [2, 1]


def test_nothing_to_report_writes_no_sr(tmp_path) -> None:
    volume, phantom = ct_volume(tmp_path, nodules=1)
    segmentation = ModelResult(summary="1", findings=[Finding("nodule", volume_ml=0.3)],
                               label_map=phantom.nodule_mask.astype(np.uint8), segment_labels=["Nodule"])
    reconstruction = ModelResult(summary="denoised", derived_voxels=volume.voxels.copy())
    for result in (ModelResult(summary="nothing"), segmentation, reconstruction):
        assert SrWriter().write(result, volume, make_spec()) == []


@pytest.mark.parametrize("slice_index", [8, -1])
def test_region_off_the_volume_is_a_plugin_error_naming_the_model(tmp_path, slice_index) -> None:
    volume, _ = ct_volume(tmp_path)
    result = ModelResult(summary="1", findings=[Finding("nodule", 0.5,
                                                        regions=[ImageRegion(slice_index, (1.0, 1.0, 5.0, 5.0))])])
    with pytest.raises(PluginError, match=r"unit-model.*slice_index"):
        SrWriter().write(result, volume, make_spec())


def test_box_outside_the_image_is_a_plugin_error(tmp_path) -> None:
    volume, _ = ct_volume(tmp_path)
    outside = ImageRegion(0, (60.0, 1.0, 70.0, 5.0))  # the image is 64 columns wide
    result = ModelResult(summary="1", findings=[Finding("nodule", 0.5, regions=[outside])])
    with pytest.raises(PluginError, match=r"unit-model.*box"):
        SrWriter().write(result, volume, make_spec())
