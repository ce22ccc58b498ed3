"""The SEG writer's output equals highdicom's own SEG built from every source image of the series."""

from __future__ import annotations

import io

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, generate_uid

from engine.api import ModelResult, SeriesInfo
from engine.outputs.seg import SegWriter, seg_options
from engine.worker.decode import decode_series
from tests.unit.factories import ct_slice, writer_spec

SLICES, SIZE = 10, 8
# Values that differ between any two builds: creation times and highdicom's random dimension organisation UID.
PER_BUILD = {"InstanceCreationDate", "InstanceCreationTime", "ContentDate", "ContentTime", "ContributionDateTime",
             "DimensionOrganizationUID"}


SPEC = writer_spec("parity-seg", "1.0")


def _volume(spacing_between_slices: float | None = None, gap_at: int | None = None):
    study, series = generate_uid(), generate_uid()
    positions = [float(z) * 1.5 + (3.0 if gap_at is not None and z >= gap_at else 0.0) for z in range(SLICES)]
    payload = [ct_slice(z, 1000 + n, number=n + 1, size=SIZE, study_uid=study, series_uid=series)
               for n, z in enumerate(reversed(positions))]
    volume = decode_series(payload, SeriesInfo(study, series, "CT", CTImageStorage))
    if spacing_between_slices is not None:
        for source in volume.sources:
            source.SpacingBetweenSlices = spacing_between_slices
    return volume


def _reference(result: ModelResult, volume) -> bytes:
    """What highdicom writes given every source image and the whole label map."""
    seg = hd.seg.Segmentation(source_images=[volume.sources[i] for i, _ in volume.frames],
                              pixel_array=result.label_map.astype(np.uint8), **seg_options(result, volume, SPEC))
    buffer = io.BytesIO()
    seg.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _flatten(ds: Dataset, path: str = "") -> dict[str, object]:
    values: dict[str, object] = {}
    for element in ds:
        if element.keyword in PER_BUILD:
            continue
        key = f"{path}{element.keyword or element.tag}"
        if element.VR == "SQ":
            values[f"{key}#items"] = len(element.value)
            for index, child in enumerate(element.value):
                values.update(_flatten(child, f"{key}[{index}]."))
        else:
            values[key] = bytes(element.value) if element.tag == 0x7FE00010 else element.value
    return values


def _mask(planes_by_segment: dict[int, list[int]]) -> np.ndarray:
    mask = np.zeros((SLICES, SIZE, SIZE), np.uint8)
    for segment, planes in planes_by_segment.items():
        for plane in planes:
            mask[plane, segment: segment + 3, 1 + plane % 3: 4 + plane % 3] = segment
    return mask


CASES = {
    "gaps": ({1: [2, 3, 7]}, {}),
    "contiguous (3D)": ({1: [3, 4, 5, 6]}, {}),
    "one plane": ({1: [9]}, {}),
    "every plane": ({1: list(range(SLICES))}, {}),
    "two segments": ({1: [1, 2], 2: [2, 5]}, {}),
    "stated spacing": ({1: [2, 4]}, {"spacing_between_slices": 1.5}),
    "irregular series": ({1: [1, 6]}, {"gap_at": 5}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_seg_equals_highdicom_from_all_sources(case: str) -> None:
    planes, volume_options = CASES[case]
    volume = _volume(**volume_options)
    labels = ["Nodule", "Mass"][: len(planes)]
    result = ModelResult(summary="x", label_map=_mask(planes), segment_labels=labels)
    (artifact,) = SegWriter().write(result, volume, SPEC)
    ours = pydicom.dcmread(io.BytesIO(artifact.data))
    theirs = pydicom.dcmread(io.BytesIO(_reference(result, volume)))
    assert _flatten(ours.file_meta) == _flatten(theirs.file_meta)
    mine, reference = _flatten(ours), _flatten(theirs)
    assert sorted(mine) == sorted(reference)
    assert {k: v for k, v in mine.items() if mine[k] != reference[k]} == {}
    assert len(ours.SourceImageSequence) == SLICES
    seg = hd.seg.segread(io.BytesIO(artifact.data))
    for segment, segment_planes in planes.items():
        uids = [str(volume.sources[volume.frames[p][0]].SOPInstanceUID) for p in segment_planes]
        pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[segment])
        assert pixels[..., 0].astype(bool).tolist() == (result.label_map[segment_planes] == segment).tolist()
