"""Small DICOM datasets built in memory for unit tests."""

from __future__ import annotations

import io

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless, generate_uid

from engine.api import ModelSpec


def ct_slice(z: float, value: int, orientation=(1, 0, 0, 0, 1, 0), slope: float = 1.0,
             intercept: float = -1024.0, number: int = 1, size: int = 4, study_uid: str | None = None,
             series_uid: str | None = None) -> bytes:
    """One CT slice as Part-10 bytes: constant pixel ``value`` at position ``z`` along the normal."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = CTImageStorage
    ds.Modality = "CT"
    ds.InstanceNumber = number
    ds.ImagePositionPatient = [0.0, 0.0, z] if orientation[:3] == (1, 0, 0) else [z, 0.0, 0.0]
    ds.ImageOrientationPatient = list(orientation)
    ds.PixelSpacing = [0.7, 0.8]
    ds.Rows = ds.Columns = size
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[ds.SeriesInstanceUID])
    ds.PatientID = "UNIT"
    ds.PatientName = "Unit^Test"
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.AccessionNumber = "A1"
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.Manufacturer = "UnitTest"
    ds.SliceThickness = 1.0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    ds.PixelData = np.full((size, size), value, dtype=np.uint16).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


class _IdleHandler:
    """A model handler for tests of what comes after the network: it is never asked to run."""

    def preprocess(self, volume):
        return volume

    def postprocess(self, output, volume):
        raise AssertionError("the writers' tests never run the network")


def writer_spec(name: str, version: str, **options) -> ModelSpec:
    """A registered-looking model for output-writer tests (its network and handler never run)."""
    return ModelSpec(name=name, version=version, description="", selector=lambda series: True,
                     load_network=lambda: None, handler=_IdleHandler(), **options)


def resave(blob: bytes, syntax: str, undefined_sequences: bool = False) -> bytes:
    """``blob`` re-encoded in ``syntax`` with a nested sequence added (of undefined length if asked)."""
    ds = pydicom.dcmread(io.BytesIO(blob))
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "123", "99TEST", "nested"
    inner = Dataset()
    inner.ReferencedSOPInstanceUID = "1.2.3.4.5"
    item.ReferencedSOPSequence = Sequence([inner])
    ds.ProcedureCodeSequence = Sequence([item])
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SeriesDescription = "Thorax für Ärzte"
    if undefined_sequences:
        ds["ProcedureCodeSequence"].is_undefined_length = True
        ds.ProcedureCodeSequence[0].is_undefined_length_sequence_item = True
    if syntax == RLELossless:
        ds.compress(RLELossless, generate_instance_uid=False)
    else:
        ds.file_meta.TransferSyntaxUID = syntax
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True, implicit_vr=syntax == ImplicitVRLittleEndian)
    return buffer.getvalue()
