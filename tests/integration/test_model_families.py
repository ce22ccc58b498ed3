"""Every built-in model family end to end: storescu -> `scanstream serve` -> the right DICOM object per family.

One study with three series: a standard-dose chest CT (segmentation -> SEG,
detection -> SR with image regions, classification -> SR with the finding),
a low-dose CT of the same phantom (reconstruction -> derived CT series, plus the
CT models) and a chest radiograph (classification of a DX image -> SR). Every
result also has a preview secondary capture.
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import pydicom
from pydicom.sr.codedict import codes

from engine.synthetic.ct_phantom import LOW_DOSE_DESCRIPTION, generate_ct_phantom, low_dose_phantom, write_ct_series
from engine.synthetic.dx_phantom import generate_dx_phantom, write_dx_image
from engine.testing import EngineProcess, storescu

SEG, COMPREHENSIVE_SR, SECONDARY_CAPTURE, CT = ("1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.88.33",
                                                 "1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.2")
CT_MODELS = {"nodule-seg", "nodule-det", "nodule-cls"}


def _report(dataset: pydicom.Dataset) -> hd.sr.MeasurementReport:
    """The TID 1500 measurement report of a Comprehensive SR, read by highdicom."""
    return hd.sr.MeasurementReport.from_sequence(hd.sr.ComprehensiveSR.from_dataset(dataset).content)


def _outputs(job) -> dict[str, list[pydicom.Dataset]]:
    """The job's DICOM results by SOP class UID."""
    found: dict[str, list[pydicom.Dataset]] = {}
    for path in sorted(Path(job.result_dir).glob("*.dcm")):
        dataset = pydicom.dcmread(path)
        found.setdefault(str(dataset.SOPClassUID), []).append(dataset)
    return found


def test_every_family_returns_its_object(tmp_path: Path, require_storescu: str) -> None:
    phantom = generate_ct_phantom(7011, nodules=2, slices=16)
    study_uid = pydicom.uid.generate_uid()
    standard = write_ct_series(phantom, tmp_path / "ct", study_uid=study_uid)
    low = write_ct_series(low_dose_phantom(phantom, 7011), tmp_path / "low", study_uid=study_uid,
                          series_description=LOW_DOSE_DESCRIPTION)
    radiograph = write_dx_image(generate_dx_phantom(7011), tmp_path / "dx", study_uid=study_uid)
    series_of = {str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID): name
                 for name, files in (("ct", standard), ("low", low), ("dx", [radiograph]))}
    with EngineProcess(tmp_path / "data", workers=1) as engine:
        for files in (standard, low, [radiograph]):
            sent = storescu(files, engine.port)
            assert sent.returncode == 0, sent.stderr
        jobs = engine.wait_for_jobs(study_uid, 3 + 4 + 1, timeout=300)
    assert all(job.state == "done" for job in jobs), [(j.model, j.reason) for j in jobs]
    by_series: dict[str, dict[str, object]] = {}
    for job in jobs:
        by_series.setdefault(series_of[job.series_uid], {})[job.model] = job
    assert set(by_series["ct"]) == CT_MODELS
    assert set(by_series["low"]) == CT_MODELS | {"ct-denoise"}
    assert set(by_series["dx"]) == {"nodule-cls-dx"}

    for series, models in by_series.items():
        for model, job in models.items():
            outputs = _outputs(job)
            (preview,) = outputs[SECONDARY_CAPTURE]
            assert preview.StudyInstanceUID == study_uid and preview.SamplesPerPixel == 3, (series, model)

    seg = _outputs(by_series["ct"]["nodule-seg"])[SEG][0]
    assert len(seg.SegmentSequence) == 1 and seg.StudyInstanceUID == study_uid

    (detection,) = _outputs(by_series["ct"]["nodule-det"])[COMPREHENSIVE_SR]
    groups = _report(detection).get_planar_roi_measurement_groups()
    assert groups, "the detection SR holds no image region"
    ct_uids = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in standard}
    for group in groups:
        assert group.roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID in ct_uids

    for series, model in (("ct", "nodule-cls"), ("dx", "nodule-cls-dx")):
        (report,) = _outputs(by_series[series][model])[COMPREHENSIVE_SR]
        (group,) = _report(report).get_image_measurement_groups()
        (certainty,) = group.get_measurements(name=codes.DCM.CertaintyOfFinding)
        assert 0.0 <= float(certainty.value) <= 1.0 and group.finding_type.meaning == "Nodule"

    derived = _outputs(by_series["low"]["ct-denoise"])[CT]
    assert len(derived) == len(low)
    low_uids = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in low}
    assert {str(d.SourceImageSequence[0].ReferencedSOPInstanceUID) for d in derived} == low_uids
    assert all(d.StudyInstanceUID == study_uid and "DERIVED" in d.ImageType for d in derived)
