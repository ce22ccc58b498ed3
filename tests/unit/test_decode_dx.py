"""A projection radiograph (DX) decodes to a one-image volume, and the receiver takes it as a series."""

from __future__ import annotations

import io

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, UID

from engine.api import SeriesInfo
from engine.synthetic.dx_phantom import DXPhantom, dx_dataset, generate_dx_phantom
from engine.receiver.assembler import IDLE, completion_reason, geometric_completion
from engine.ledger.store import InstanceMeta, InstanceRow
from engine.receiver.parse import parse_instance
from engine.worker.decode import DEFAULT_ORIENTATION, decode_series, projection_orientation

SERIES = SeriesInfo("1.2.3", "1.2.3.9", "DX", DigitalXRayImageStorageForPresentation, body_part="CHEST",
                    instance_count=1, frame_count=1)


@pytest.fixture(scope="module")
def phantom() -> DXPhantom:
    return generate_dx_phantom(3, slices=16, size=64, pixel_mm=5.6, nodules=0)


def part10(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_a_radiograph_decodes_to_one_image_at_the_origin(phantom) -> None:
    volume = decode_series([part10(dx_dataset(phantom))], SERIES)
    rows, cols = phantom.shape
    assert volume.shape == (1, rows, cols)
    assert np.array_equal(volume.stored[0], phantom.image) and volume.stored.dtype == np.uint16
    assert volume.spacing == (1.0, phantom.pixel_mm, phantom.pixel_mm)
    assert volume.origin == (0.0, 0.0, 0.0)
    assert volume.orientation == (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)  # PatientOrientation L\F: a PA chest
    assert (volume.slope, volume.intercept) == (1.0, 0.0) and volume.frames == [(0, 1)]
    assert volume.patient_coordinates(np.array([[0, 2, 1]])).tolist() == [[phantom.pixel_mm, 0.0,
                                                                           -2 * phantom.pixel_mm]]


def test_imager_pixel_spacing_stands_in_for_pixel_spacing(phantom) -> None:
    ds = dx_dataset(phantom)
    del ds.PixelSpacing
    ds.ImagerPixelSpacing = [0.5, 0.25]
    volume = decode_series([part10(ds)], SERIES)
    assert volume.spacing == (1.0, 0.5, 0.25)
    ds.PixelSpacing = [0.4, 0.2]  # calibrated spacing wins over the detector's
    assert decode_series([part10(ds)], SERIES).spacing == (1.0, 0.4, 0.2)


@pytest.mark.parametrize(("value", "expected"), [
    (["L", "F"], (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)),
    (["R", "F"], (-1.0, 0.0, 0.0, 0.0, 0.0, -1.0)),  # an AP view
    (["P", "F"], (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)),  # a lateral view
    (["LP", "F"], None),  # oblique
    (["L", "R"], None),  # not perpendicular
    (["L"], None),
    (None, None),
])
def test_patient_orientation_to_direction_cosines(value, expected) -> None:
    ds = Dataset()
    if value is not None:
        ds.PatientOrientation = value
    assert projection_orientation(ds) == expected


def test_without_any_orientation_the_default_is_used(phantom) -> None:
    ds = dx_dataset(phantom)
    del ds.PatientOrientation
    assert decode_series([part10(ds)], SERIES).orientation == DEFAULT_ORIENTATION


def test_the_receiver_takes_a_radiograph_and_completes_it_when_idle(phantom) -> None:
    ds = dx_dataset(phantom)
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, ds)
    meta = parse_instance(buffer.getvalue(), UID(ExplicitVRLittleEndian), 2**31 - 1)
    assert isinstance(meta, InstanceMeta)
    assert (meta.modality, meta.body_part) == ("DX", "CHEST")
    assert meta.sop_class_uid == DigitalXRayImageStorageForPresentation
    assert meta.image_position is None and meta.position_along_normal() is None
    row = InstanceRow(meta.sop_instance_uid, "n0", meta.position_along_normal(), meta.image_orientation,
                      meta.images_in_acquisition, meta.number_of_frames, meta.instance_number)
    assert geometric_completion([row]) is None  # no geometry: it cannot prove itself whole...
    assert completion_reason([row], now=10.0, last_received=9.0, idle_timeout=5.0) is None
    assert completion_reason([row], now=15.0, last_received=9.0, idle_timeout=5.0) == IDLE  # ...the idle rule does
