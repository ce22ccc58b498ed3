"""engine.dicom.values: plain values read from raw bytes equal pydicom's; anything else is left to pydicom."""

from __future__ import annotations

import io

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.filereader import read_dataset
from pydicom.uid import CTImageStorage, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from engine.dicom.values import NOT_PLAIN, RawHeader, plain_value
from engine.dicom.walk import walk_dataset
from engine.ledger.store import InstanceMeta
from engine.receiver.parse import _expected_native_pixel_bytes

VARIANTS = [
    {"SeriesDescription": "Chest CT  ", "Modality": "CT", "InstanceNumber": "7", "BodyPartExamined": "CHEST"},
    {"SeriesDescription": " leading space", "Modality": "CT ", "InstanceNumber": " 12 ", "ImagesInAcquisition": ""},
    {"SeriesDescription": "Thorax für Ärzte", "SpecificCharacterSet": "ISO_IR 100", "InstanceNumber": "3.0"},
    {"SeriesDescription": "a\\b", "ImagePositionPatient": ["1e2", "-.5", "+3"], "NumberOfFrames": "1"},
    {"SeriesDescription": "", "ImageOrientationPatient": ["1", "0", "0", "0", "1", "0"], "Modality": ""},
    {"SeriesDescription": "nan position", "ImagePositionPatient": ["nan", "0", "0"]},
    {"RequestedProcedurePriority": "stat", "SeriesDescription": "priority"},
    {"ImageOrientationPatient": "", "ImagePositionPatient": "", "SeriesDescription": "empty numbers"},
]


def encoded(values: dict, syntax: str) -> bytes:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, "1.2.3.4.5.6"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3.4", "1.2.3.4.5"
    ds.ImagePositionPatient = ["0.0", "-12.5", "100"]
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.SamplesPerPixel = 4, 6, 16, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    ds.PixelData = b"\x00" * 48
    buffer = DicomBytesIO()
    buffer.is_implicit_VR, buffer.is_little_endian = syntax == ImplicitVRLittleEndian, syntax != ExplicitVRBigEndian
    write_dataset(buffer, ds)  # the dataset alone, as a C-STORE carries it
    return buffer.getvalue()


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian])
@pytest.mark.parametrize("values", VARIANTS, ids=[str(i) for i in range(len(VARIANTS))])
def test_header_facts_equal_those_read_by_pydicom(values: dict, syntax: str) -> None:
    data = encoded(values, syntax)
    implicit, little = syntax == ImplicitVRLittleEndian, syntax != ExplicitVRBigEndian
    walked = walk_dataset(data, implicit, little)
    reference = read_dataset(io.BytesIO(data), implicit, little)
    for priority in ("", "RequestedProcedurePriority", "00401003"):
        try:
            expected = InstanceMeta.from_dataset(reference, priority)
        except ValueError as error:
            with pytest.raises(ValueError, match=str(error)[:20]):
                InstanceMeta.from_dataset(RawHeader(walked.elements), priority)
            continue
        assert InstanceMeta.from_dataset(RawHeader(walked.elements), priority) == expected
    assert _expected_native_pixel_bytes(RawHeader(walked.elements)) == _expected_native_pixel_bytes(reference)
    for raw in walked.elements.values():
        value = plain_value(raw)
        if value is not NOT_PLAIN:
            assert value == reference[raw.tag].value, raw.tag


def test_non_ascii_text_and_several_values_are_left_to_pydicom() -> None:
    walked = walk_dataset(encoded(VARIANTS[2], ExplicitVRLittleEndian), False, True)
    header = RawHeader(walked.elements)
    assert plain_value(walked.elements[0x0008103E]) is NOT_PLAIN
    assert header.get("SeriesDescription") == "Thorax für Ärzte"
    assert header.get("StudyDescription") is None and "StudyDescription" not in header
    with pytest.raises(AttributeError):
        header.StudyDescription  # noqa: B018 - absent, as on a Dataset
