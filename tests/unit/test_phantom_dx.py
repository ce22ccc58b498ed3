"""Phantom radiographs: projection physics, nodule truth in image coordinates, and a DX file others can read."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.uid import DigitalXRayImageStorageForPresentation

from engine.synthetic.ct_phantom import CTPhantom, generate_ct_phantom
from engine.synthetic.dx_phantom import (
    MU_WATER_PER_MM,
    STORED_PER_UNIT,
    DXPhantom,
    attenuation_per_mm,
    expose,
    generate_dx_phantom,
    main,
    project,
    write_dx_image,
)

SMALL = {"slices": 48, "size": 128, "pixel_mm": 2.8}  # the default chest's field of view at coarser voxels
NODULE_CONTRAST_PER_MM = MU_WATER_PER_MM * (1.0 - (-850.0 + 1000.0) / 1000.0)  # soft tissue minus lung, per mm


@pytest.fixture(scope="module")
def pair() -> tuple[DXPhantom, DXPhantom]:
    """The same chest (same seed) with one large nodule and without: anatomy is drawn before the nodules."""
    return (generate_dx_phantom(5, nodules=1, nodule_radius_mm=(8.0, 9.0), **SMALL),
            generate_dx_phantom(5, nodules=0, **SMALL))


def test_attenuation_follows_hounsfield_units() -> None:
    mu = attenuation_per_mm(np.array([-1000, -2000, 0, 1000], dtype=np.int16))
    assert mu.dtype == np.float32
    assert mu.tolist() == pytest.approx([0.0, 0.0, MU_WATER_PER_MM, 2 * MU_WATER_PER_MM])


def test_projection_sums_along_y_with_the_head_at_the_top() -> None:
    hu = np.full((4, 3, 5), -1000, dtype=np.int16)
    hu[3, :, 1] = 0  # water through all rows, in the most superior slice (largest z), column 1
    hu[0, 1, 4] = 1000  # one bone voxel in the most inferior slice, column 4
    ct = CTPhantom(hu=hu, nodule_mask=np.zeros(hu.shape, bool), nodules=[], spacing=(2.0, 1.0, 1.0),
                   origin=(0.0, 0.0, 0.0), tissue=np.zeros(hu.shape, np.uint8))
    image, pixel_mm = project(ct)
    assert pixel_mm == 1.0 and image.shape == (8, 5)  # 4 slices of 2 mm -> 8 rows of 1 mm
    assert image[0, 1] == pytest.approx(3 * MU_WATER_PER_MM)  # 3 rows of 1 mm of water, at the top
    assert image[-1, 4] == pytest.approx(2 * MU_WATER_PER_MM)  # one voxel of bone, at the bottom
    assert image[0, 4] == 0.0 and image[-1, 1] == 0.0 and image[:, [0, 2, 3]].max() == 0.0


def test_beer_lambert_and_log_give_back_the_line_integral_with_quantum_noise() -> None:
    line = np.full((200, 200), 2.0, dtype=np.float32)
    rng = np.random.default_rng(0)
    noisy = expose(line, rng, photons=4000.0, blur_px=0.0)
    assert float(noisy.mean()) == pytest.approx(2.0, abs=0.01)
    expected_noise = 1.0 / np.sqrt(4000.0 * np.exp(-2.0))  # Poisson: relative error 1/sqrt(counts)
    assert float(noisy.std()) == pytest.approx(expected_noise, rel=0.1)
    quieter = expose(line, rng, photons=40000.0, blur_px=0.0)
    assert float(quieter.std()) == pytest.approx(expected_noise / np.sqrt(10.0), rel=0.1)
    with pytest.raises(ValueError, match="photons"):
        expose(line, rng, photons=0.0)


def test_a_realistic_chest_has_square_pixels_and_twelve_bits() -> None:
    phantom = generate_dx_phantom(7)
    assert phantom.shape == (171, 256) and phantom.pixel_mm == 1.4  # 96 slices x 2.5 mm -> 240 mm of 1.4 mm
    assert phantom.image.dtype == np.uint16 and int(phantom.image.max()) <= 4095
    assert np.array_equal(phantom.image, generate_dx_phantom(7).image)  # deterministic per seed
    lung_row = phantom.line_integral[85]
    assert lung_row[0] == 0.0  # air beside the body: nothing attenuates
    assert lung_row.max() > 3.0  # the spine, straight through the body


def test_nodule_truth_sits_on_the_projected_sphere(pair) -> None:
    with_nodule, without = pair
    (nodule,) = with_nodule.nodules
    difference = with_nodule.line_integral - without.line_integral
    peak = np.unravel_index(int(np.argmax(difference)), difference.shape)
    assert abs(peak[0] - nodule.row) <= 1.0 and abs(peak[1] - nodule.col) <= 1.0
    assert nodule.radius_px == pytest.approx(nodule.radius_mm / with_nodule.pixel_mm)
    # The chord through the centre is the diameter: 2 r of nodule instead of lung (less voxel and slice blur).
    assert float(difference.max()) == pytest.approx(2 * nodule.radius_mm * NODULE_CONTRAST_PER_MM, rel=0.25)
    outside = np.hypot(*np.subtract(np.indices(difference.shape), np.array([nodule.row, nodule.col])[:, None, None]))
    assert np.abs(difference[outside > nodule.radius_px + 2]).max() < 1e-3


def test_a_large_nodule_stands_out_of_the_noise(pair) -> None:
    with_nodule, without = pair
    (nodule,) = with_nodule.nodules
    # What the image adds to the nodule-free chest: the nodule plus quantum noise (and detector blur at edges).
    residual = with_nodule.image.astype(float) / STORED_PER_UNIT - without.line_integral
    distance = np.hypot(*np.subtract(np.indices(residual.shape), np.array([nodule.row, nodule.col])[:, None, None]))
    core = residual[distance <= 0.5 * nodule.radius_px]
    ring = residual[(distance > nodule.radius_px + 2) & (distance <= nodule.radius_px + 6)]
    assert core.mean() - ring.mean() > 4 * ring.std()  # far above the noise at its centre
    assert ring.std() > 0.02  # yet the noise is real: a few hundredths of the line integral per pixel


def test_dx_file_reads_back_and_highdicom_can_reference_it(tmp_path, pair) -> None:
    import highdicom as hd

    phantom, _ = pair
    path = write_dx_image(phantom, tmp_path, study_uid="1.2.3", series_uid="1.2.3.4", sop_instance_uid="1.2.3.4.5")
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == DigitalXRayImageStorageForPresentation == ds.file_meta.MediaStorageSOPClassUID
    assert (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID) == ("1.2.3", "1.2.3.4", "1.2.3.4.5")
    assert (ds.Modality, ds.BodyPartExamined, ds.ViewPosition, ds.PresentationIntentType) == \
        ("DX", "CHEST", "PA", "FOR PRESENTATION")
    assert list(ds.ImagerPixelSpacing) == list(ds.PixelSpacing) == [phantom.pixel_mm] * 2
    assert (ds.PhotometricInterpretation, ds.BitsAllocated, ds.BitsStored) == ("MONOCHROME2", 16, 12)
    assert list(ds.PatientOrientation) == ["L", "F"] and ds.PatientID == "PHANTOM"
    assert "ImagePositionPatient" not in ds and "ImageOrientationPatient" not in ds
    assert np.array_equal(ds.pixel_array, phantom.image)
    assert float(ds.WindowWidth) > 0

    descriptors = hd.sr.ImageLibraryEntryDescriptors(ds)  # TID 1603: projection radiography descriptors
    assert any(item.name == hd.sr.CodedConcept("111044", "DCM", "Patient Orientation Row") for item in descriptors)
    (nodule,) = phantom.nodules
    centre = (nodule.col + 0.5, nodule.row + 0.5)  # SCOORD: pixel centres at integer + 0.5
    region = hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.CIRCLE,
                               graphic_data=np.array([centre, (centre[0] + nodule.radius_px, centre[1])]),
                               source_image=hd.sr.SourceImageForRegion.from_source_image(ds))
    assert region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == "1.2.3.4.5"
    state = hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=[ds], series_instance_uid=hd.UID(), series_number=2, sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer="ScanStream", manufacturer_model_name="test", software_versions="1",
        device_serial_number="1", content_label="NODULE")
    assert state.ReferencedSeriesSequence[0].ReferencedImageSequence[0].ReferencedSOPInstanceUID == "1.2.3.4.5"


def test_command_line_writes_one_file(tmp_path, capsys) -> None:
    assert main([str(tmp_path), "--seed", "7", "--slices", "24", "--size", "96", "--nodules", "0"]) == 0
    (path,) = tmp_path.glob("*.dcm")
    ds = pydicom.dcmread(path)
    assert (ds.Rows, ds.Columns) == (43, 96)  # 24 slices of 2.5 mm at 1.4 mm pixels
    assert "with 0 nodule(s)" in capsys.readouterr().out


def test_same_nodules_as_the_ct_phantom() -> None:
    ct = generate_ct_phantom(11, nodules=2, noise_hu=0.0, **SMALL)
    dx = generate_dx_phantom(11, nodules=2, **SMALL)
    assert [n.radius_mm for n in dx.nodules] == [r for _, r in ct.nodules]
    for nodule, ((z, _, x), _) in zip(dx.nodules, ct.nodules):
        assert nodule.col == pytest.approx((x - ct.origin[0]) / 2.8)
        top = ct.origin[2] + (SMALL["slices"] - 0.5) * ct.spacing[0]
        assert nodule.row == pytest.approx((top - z) / 2.8 - 0.5)
