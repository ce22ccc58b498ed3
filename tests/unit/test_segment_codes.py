"""SEG segment codes: defaults for common anatomy and findings, codes set per label in ``[[models]]``."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom.uid import CTImageStorage, generate_uid

from engine.api import ModelResult, SeriesInfo
from engine.config.entries import ModelEntryConfig
from engine.outputs.seg import SegWriter
from engine.outputs.segment_codes import segment_coding
from engine.worker.decode import decode_series
from tests.unit.factories import ct_slice, writer_spec


@pytest.mark.parametrize("label, category, kind", [
    ("bone", "91723000", "272673000"), ("Liver", "91723000", "10200004"), ("kidneys", "91723000", "64033007"),
    ("spinal_cord", "91723000", "2748008"), ("Nodule", "49755003", "27925004"), ("mass", "49755003", "52988006"),
])
def test_defaults(label: str, category: str, kind: str) -> None:
    found_category, found_type = segment_coding(label)
    assert (found_category.value, found_type.value) == (category, kind)
    assert found_category.scheme_designator == found_type.scheme_designator == "SCT"


def _entry(**overrides) -> ModelEntryConfig:
    data = {"name": "organs", "version": "1", "file": "/models/organs.ts", "output": "segmentation",
            "labels": ["bone", "graft"],
            "label_codes": {"graft": {"category": ["SCT", "85756007", "Tissue"],
                                      "type": ["DCM", "130580", "Segment"]}}}
    data.update(overrides)
    return ModelEntryConfig.model_validate(data)


def test_configured_codes_reach_the_seg(tmp_path: Path) -> None:
    entry = _entry()
    study, series = generate_uid(), generate_uid()
    volume = decode_series([ct_slice(float(z), 1000 + z, size=8, study_uid=study, series_uid=series)
                            for z in (0, 1, 2)], SeriesInfo(study, series, "CT", CTImageStorage))
    mask = np.zeros(volume.shape, dtype=np.uint8)
    mask[0, 1:3, 1:3], mask[2, 4:6, 4:6] = 1, 2
    result = ModelResult(summary="2", label_map=mask, segment_labels=list(entry.labels),
                         segment_codes=entry.segment_codes())
    (artifact,) = SegWriter().write(result, volume, writer_spec("organs", "1"))
    seg = hd.seg.segread(io.BytesIO(artifact.data))
    bone, graft = seg.SegmentSequence
    assert bone.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "91723000"
    assert bone.SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Bone"
    assert graft.SegmentedPropertyCategoryCodeSequence[0].CodeMeaning == "Tissue"
    assert (graft.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator,
            graft.SegmentedPropertyTypeCodeSequence[0].CodeValue) == ("DCM", "130580")
    if shutil.which("dciodvfy"):
        path = tmp_path / "seg.dcm"
        path.write_bytes(artifact.data)
        check = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
        assert "Error" not in check.stderr, check.stderr


@pytest.mark.parametrize("codes, message", [
    ({"tumour": {"category": ["SCT", "49755003", "x"], "type": ["SCT", "108369006", "Tumor"]}},
     r"label_codes names \['tumour'\], which are not in labels"),
    ({"bone": {"category": ["SCT", "", "x"], "type": ["SCT", "272673000", "Bone"]}}, r"\[scheme, value, meaning\]"),
    ({"bone": {"category": ["SCT", "91723000"], "type": ["SCT", "272673000", "Bone"]}}, "category"),
])
def test_bad_codes_are_refused(codes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _entry(labels=["bone"], label_codes=codes)
