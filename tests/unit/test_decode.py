"""Decoding a series: slice order along the normal, rescale, multi-frame, errors."""

from __future__ import annotations

import io

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage

from tests.unit.factories import ct_slice

from engine.api import SeriesInfo
from engine.worker.decode import DecodeError, build_volume, decode_series, slice_normal

SERIES = SeriesInfo("1.2.3", "1.2.3.4", "CT", CTImageStorage)


def test_slices_are_ordered_along_the_normal_not_instance_number() -> None:
    payload = [ct_slice(z, value=int(z) + 1024, number=n)
               for n, z in enumerate([5.0, -5.0, 0.0, 10.0], start=1)]
    volume = decode_series(payload, SERIES)
    assert volume.voxels.shape == (4, 4, 4)
    assert volume.voxels[:, 0, 0].tolist() == [-5.0, 0.0, 5.0, 10.0]
    assert volume.spacing == (5.0, 0.7, 0.8)
    assert volume.origin == (0.0, 0.0, -5.0)
    assert [source for source, _ in volume.frames] == [1, 2, 0, 3]


def test_sagittal_orientation_uses_its_own_normal() -> None:
    orientation = (0, 1, 0, 0, 0, -1)
    assert np.allclose(slice_normal(orientation), [-1, 0, 0])
    payload = [ct_slice(x, value=100 + int(x), orientation=orientation) for x in (2.0, 0.0, 1.0)]
    volume = decode_series(payload, SERIES)
    assert volume.voxels[:, 0, 0].tolist() == [102 - 1024, 101 - 1024, 100 - 1024]


def test_per_slice_rescale_is_applied() -> None:
    payload = [ct_slice(0.0, 10, slope=2.0, intercept=-5.0), ct_slice(1.0, 10, slope=1.0, intercept=0.0)]
    volume = decode_series(payload, SERIES)
    assert volume.voxels.dtype == np.float32
    assert volume.voxels[:, 0, 0].tolist() == [15.0, 10.0]
    assert volume.stored.dtype == np.float32 and (volume.slope, volume.intercept) == (1.0, 0.0)


def test_one_rescale_for_all_slices_keeps_the_stored_type() -> None:
    payload = [ct_slice(z, value=1000 + int(z)) for z in (0.0, 1.0, 2.0)]
    volume = decode_series(payload, SERIES)
    assert volume.stored.dtype == np.dtype(payload_dtype(payload[0]))
    assert (volume.slope, volume.intercept) == (1.0, -1024.0)
    assert volume.voxels[:, 0, 0].tolist() == [1000 - 1024, 1001 - 1024, 1002 - 1024]
    assert volume.shape == (3, 4, 4)


def payload_dtype(raw: bytes) -> np.dtype:
    """The numpy type pydicom decodes this test slice's pixels to."""
    import pydicom

    return pydicom.dcmread(io.BytesIO(raw)).pixel_array.dtype


def test_unreadable_instance_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="instance 1"):
        decode_series([ct_slice(0.0, 1), b"not dicom at all"], SERIES)
    with pytest.raises(DecodeError, match="no instances"):
        decode_series([], SERIES)


def test_degenerate_orientation_is_refused() -> None:
    with pytest.raises(DecodeError, match="parallel"):
        slice_normal((1, 0, 0, 1, 0, 0))


def test_multiframe_positions_from_functional_groups() -> None:
    import pydicom
    ds = pydicom.dcmread(io.BytesIO(ct_slice(0.0, 0)))
    ds.NumberOfFrames = 3
    frames = np.stack([np.full((4, 4), v, dtype=np.uint16) for v in (30, 10, 20)])
    ds.PixelData = frames.tobytes()
    per_frame = []
    for z in (3.0, 1.0, 2.0):
        item, plane = Dataset(), Dataset()
        plane.ImagePositionPatient = [0.0, 0.0, z]
        item.PlanePositionSequence = [plane]
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    volume = build_volume([ds], SERIES)
    assert volume.voxels[:, 0, 0].tolist() == [10 - 1024, 20 - 1024, 30 - 1024]
    assert volume.frames == [(0, 2), (0, 3), (0, 1)]


@pytest.mark.parametrize("compress", [False, True])  # native little endian (fast path), RLE (pydicom)
def test_pixels_match_pydicom_on_both_paths(compress: bool, tmp_path) -> None:
    import pydicom
    from pydicom.uid import RLELossless

    from engine.synthetic.ct_phantom import generate_ct_phantom, write_ct_series

    raw = []
    for path in write_ct_series(generate_ct_phantom(9, slices=3, size=32), tmp_path):
        ds = pydicom.dcmread(path)
        if compress:
            ds.compress(RLELossless)
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        raw.append(buffer.getvalue())
    volume = decode_series(raw, SERIES)
    datasets = [pydicom.dcmread(io.BytesIO(r)) for r in raw]
    order = np.argsort([float(ds.ImagePositionPatient[2]) for ds in datasets], kind="stable")
    expected = np.stack([datasets[i].pixel_array for i in order])
    assert volume.stored.dtype == expected.dtype and np.array_equal(volume.stored, expected)


def test_unused_high_bits_are_masked_on_the_fast_path() -> None:
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(ct_slice(0.0, 1000)))
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, 0
    pixels = np.frombuffer(ds.PixelData, dtype="<u2").copy()
    assert pixels.max() < 0x1000
    ds.PixelData = (pixels | 0xF000).tobytes()  # garbage in the unused high bits
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    volume = decode_series([buffer.getvalue()], SERIES)
    assert np.array_equal(volume.stored[0], pixels.reshape(volume.stored.shape[1:]))
