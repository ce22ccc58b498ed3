"""The phantom generator: deterministic, realistic HU, nodules in lungs, valid DICOM out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ImplicitVRLittleEndian, JPEG2000Lossless, RLELossless

from engine.phantom import HU_LUNG, generate_ct_phantom, main, write_ct_series


def test_deterministic_per_seed() -> None:
    a, b, c = generate_ct_phantom(5), generate_ct_phantom(5), generate_ct_phantom(6)
    assert np.array_equal(a.hu, b.hu) and a.nodules == b.nodules
    assert not np.array_equal(a.hu, c.hu)


def test_tissues_have_ct_values_and_nodules_sit_in_lung() -> None:
    phantom = generate_ct_phantom(9, nodules=3)
    assert len(phantom.nodules) == 3
    assert np.median(phantom.hu[:, :8, :8]) < -950                 # air in the corner
    assert phantom.hu.max() > 500                                    # bone
    middle = phantom.hu[len(phantom.hu) // 2]
    assert np.sum(np.abs(middle - HU_LUNG) < 80) > 0.1 * middle.size  # lungs
    nodule_hu = float(np.median(phantom.hu[phantom.nodule_mask]))
    assert -150 < nodule_hu < 120
    # every nodule voxel is surrounded by lung: dilate the mask and look at the shell
    from scipy import ndimage
    shell = ndimage.binary_dilation(phantom.nodule_mask, iterations=3) & ~ndimage.binary_dilation(
        phantom.nodule_mask, iterations=1)
    assert np.median(phantom.hu[shell]) < -600


@pytest.mark.parametrize("syntax", [None, ImplicitVRLittleEndian, RLELossless, JPEG2000Lossless])
def test_written_series_reads_back_with_geometry(tmp_path: Path, syntax) -> None:
    phantom = generate_ct_phantom(3, slices=6, size=64)
    kwargs = {"transfer_syntax": syntax} if syntax else {}
    paths = write_ct_series(phantom, tmp_path, **kwargs)
    assert [p.name for p in paths] == [f"slice_{i:04d}.dcm" for i in range(1, 7)]
    datasets = [pydicom.dcmread(p) for p in paths]
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 1
    assert all(ds.ImagesInAcquisition == 6 for ds in datasets)
    z = [float(ds.ImagePositionPatient[2]) for ds in datasets]
    assert np.allclose(np.diff(z), phantom.spacing[0])
    for index, ds in enumerate(datasets):
        hu = ds.pixel_array.astype(np.int32) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)
        assert np.array_equal(hu, phantom.hu[index])


def test_unsupported_syntax_and_cli(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unsupported transfer syntax"):
        write_ct_series(generate_ct_phantom(1, slices=2, size=32), tmp_path, transfer_syntax="1.2.840.10008.1.2.4.50")
    assert main([str(tmp_path / "cli"), "--seed", "2", "--slices", "4"]) == 0
    assert len(list((tmp_path / "cli").glob("*.dcm"))) == 4
