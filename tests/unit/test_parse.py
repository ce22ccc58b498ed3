"""Parsing received datasets: completeness walk, header facts, deflate cap, UID safety."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)

from engine.receiver.parse import InstanceRejected, inflate, is_safe_uid, parse_instance, validate_uids
from engine.receiver.statuses import StoreStatus

SOP = "1.2.826.0.1.3680043.8.498.7"


def image(frames: int = 1) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, SOP
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3", "1.2.3.4"
    ds.Modality, ds.InstanceNumber, ds.ImagesInAcquisition = "CT", 3, 10
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, 7.5], [1, 0, 0, 0, 1, 0]
    inner = Dataset()
    inner.CodeValue, inner.CodingSchemeDesignator = "T-D3000", "SRT"
    outer = Dataset()
    outer.AnatomicRegionSequence = Sequence([inner])
    ds.ReferencedImageSequence = Sequence([outer])
    undefined_lengths(ds)
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 16, 12, 11, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = np.arange(64 * frames, dtype=np.uint16).tobytes()
    return ds


def undefined_lengths(ds: Dataset) -> None:
    """Write every sequence and item of ``ds`` with undefined length (delimiters to walk)."""
    for element in ds:
        if element.VR == "SQ":
            element.is_undefined_length = True
            for item in element.value:
                item.is_undefined_length_sequence_item = True
                undefined_lengths(item)


def encode(ds: Dataset, syntax: str) -> bytes:
    uid = UID(syntax)
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = uid.is_little_endian, uid.is_implicit_VR
    write_dataset(buffer, ds)
    return buffer.getvalue()


def rejected_with(status: StoreStatus, raw: bytes, syntax: str, cap: int = 2**31 - 1) -> str:
    with pytest.raises(InstanceRejected) as caught:
        parse_instance(raw, UID(syntax), cap)
    assert caught.value.status == status
    return caught.value.reason


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian])
def test_header_facts_in_every_uncompressed_syntax(syntax: str) -> None:
    meta = parse_instance(encode(image(), syntax), UID(syntax), 2**31 - 1)
    assert (meta.sop_instance_uid, meta.series_uid, meta.instance_number, meta.images_in_acquisition) == \
        (SOP, "1.2.3.4", 3, 10)
    assert meta.position_along_normal() == 7.5


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian])
def test_every_cut_is_found(syntax: str) -> None:
    raw = encode(image(), syntax)
    statuses = set()
    for cut in range(1, len(raw)):  # inside headers, values, nested items, the pixel data, and between elements
        with pytest.raises(InstanceRejected) as caught:
            parse_instance(raw[:-cut], UID(syntax), 2**31 - 1)
        statuses.add(caught.value.status)
    # C001 for a cut inside an element; A900 (an image without pixel data) for a cut between two
    assert statuses == {StoreStatus.CANNOT_UNDERSTAND_TRUNCATED, StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS}


def test_encapsulated_pixel_data_cut_is_found() -> None:
    ds = image(frames=2)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.compress(RLELossless, generate_instance_uid=False)
    raw = encode(ds, RLELossless)
    assert parse_instance(raw, UID(RLELossless), 2**31 - 1).number_of_frames == 2
    assert "ends inside" in rejected_with(StoreStatus.CANNOT_UNDERSTAND_TRUNCATED, raw[:-9], RLELossless)


def test_deflated_dataset_is_inflated_with_a_cap() -> None:
    plain = encode(image(), ExplicitVRLittleEndian)
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    deflated = packer.compress(plain) + packer.flush()
    assert parse_instance(deflated, UID(DeflatedExplicitVRLittleEndian), len(plain)).sop_instance_uid == SOP
    rejected_with(StoreStatus.OUT_OF_RESOURCES, deflated, DeflatedExplicitVRLittleEndian, cap=len(plain) - 1)
    rejected_with(StoreStatus.CANNOT_UNDERSTAND_TRUNCATED, deflated[:-20], DeflatedExplicitVRLittleEndian)
    with pytest.raises(InstanceRejected) as caught:
        inflate(b"\xff\xff not deflate", 1000)
    assert caught.value.status == StoreStatus.CANNOT_UNDERSTAND_DEFLATE


def test_short_pixel_data_and_bad_values() -> None:
    ds = image()
    ds.PixelData = ds.PixelData[:64]
    assert "needs 128" in rejected_with(StoreStatus.CANNOT_UNDERSTAND_TRUNCATED,
                                        encode(ds, ExplicitVRLittleEndian), ExplicitVRLittleEndian)
    ds = image()
    ds.ImageOrientationPatient = [1, 0, 0]
    assert "ImageOrientationPatient" in rejected_with(StoreStatus.CANNOT_UNDERSTAND_HEADER,
                                                      encode(ds, ExplicitVRLittleEndian), ExplicitVRLittleEndian)
    nonsense = b"\x08\x00\x16\x00\x00\x00\x04\x00abcd"  # a VR of two NUL bytes
    rejected_with(StoreStatus.CANNOT_UNDERSTAND, nonsense, ExplicitVRLittleEndian)
    stray = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"  # an item delimiter at the top level
    rejected_with(StoreStatus.CANNOT_UNDERSTAND, stray, ExplicitVRLittleEndian)


@pytest.mark.parametrize("uid, safe", [
    ("1.2.840.10008.5.1.4.1.1.2", True), ("0", True), ("1.0.3", True),
    ("", False), ("1.2.../../x", False), ("1." + "2" * 63, False), ("1.2.abc", False), ("1.02.3", False),
    ("1.2.", False), (".1.2", False), ("1..2", False), ("1.2 ", False), (None, False),
])
def test_uid_safety(uid: str | None, safe: bool) -> None:
    assert is_safe_uid(uid) is safe


def test_uids_must_match_the_command() -> None:
    meta = parse_instance(encode(image(), ExplicitVRLittleEndian), UID(ExplicitVRLittleEndian), 2**31 - 1)
    validate_uids(meta, SOP, CTImageStorage)
    for instance, sop_class, field in ((SOP + "1", CTImageStorage, "SOPInstanceUID"), (SOP, "1.2.3", "SOPClassUID")):
        with pytest.raises(InstanceRejected, match=field) as caught:
            validate_uids(meta, instance, sop_class)
        assert caught.value.status == StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS


def test_a_nested_sequence_bomb_is_refused() -> None:
    ds = Dataset()
    ds.SOPInstanceUID = SOP
    node = ds
    for _ in range(40):
        child = Dataset()
        node.ReferencedImageSequence = Sequence([child])
        node = child
    undefined_lengths(ds)
    assert "nested deeper" in rejected_with(StoreStatus.CANNOT_UNDERSTAND, encode(ds, ExplicitVRLittleEndian),
                                            ExplicitVRLittleEndian)


def test_pixel_data_is_required_only_of_image_sop_classes() -> None:
    ds = image()
    del ds.PixelData
    assert "CT Image Storage" in rejected_with(StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                                               encode(ds, ExplicitVRLittleEndian), ExplicitVRLittleEndian)
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR: no pixels by design
    assert parse_instance(encode(ds, ExplicitVRLittleEndian), UID(ExplicitVRLittleEndian), 2**31 - 1).sop_class_uid \
        == "1.2.840.10008.5.1.4.1.1.88.11"
