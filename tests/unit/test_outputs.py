"""Output writers: result.json content and a valid, referencing DICOM SEG."""

from __future__ import annotations

import dataclasses
import io
import json

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.uid import CTImageStorage, generate_uid

from engine.api import Finding, ModelResult, PluginError, SeriesInfo
from engine.outputs.result_json import ResultJsonWriter
from engine.outputs.seg import SegWriter
from engine.outputs.uids import RESULT_SERIES_KINDS, derived_uid, result_series_number
from engine.worker.decode import decode_series
from tests.unit.factories import ct_slice, writer_spec


SPEC = writer_spec("unit-seg", "2.1")


@pytest.fixture()
def volume():
    study, series = generate_uid(), generate_uid()
    payload = [ct_slice(float(z), 1000 + z, size=8, study_uid=study, series_uid=series) for z in (2, 0, 1)]
    return decode_series(payload, SeriesInfo(study, series, "CT", CTImageStorage))


def test_seg_references_each_source_frame(volume) -> None:
    mask = np.zeros(volume.voxels.shape, dtype=np.uint8)
    mask[1, 2:5, 2:5] = 1
    result = ModelResult(summary="1 finding", label_map=mask, segment_labels=["Nodule"])
    (artifact,) = SegWriter().write(result, volume, SPEC)
    seg = hd.seg.segread(io.BytesIO(artifact.data))
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    assert seg.StudyInstanceUID == volume.series.study_uid
    assert seg.SOPInstanceUID == derived_uid(volume.series.series_uid, "unit-seg", "2.1", "seg")
    middle_uid = str(volume.sources[volume.frames[1][0]].SOPInstanceUID)
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=[middle_uid], segment_numbers=[1])
    assert pixels[0, ..., 0].astype(bool).tolist() == mask[1].astype(bool).tolist()
    assert seg.SegmentSequence[0].SegmentLabel == "Nodule"


def test_empty_mask_writes_no_seg_and_wrong_shape_is_an_error(volume) -> None:
    empty = ModelResult(summary="0", label_map=np.zeros(volume.voxels.shape, np.uint8), segment_labels=["Nodule"])
    assert SegWriter().write(empty, volume, SPEC) == []
    wrong = ModelResult(summary="x", label_map=np.zeros((1, 2, 2), np.uint8), segment_labels=["Nodule"])
    with pytest.raises(PluginError, match="label_map shape"):
        SegWriter().write(wrong, volume, SPEC)


def test_result_json_has_model_findings_and_uids(volume) -> None:
    result = ModelResult(summary="1 finding", findings=[Finding("nodule", volume_ml=1.5, voxel_count=9)])
    (artifact,) = ResultJsonWriter().write(result, volume, SPEC)
    document = json.loads(artifact.data)
    assert document["model"] == "unit-seg" and document["model_version"] == "2.1"
    assert document["findings"] == [{"label": "nodule", "volume_ml": 1.5, "voxel_count": 9}]
    assert document["series_instance_uid"] == volume.series.series_uid
    assert "PatientName" not in artifact.data.decode() and "Unit^Test" not in artifact.data.decode()


def test_derived_uids_are_stable_and_distinct() -> None:
    a = derived_uid("1.2.3", "m", "1", "seg")
    assert a == derived_uid("1.2.3", "m", "1", "seg")
    assert a != derived_uid("1.2.3", "m", "2", "seg")
    assert len(a) <= 64 and pydicom.uid.UID(a).is_valid


def test_each_revision_gets_its_own_result_uids_and_series(volume) -> None:
    """A late instance makes revision 2: its SEG must not reuse revision 1's UIDs (a keep-first PACS keeps it)."""
    mask = np.zeros(volume.voxels.shape, dtype=np.uint8)
    mask[1, 2:5, 2:5] = 1
    result = ModelResult(summary="1 finding", label_map=mask, segment_labels=["Nodule"])
    first, again, second = (hd.seg.segread(io.BytesIO(SegWriter().write(result, revised, SPEC)[0].data))
                            for revised in (volume, volume, dataclasses.replace(
                                volume, series=dataclasses.replace(volume.series, revision=2))))
    assert (first.SOPInstanceUID, first.SeriesInstanceUID) == (again.SOPInstanceUID, again.SeriesInstanceUID)
    assert first.SOPInstanceUID != second.SOPInstanceUID
    assert first.SeriesInstanceUID != second.SeriesInstanceUID
    assert second.SOPInstanceUID == derived_uid(volume.series.series_uid, "unit-seg", "2.1", "seg", revision=2)
    assert first.SeriesNumber == second.SeriesNumber  # the model's series number stays


def test_result_series_numbers_are_stable_and_distinct_per_model_and_kind() -> None:
    from engine.plugins import load_plugins
    from engine.config import EngineConfig

    models = [spec.name for spec in load_plugins(EngineConfig()).models.all()]
    assert len(models) >= 5
    numbers = [result_series_number(model, kind) for model in models for kind in RESULT_SERIES_KINDS]
    assert len(set(numbers)) == len(numbers), "two built-in models' result series share a number"
    assert numbers == [result_series_number(model, kind) for model in models for kind in RESULT_SERIES_KINDS]
    assert all(0 < number < 2**31 and len(str(number)) <= 12 for number in numbers)  # IS
