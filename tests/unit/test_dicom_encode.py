"""Elements encoded straight to bytes, spliced into a Part-10 file, are what pydicom writes for the same dataset."""

from __future__ import annotations

import io

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from engine.dicom.encode import element, item, padded, part10_with_elements, sequence, uid_element

REFERENCED_SERIES, SOURCE_IMAGES = 0x00081115, 0x00082112


def _reference(instance_uid: str) -> Dataset:
    ref = Dataset()
    ref.ReferencedSOPClassUID = CTImageStorage
    ref.ReferencedSOPInstanceUID = instance_uid
    return ref


def _dataset(charset: str = "ISO_IR 100", syntax: str = ExplicitVRLittleEndian) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.SpecificCharacterSet = charset
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "SEG"
    ds.PatientName = "Müller^Jürgen"  # text after the spliced elements, in the dataset's character set
    ds.PatientID = "P1"
    ds.SeriesInstanceUID = generate_uid()
    ds.Rows = 3
    ds.add_new(0x7FE00010, "OB", b"\x01\x02")
    return ds


def _saved(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.mark.parametrize("uids", [1, 2, 5])
def test_spliced_sequences_are_byte_for_byte_pydicoms(uids: int) -> None:
    instance_uids = [generate_uid() for _ in range(uids)] + ["1.2.3"]  # odd and even lengths
    series_uid = generate_uid()
    full = _dataset()
    full.SourceImageSequence = [_reference(uid) for uid in instance_uids]
    series = Dataset()
    series.ReferencedInstanceSequence = [_reference(uid) for uid in instance_uids]
    series.SeriesInstanceUID = series_uid
    full.ReferencedSeriesSequence = [series]

    partial = _dataset()
    for keyword in ("SOPInstanceUID", "SeriesInstanceUID"):
        setattr(partial, keyword, full[keyword].value)
    references = [item((uid_element(0x00081150, CTImageStorage), uid_element(0x00081155, uid)))
                  for uid in instance_uids]
    spliced = part10_with_elements(partial, {
        SOURCE_IMAGES: sequence(SOURCE_IMAGES, references),
        REFERENCED_SERIES: sequence(REFERENCED_SERIES, [item((sequence(0x0008114A, references),
                                                              uid_element(0x0020000E, series_uid)))]),
    })
    assert spliced == _saved(full)


def test_no_spliced_elements_is_a_plain_save() -> None:
    ds = _dataset()
    assert part10_with_elements(ds, {}) == _saved(ds)


def test_text_padding_and_long_form_lengths() -> None:
    assert padded("ABC", b" ") == b"ABC "
    assert element(0x00100020, b"LO", padded("P1", b" ")) == b"\x10\x00\x20\x00LO\x02\x00P1"
    assert element(0x7FE00010, b"OB", b"\x00\x01") == b"\xe0\x7f\x10\x00OB\x00\x00\x02\x00\x00\x00\x00\x01"


def test_refuses_implicit_syntax_and_elements_already_present() -> None:
    with pytest.raises(ValueError, match="Explicit VR Little Endian"):
        part10_with_elements(_dataset(syntax=ImplicitVRLittleEndian), {})
    with pytest.raises(ValueError, match="already holds"):
        part10_with_elements(_dataset(), {0x00100020: element(0x00100020, b"LO", b"P2")})
