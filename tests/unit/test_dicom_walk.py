"""engine.dicom.walk and the worker's fast header path: the same datasets and volumes as pydicom's reader."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    CTImageStorage, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ExplicitVRLittleEndian,
    ImplicitVRLittleEndian, RLELossless,
)

from tests.unit.factories import ct_slice, resave

from engine.api import SeriesInfo
from engine.dicom.values import RawHeader
from engine.dicom.walk import MalformedDataset, read_part10, walk_dataset
from engine.synthetic.ct_phantom import generate_ct_phantom, write_ct_series
from engine.worker.decode import build_volume, decode_series
from engine.dicom.fast_header import fast_instance

SERIES = SeriesInfo("1.2.3", "1.2.3.4", "CT", CTImageStorage)


def assert_same(walked: Dataset, read: Dataset) -> None:
    assert walked.file_meta == read.file_meta
    assert sorted(walked.keys()) == sorted(read.keys())
    for element in read:
        assert walked[element.tag].value == element.value, element.tag


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless])
@pytest.mark.parametrize("undefined", [False, True], ids=["defined", "undefined-length sequences"])
def test_read_part10_matches_dcmread(syntax: str, undefined: bool) -> None:
    blob = resave(ct_slice(1.5, 1100, size=8), syntax, undefined)
    part10 = read_part10(blob)
    assert part10 is not None and part10.transfer_syntax == syntax
    assert_same(part10.dataset, pydicom.dcmread(io.BytesIO(blob)))
    assert part10.dataset.SeriesDescription == "Thorax für Ärzte"
    assert part10.dataset.ProcedureCodeSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == "1.2.3.4.5"


def test_deflated_and_big_endian_files_are_left_to_pydicom() -> None:
    assert read_part10(resave(ct_slice(0.0, 1000), DeflatedExplicitVRLittleEndian)) is None
    little = ct_slice(0.0, 1000)
    big = little.replace(ExplicitVRLittleEndian.encode(), ExplicitVRBigEndian.encode(), 1)  # same length
    assert big != little and read_part10(big) is None


def test_files_without_a_preamble_or_cut_short_are_left_to_pydicom() -> None:
    blob = ct_slice(0.0, 1000)
    assert read_part10(blob[132:]) is None
    assert read_part10(blob[:-10]) is None


def dataset_part(blob: bytes) -> bytes:
    """The dataset after the preamble and the file meta group."""
    part10 = read_part10(blob)
    assert part10 is not None
    return blob[132 + 12 + int(part10.dataset.file_meta.FileMetaInformationGroupLength):]


def test_walk_says_where_a_dataset_is_cut() -> None:
    body = dataset_part(resave(ct_slice(0.0, 1000, size=8), ExplicitVRLittleEndian, undefined_sequences=True))
    walk_dataset(body, implicit=False, little=True)  # whole: no error
    for cut in (len(body) - 5, len(body) // 2, 11):
        with pytest.raises(MalformedDataset, match="dataset ends inside") as raised:
            walk_dataset(body[:cut], implicit=False, little=True)
        assert raised.value.truncated


def test_walk_keeps_only_the_tags_asked_for_but_reports_pixels() -> None:
    body = dataset_part(ct_slice(0.0, 1000, size=4))
    walked = walk_dataset(body, implicit=False, little=True, keep={0x00080060, 0x00200032})
    assert set(walked.elements) == {0x00080060, 0x00200032}
    assert walked.has_pixels and walked.pixel_data_length == 4 * 4 * 2
    assert RawHeader(walked.elements).get("Modality") == "CT"


def test_fast_volume_equals_the_pydicom_volume(tmp_path: Path) -> None:
    paths = write_ct_series(generate_ct_phantom(5, slices=6, size=32), tmp_path)
    blobs = [path.read_bytes() for path in reversed(paths)]
    assert all(fast_instance(read_part10(blob)) is not None for blob in blobs)  # type: ignore[arg-type]
    fast = decode_series(blobs, SERIES)
    slow = build_volume([pydicom.dcmread(io.BytesIO(blob)) for blob in blobs], SERIES)
    np.testing.assert_array_equal(fast.stored, slow.stored)
    assert (fast.spacing, fast.origin, fast.orientation, fast.frames, fast.slope, fast.intercept) == (
        slow.spacing, slow.origin, slow.orientation, slow.frames, slow.slope, slow.intercept)
    assert [ds.SOPInstanceUID for ds in fast.sources] == [ds.SOPInstanceUID for ds in slow.sources]


def test_compressed_and_signed_pixels_take_the_pydicom_path() -> None:
    compressed = read_part10(resave(ct_slice(0.0, 1000), RLELossless))
    assert compressed is not None and fast_instance(compressed) is None
    ds = pydicom.dcmread(io.BytesIO(ct_slice(0.0, 1000)))
    ds.PixelRepresentation, ds.BitsStored = 1, 12  # signed with unused high bits: needs sign extension
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    signed = read_part10(buffer.getvalue())
    assert signed is not None and fast_instance(signed) is None
