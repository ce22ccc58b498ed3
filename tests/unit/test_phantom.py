"""The phantom generator: deterministic, CT-like HU per tissue, nodules in lungs, valid DICOM out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)
from scipy import ndimage

from engine.api import SeriesInfo
from engine.synthetic.ct_phantom import (
    AIR,
    BONE,
    FAT,
    LUNG,
    NODULE,
    SOFT,
    VESSEL,
    check_transfer_syntax,
    generate_ct_phantom,
    main,
    write_ct_series,
)
from engine.worker.decode import decode_series


@pytest.fixture(scope="module")
def phantom():
    return generate_ct_phantom(9, nodules=3)


def test_same_seed_same_phantom_other_seed_other_phantom() -> None:
    a, b, c = generate_ct_phantom(5), generate_ct_phantom(5), generate_ct_phantom(6)
    assert np.array_equal(a.hu, b.hu) and np.array_equal(a.nodule_mask, b.nodule_mask)
    assert a.nodules == b.nodules
    assert not np.array_equal(a.hu, c.hu)


def test_shapes_types_and_geometry(phantom) -> None:
    assert phantom.hu.shape == phantom.nodule_mask.shape == phantom.tissue.shape == (48, 256, 256)
    assert phantom.hu.dtype == np.int16 and phantom.nodule_mask.dtype == bool
    assert phantom.spacing == (2.5, 1.4, 1.4)
    # the isocentre sits in the middle of the volume
    assert phantom.origin == pytest.approx((-127.5 * 1.4, -127.5 * 1.4, -23.5 * 2.5))
    assert int(phantom.hu.min()) >= -1024 and int(phantom.hu.max()) <= 3071


@pytest.mark.parametrize("tissue, low, high", [
    (AIR, -1010, -990), (FAT, -130, -60), (SOFT, 20, 60), (LUNG, -870, -830), (BONE, 450, 750), (NODULE, 20, 70),
])
def test_tissue_median_hu(phantom, tissue: int, low: float, high: float) -> None:
    interior = ndimage.binary_erosion(phantom.tissue == tissue, iterations=2)
    if tissue == NODULE:
        interior = ndimage.binary_erosion(phantom.tissue == tissue, structure=np.ones((1, 5, 5)))
    assert interior.sum() > 50
    assert low <= float(np.median(phantom.hu[interior])) <= high


def test_noise_is_about_20_hu_and_vessels_disturb_a_threshold(phantom) -> None:
    lung = ndimage.binary_erosion(phantom.tissue == LUNG, iterations=3)
    assert 15 < float(np.std(phantom.hu[lung])) < 25
    vessels = phantom.tissue == VESSEL
    assert vessels.any()
    # soft-tissue-like voxels inside the lungs are not all nodule: a plain threshold finds vessels too
    bright_in_lungs = (phantom.hu > -300) & ((phantom.tissue == VESSEL) | (phantom.tissue == NODULE))
    assert (bright_in_lungs & ~phantom.nodule_mask).sum() > 0.1 * phantom.nodule_mask.sum()


def test_nodules_are_spheres_inside_the_lungs(phantom) -> None:
    assert len(phantom.nodules) == 3
    z_mm, row_mm, col_mm = phantom.spacing
    labels, count = ndimage.label(phantom.nodule_mask)
    assert count == 3
    for (z, y, x), radius in phantom.nodules:
        assert 3.0 <= radius <= 10.0
        index = (round((z - phantom.origin[2]) / z_mm), round((y - phantom.origin[1]) / row_mm),
                 round((x - phantom.origin[0]) / col_mm))
        assert phantom.nodule_mask[index]
        voxels = int((labels == labels[index]).sum())
        assert voxels == pytest.approx(4 / 3 * np.pi * radius ** 3 / (z_mm * row_mm * col_mm), rel=0.3)
    shell = ndimage.binary_dilation(phantom.nodule_mask, iterations=2) & ~phantom.nodule_mask
    assert set(np.unique(phantom.tissue[shell]).tolist()) <= {LUNG, VESSEL}
    assert np.array_equal(phantom.tissue == NODULE, phantom.nodule_mask)


def test_lungs_are_walled_off_from_bone_and_air(phantom) -> None:
    lungs = np.isin(phantom.tissue, (LUNG, VESSEL, NODULE))
    near_lungs = ndimage.binary_dilation(lungs, structure=np.ones((1, 5, 5))) & ~lungs
    assert set(np.unique(phantom.tissue[near_lungs]).tolist()) == {SOFT}


def test_nodule_radius_range_is_respected() -> None:
    small = generate_ct_phantom(21, nodules=3, nodule_radius_mm=(3.0, 4.0))
    assert all(3.0 <= radius <= 4.0 for _, radius in small.nodules)
    with pytest.raises(ValueError, match="radius range"):
        generate_ct_phantom(21, nodule_radius_mm=(5.0, 2.0))


def test_random_nodule_count_is_zero_to_three() -> None:
    counts = {len(generate_ct_phantom(seed, slices=24, size=128).nodules) for seed in range(12)}
    assert counts <= {0, 1, 2, 3} and 0 in counts and len(counts) >= 3


def test_requested_nodules_that_do_not_fit_raise() -> None:
    with pytest.raises(ValueError, match="nodules fit"):
        generate_ct_phantom(1, slices=2, size=64, nodules=3)


def _read_back(paths: list[Path]) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p) for p in paths]


def test_written_series_has_ct_headers_and_geometry(tmp_path: Path, phantom) -> None:
    paths = write_ct_series(phantom, tmp_path, study_uid="1.2.3", series_uid="1.2.3.4", patient_id="P1")
    assert [p.name for p in paths] == [f"slice_{i:04d}.dcm" for i in range(1, 49)]
    datasets = _read_back(paths)
    first = datasets[0]
    assert first.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert first.SOPClassUID == first.file_meta.MediaStorageSOPClassUID == CTImageStorage
    assert first.Modality == "CT" and first.PatientID == "P1" and first.BodyPartExamined == "CHEST"
    assert first.StudyDate and first.StudyTime and first.FrameOfReferenceUID
    assert [float(v) for v in first.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    assert [float(v) for v in first.PixelSpacing] == [1.4, 1.4] and float(first.SliceThickness) == 2.5
    assert (first.BitsAllocated, first.BitsStored, first.PixelRepresentation) == (16, 12, 0)
    assert (float(first.RescaleIntercept), float(first.RescaleSlope)) == (-1024.0, 1.0)
    assert [float(v) for v in first.ImagePositionPatient] == pytest.approx(phantom.origin)
    z = np.array([float(ds.ImagePositionPatient[2]) for ds in datasets])
    assert np.allclose(np.diff(z), 2.5)
    assert [ds.InstanceNumber for ds in datasets] == list(range(1, 49))
    assert {ds.ImagesInAcquisition for ds in datasets} == {48}
    assert {ds.StudyInstanceUID for ds in datasets} == {"1.2.3"}
    assert {ds.SeriesInstanceUID for ds in datasets} == {"1.2.3.4"}
    assert len({ds.FrameOfReferenceUID for ds in datasets}) == 1
    assert len({ds.SOPInstanceUID for ds in datasets}) == 48
    assert all(ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID for ds in datasets)
    hu = np.stack([ds.pixel_array.astype(np.int32) + int(ds.RescaleIntercept) for ds in datasets])
    assert np.array_equal(hu, phantom.hu)


def test_engine_decoder_rebuilds_the_phantom_volume(tmp_path: Path, phantom) -> None:
    paths = write_ct_series(phantom, tmp_path)
    series = SeriesInfo("1.2", "1.2.3", "CT", CTImageStorage, instance_count=len(paths))
    volume = decode_series([p.read_bytes() for p in reversed(paths)], series)
    assert np.array_equal(volume.voxels, phantom.hu.astype(np.float32))
    assert volume.spacing == pytest.approx(phantom.spacing)
    assert volume.origin == pytest.approx(phantom.origin)


def test_default_uids_are_fresh(tmp_path: Path) -> None:
    small = generate_ct_phantom(3, slices=2, size=32)
    a = _read_back(write_ct_series(small, tmp_path / "a"))[0]
    b = _read_back(write_ct_series(small, tmp_path / "b"))[0]
    assert a.StudyInstanceUID != b.StudyInstanceUID and a.SeriesInstanceUID != b.SeriesInstanceUID


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, RLELossless, JPEG2000Lossless, JPEGLSLossless])
def test_other_transfer_syntaxes_round_trip_losslessly(tmp_path: Path, syntax: str) -> None:
    try:
        check_transfer_syntax(syntax)
    except ValueError as exc:
        if syntax == RLELossless:  # pydicom's own RLE encoder is always there
            raise
        pytest.skip(str(exc))
    small = generate_ct_phantom(4, slices=12, size=96, nodules=1)
    datasets = _read_back(write_ct_series(small, tmp_path, transfer_syntax=syntax))
    for index, ds in enumerate(datasets):
        assert ds.file_meta.TransferSyntaxUID == syntax
        assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
        assert np.array_equal(ds.pixel_array.astype(np.int32) + int(ds.RescaleIntercept), small.hu[index])


def test_unsupported_syntax_is_a_clear_value_error(tmp_path: Path) -> None:
    small = generate_ct_phantom(1, slices=2, size=32)
    with pytest.raises(ValueError, match="cannot write transfer syntax"):
        write_ct_series(small, tmp_path, transfer_syntax=JPEGBaseline8Bit)
    assert not list(tmp_path.glob("*.dcm"))


def test_cli_writes_a_study(tmp_path: Path, capsys) -> None:
    assert main([str(tmp_path / "cli"), "--seed", "2", "--slices", "16", "--nodules", "1", "--syntax", "rle"]) == 0
    files = sorted((tmp_path / "cli").glob("*.dcm"))
    assert len(files) == 16
    assert pydicom.dcmread(files[0]).file_meta.TransferSyntaxUID == RLELossless
    assert "1 nodule" in capsys.readouterr().out
