"""The storage SCP against real clients: DCMTK storescu and pynetdicom's SCU, real spool and SQLite ledger.

Small CT series are built here with pydicom. Rejected instances leave nothing in spool or ledger.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import socket
import stat
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import pynetdicom
import pytest
import torch
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from engine.api import ModelRegistry, ModelResult, ModelSpec
from engine.testing.ports import free_port
from engine.testing.waiting import wait_until
from engine.receiver import spool as spool_module
from engine.receiver.assembler import Assembler
from engine.ledger.store import Ledger
from engine.receiver.router import Router
from engine.receiver.scp import ReceiverError, ReceiverSCP
from engine.receiver.spool import Spool
from engine.receiver.statuses import (
    CALLED_AE_NOT_RECOGNISED,
    CALLING_AE_NOT_RECOGNISED,
    LOCAL_LIMIT_EXCEEDED,
    Rejection,
    StoreStatus,
)
from engine.testing import storescu

AET = "SCANSTREAM"
PATIENT_ID, PATIENT_NAME = "SECRET-ID-123", "Secret^Patient"


# -- test data ---------------------------------------------------------------------------

def ct_series(count: int, *, expected: bool = True, size: int = 16, study_uid: str | None = None,
              series_uid: str | None = None) -> list[Dataset]:
    """A tiny axial CT series (2.5 mm apart), ``ImagesInAcquisition`` = count when ``expected``."""
    study_uid, series_uid = study_uid or generate_uid(), series_uid or generate_uid()
    rng = np.random.default_rng(count)
    datasets = []
    for index in range(count):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[series_uid])
        ds.PatientID, ds.PatientName, ds.PatientBirthDate = PATIENT_ID, PATIENT_NAME, "19700101"
        ds.Modality, ds.BodyPartExamined, ds.SeriesDescription = "CT", "CHEST", "unit"
        ds.InstanceNumber = index + 1
        if expected:
            ds.ImagesInAcquisition = count
        ds.ImagePositionPatient = [-10.0, -10.0, -50.0 + 2.5 * index]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [1.25, 1.25], 2.5
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelData = rng.integers(0, 4096, (size, size), dtype=np.uint16).tobytes()
        datasets.append(ds)
    return datasets


_DCMTK_WRITERS = {  # syntaxes pydicom does not write: DCMTK converts the explicit VR LE file
    ImplicitVRLittleEndian: ["dcmconv", "+ti"],
    ExplicitVRBigEndian: ["dcmconv", "+tb"],
    JPEGLosslessSV1: ["dcmcjpeg", "+e1"],
}


def write(ds: Dataset, path: Path, syntax: str = ExplicitVRLittleEndian) -> Path:
    """Save ``ds`` as a Part-10 file in ``syntax``."""
    if syntax in _DCMTK_WRITERS:
        plain = write(ds, path.with_suffix(".plain"))
        subprocess.run([*_DCMTK_WRITERS[syntax], str(plain), str(path)], check=True, capture_output=True)
        return path
    ds = pydicom.dcmread(io.BytesIO(_bytes(ds)))  # a copy
    if syntax in (RLELossless, JPEG2000Lossless, JPEGLSLossless):
        ds.compress(syntax, generate_instance_uid=False)
    else:
        ds.file_meta.TransferSyntaxUID = syntax
    ds.save_as(path, enforce_file_format=True)
    return path


def _bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def write_series(datasets: list[Dataset], folder: Path, syntax: str = ExplicitVRLittleEndian) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [write(ds, folder / f"{i:03}.dcm", syntax) for i, ds in enumerate(datasets)]


def dataset_part(path: Path) -> bytes:
    """The bytes after the file meta group (what travels in the C-STORE)."""
    data = path.read_bytes()
    meta_length = int(pydicom.dcmread(path, stop_before_pixels=True).file_meta.FileMetaInformationGroupLength)
    return data[132 + 12 + meta_length:]


def spool_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


# -- the receiver under test ---------------------------------------------------------------

class _Handler:
    def preprocess(self, volume):
        return torch.zeros(1)

    def postprocess(self, output, volume):
        return ModelResult(summary="")


class Receiver:
    """SCP + spool + ledger, with the real assembler and router behind ``on_instance_stored``."""

    def __init__(self, root: Path, spool: Spool | None = None, idle_timeout: float = 60.0, **options) -> None:
        self.root = root
        root.mkdir(parents=True)
        self.ledger = Ledger(root / "ledger.sqlite")
        self.spool = spool or Spool(root / "spool")
        models = ModelRegistry()
        models.add(ModelSpec(name="ct-model", version="1", description="", selector=lambda s: s.modality == "CT",
                             load_network=torch.nn.Identity, handler=_Handler()))
        self.router = Router(self.ledger, models, lambda: None)
        self.completed: list[tuple[str, int]] = []
        self.assembler = Assembler(self.ledger, self._complete, idle_timeout=idle_timeout)
        self.stored: list[str] = []
        self.scp = ReceiverSCP(AET, "127.0.0.1", 0, self.spool, self.ledger, self._stored, **options)
        self.scp.start()

    def _stored(self, series_uid: str) -> None:
        self.stored.append(series_uid)
        self.assembler.check(series_uid, time.time())

    def _complete(self, series_uid: str, revision: int) -> None:
        self.completed.append((series_uid, revision))
        self.router.route(series_uid, revision)

    @property
    def instances(self) -> int:
        return self.ledger.status_counts()["instances"]

    def close(self) -> None:
        self.scp.stop()
        self.ledger.close()


@pytest.fixture()
def receiver_factory(tmp_path: Path):
    made: list[Receiver] = []

    def make(**options) -> Receiver:
        receiver = Receiver(tmp_path / f"r{len(made)}", **options)
        made.append(receiver)
        return receiver

    yield make
    for receiver in made:
        receiver.close()


@pytest.fixture()
def receiver(receiver_factory) -> Receiver:
    return receiver_factory()


@pytest.fixture()
def send_files_as_stored(monkeypatch: pytest.MonkeyPatch) -> None:
    """pynetdicom then sends a file's dataset bytes unchanged, command UIDs taken from its file meta."""
    monkeypatch.setattr(pynetdicom._config, "STORE_SEND_CHUNKED_DATASET", True)


def send(port: int, item: Path | Dataset, calling_aet: str = "PYSCU") -> int:
    """C-STORE one file or dataset with pynetdicom; returns the status."""
    syntax = (pydicom.dcmread(item, stop_before_pixels=True) if isinstance(item, Path) else item).file_meta \
        .TransferSyntaxUID
    ae = AE(ae_title=calling_aet)
    ae.add_requested_context(CTImageStorage, syntax)
    assoc = ae.associate("127.0.0.1", port, ae_title=AET)
    assert assoc.is_established
    try:
        return int(assoc.send_c_store(item).Status)
    finally:
        assoc.release()


def send_many(port: int, datasets: list[Dataset]) -> list[int]:
    """C-STORE several datasets over one pynetdicom association; returns their statuses."""
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title=AET)
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


# -- storescu delivers series -----------------------------------------------------------------

def test_storescu_series_is_stored_as_sent_and_completes_on_the_last_slice(tmp_path: Path, receiver: Receiver,
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    datasets = ct_series(5)
    files = write_series(datasets, tmp_path / "s")
    with caplog.at_level(logging.INFO, logger="engine"):
        result = storescu(files, receiver.scp.port, extra_args=("-xe",))
    assert result.returncode == 0, result.stdout + result.stderr
    series_uid = str(datasets[0].SeriesInstanceUID)
    rows = {row.sop_instance_uid: row for row in receiver.ledger.series_instances(series_uid)}
    assert len(rows) == 5 and receiver.stored == [series_uid] * 5
    for ds, path in zip(datasets, files):
        row = rows[str(ds.SOPInstanceUID)]
        stored = receiver.spool.path(row.spool_name)
        assert stored.read_bytes().endswith(dataset_part(path))  # the dataset exactly as sent
        assert str(ds.SOPInstanceUID) not in str(stored) and series_uid not in str(stored)
        assert pydicom.dcmread(stored).file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    # complete as soon as the fifth slice was stored: no tick ran, no idle wait
    assert receiver.completed == [(series_uid, 1)]
    assert receiver.ledger.series(series_uid).completion_reason == "geometry"
    assert [job.model for job in receiver.ledger.list_jobs("queued")] == ["ct-model"]
    events = [r.getMessage() for r in caplog.records]
    assert events.count("instance.stored") == 5 and "assoc.accepted" in events and "assoc.released" in events
    stored_line = next(r for r in caplog.records if r.getMessage() == "instance.stored").__dict__["fields"]
    assert stored_line["study_key"].startswith("st_") and stored_line["calling_ae"] == "STORESCU"
    assert stored_line["bytes"] > 512
    logged = " ".join(str(r.__dict__.get("fields", "")) + r.getMessage() for r in caplog.records)
    for secret in (PATIENT_ID, PATIENT_NAME, "19700101", series_uid, str(datasets[0].StudyInstanceUID)):
        assert secret not in logged


@pytest.mark.parametrize("syntax, flag", [
    (ImplicitVRLittleEndian, "-xi"),
    (ExplicitVRBigEndian, "-xb"),
    (DeflatedExplicitVRLittleEndian, "-xd"),
    (RLELossless, "-xr"),
    (JPEGLosslessSV1, "-xs"),
    (JPEGLSLossless, "-xt"),
    (JPEG2000Lossless, "-xv"),
])
def test_storescu_transfer_syntaxes(tmp_path: Path, receiver: Receiver, syntax: str, flag: str) -> None:
    datasets = ct_series(2, size=64)  # 64 x 64: the smallest JPEG 2000 with default resolution levels
    files = write_series(datasets, tmp_path / "s", syntax)
    result = storescu(files, receiver.scp.port, extra_args=(flag, "-R"))
    assert result.returncode == 0, result.stdout + result.stderr
    rows = receiver.ledger.series_instances(str(datasets[0].SeriesInstanceUID))
    assert len(rows) == 2 and receiver.completed
    by_uid = {row.sop_instance_uid: row.spool_name for row in rows}
    for ds, path in zip(datasets, files):
        name = by_uid[str(ds.SOPInstanceUID)]
        stored = pydicom.dcmread(receiver.spool.path(name))
        assert stored.file_meta.TransferSyntaxUID == syntax
        assert receiver.spool.read(name).endswith(dataset_part(path))  # byte for byte as sent
        assert np.array_equal(stored.pixel_array, ds.pixel_array)


def test_deflated_dataset_from_pynetdicom_is_parsed_and_stored_as_received(tmp_path: Path, receiver: Receiver,
                                                                           send_files_as_stored: None) -> None:
    (ds,) = ct_series(1, size=64)
    path = write(ds, tmp_path / "deflated.dcm", DeflatedExplicitVRLittleEndian)
    assert send(receiver.scp.port, path) == StoreStatus.SUCCESS
    (row,) = receiver.ledger.series_instances(str(ds.SeriesInstanceUID))
    assert receiver.spool.read(row.spool_name).endswith(dataset_part(path))
    assert np.array_equal(pydicom.dcmread(receiver.spool.path(row.spool_name)).pixel_array, ds.pixel_array)


# -- duplicates, late instances, idle series -----------------------------------------------------

def test_same_instance_twice_is_one_row_and_no_new_job(tmp_path: Path, receiver: Receiver) -> None:
    (ds,) = ct_series(1)
    path = write(ds, tmp_path / "a.dcm")
    assert send(receiver.scp.port, path) == StoreStatus.SUCCESS
    assert len(receiver.ledger.list_jobs()) == 1
    assert send(receiver.scp.port, path) == StoreStatus.SUCCESS
    assert receiver.instances == 1 and len(spool_files(receiver.spool.root)) == 1
    assert receiver.stored == [str(ds.SeriesInstanceUID)]  # the duplicate changed nothing
    assert len(receiver.ledger.list_jobs()) == 1 and receiver.ledger.series(str(ds.SeriesInstanceUID)).revision == 1


def test_late_instance_reopens_the_series_and_runs_revision_2(tmp_path: Path, receiver: Receiver) -> None:
    datasets = ct_series(3)
    assert storescu(write_series(datasets, tmp_path / "s"), receiver.scp.port).returncode == 0
    series_uid = str(datasets[0].SeriesInstanceUID)
    assert receiver.completed == [(series_uid, 1)]
    (late,) = ct_series(1, study_uid=str(datasets[0].StudyInstanceUID), series_uid=series_uid)
    late.ImagePositionPatient = [-10.0, -10.0, -50.0 + 2.5 * 3]
    assert send(receiver.scp.port, late) == StoreStatus.SUCCESS
    assert receiver.ledger.series(series_uid).state == "open"  # 4 slices of an acquisition of 3: wait
    assert receiver.assembler.tick(time.time() + 61.0) == 1
    assert receiver.completed == [(series_uid, 1), (series_uid, 2)]
    assert receiver.ledger.series(series_uid).completion_reason == "idle"
    assert sorted(job.series_revision for job in receiver.ledger.list_jobs()) == [1, 2]


def test_series_without_images_in_acquisition_completes_when_idle(tmp_path: Path, receiver_factory) -> None:
    receiver = receiver_factory(idle_timeout=0.5)
    datasets = ct_series(3, expected=False)
    assert storescu(write_series(datasets, tmp_path / "s"), receiver.scp.port).returncode == 0
    series_uid = str(datasets[0].SeriesInstanceUID)
    assert receiver.completed == [] and receiver.ledger.series(series_uid).state == "open"
    receiver.assembler.start(tick=0.05)
    try:
        wait_until(lambda: receiver.completed, "the idle series completed by the assembler")
    finally:
        receiver.assembler.stop()
    assert receiver.completed == [(series_uid, 1)]
    assert receiver.ledger.series(series_uid).completion_reason == "idle"


def test_concurrent_associations_complete_the_series_exactly_once(receiver: Receiver) -> None:
    datasets = ct_series(12)
    statuses: list[int] = []

    def sender(part: list[Dataset]) -> None:
        statuses.extend(send_many(receiver.scp.port, part))

    threads = [threading.Thread(target=sender, args=(datasets[k::4],)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    series_uid = str(datasets[0].SeriesInstanceUID)
    assert statuses == [StoreStatus.SUCCESS] * 12
    assert receiver.ledger.series(series_uid).instance_count == 12
    assert receiver.completed == [(series_uid, 1)] and len(receiver.ledger.list_jobs()) == 1


# -- refusals -------------------------------------------------------------------------------------

def test_uid_mismatch_between_command_and_dataset_is_a900(tmp_path: Path, receiver: Receiver,
                                                          send_files_as_stored: None) -> None:
    (ds,) = ct_series(1)
    path = write(ds, tmp_path / "mismatch.dcm")
    uid = str(ds.SOPInstanceUID).encode()
    other = uid[:-1] + str((int(uid[-1:]) + 1) % 10).encode()
    data = path.read_bytes()
    path.write_bytes(data.replace(uid, other, 1))  # the file meta's copy, which the command carries
    assert pydicom.dcmread(path).file_meta.MediaStorageSOPInstanceUID != ds.SOPInstanceUID
    assert send(receiver.scp.port, path) == StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS
    assert receiver.instances == 0 and spool_files(receiver.spool.root) == []


# pydicom (sender and receiver side) warns about the malformed values these tests send on purpose
MALFORMED_VALUES = pytest.mark.filterwarnings("ignore:Invalid value for VR", "ignore:The value length",
                                               "ignore:Expected explicit VR")


@MALFORMED_VALUES
@pytest.mark.parametrize("keyword, bad_uid", [
    ("SeriesInstanceUID", "1.2.../../x"),
    ("SeriesInstanceUID", "1." + "2" * 63),  # 65 characters
    ("StudyInstanceUID", "1.2.abc"),
    ("StudyInstanceUID", "1.02.3"),
    ("SOPInstanceUID", "1.2..3"),  # the command carries the same unsafe UID
])
def test_unsafe_uids_are_a900(tmp_path: Path, receiver: Receiver, send_files_as_stored: None,
                              keyword: str, bad_uid: str) -> None:
    (ds,) = ct_series(1)
    setattr(ds, keyword, bad_uid)
    if keyword == "SOPInstanceUID":
        ds.file_meta.MediaStorageSOPInstanceUID = bad_uid
    path = tmp_path / "unsafe.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert send(receiver.scp.port, path) == StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS
    assert receiver.instances == 0 and spool_files(receiver.spool.root) == []


def test_short_pixel_data_is_c001(tmp_path: Path, receiver: Receiver, send_files_as_stored: None) -> None:
    (ds,) = ct_series(1)
    ds.PixelData = ds.PixelData[:100]
    path = tmp_path / "short.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert send(receiver.scp.port, path) == StoreStatus.CANNOT_UNDERSTAND_TRUNCATED
    assert receiver.instances == 0 and spool_files(receiver.spool.root) == []


@pytest.mark.parametrize("inside", ["pixel value", "pixel header"])
def test_dataset_cut_short_is_c001(tmp_path: Path, receiver: Receiver, send_files_as_stored: None,
                                   inside: str) -> None:
    (ds,) = ct_series(1)
    path = write(ds, tmp_path / "a.dcm")
    data = path.read_bytes()
    pixel_header_at = len(data) - len(ds.PixelData) - 12  # (7FE0,0010) OW: 12-byte header, then the value
    path.write_bytes(data[:-5] if inside == "pixel value" else data[:pixel_header_at + 6])
    assert send(receiver.scp.port, path) == StoreStatus.CANNOT_UNDERSTAND_TRUNCATED
    assert receiver.instances == 0 and spool_files(receiver.spool.root) == []


@MALFORMED_VALUES
def test_malformed_header_value_is_c003(tmp_path: Path, receiver: Receiver, send_files_as_stored: None) -> None:
    (ds,) = ct_series(1)
    path = write(ds, tmp_path / "a.dcm")
    data = path.read_bytes()
    # InstanceNumber (0020,0013) IS "1 " -> "x ": the element stays well-formed, its value is not a number
    marker = b"\x20\x00\x13\x00IS\x02\x001 "
    assert data.count(marker) == 1
    path.write_bytes(data.replace(marker, b"\x20\x00\x13\x00IS\x02\x00x "))
    assert send(receiver.scp.port, path) == StoreStatus.CANNOT_UNDERSTAND_HEADER
    assert receiver.instances == 0


@MALFORMED_VALUES
def test_garbage_is_c000(tmp_path: Path, receiver: Receiver, send_files_as_stored: None) -> None:
    (ds,) = ct_series(1)
    path = write(ds, tmp_path / "a.dcm")
    data = path.read_bytes()
    meta_end = len(data) - len(dataset_part(path))
    path.write_bytes(data[:meta_end] + b"\x08\x00\x16\x00\x01\x02" + data[meta_end + 6:])  # a VR of bytes 01 02
    assert send(receiver.scp.port, path) == StoreStatus.CANNOT_UNDERSTAND
    assert receiver.instances == 0


def test_disk_full_is_a700_and_leaves_no_partial_file(tmp_path: Path, receiver: Receiver,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    real_fsync, partial = os.fsync, []

    def disk_full(fd: int) -> None:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            return real_fsync(fd)
        partial.append(status.st_size)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(spool_module.os, "fsync", disk_full)
    (ds,) = ct_series(1)
    assert send(receiver.scp.port, ds) == StoreStatus.OUT_OF_RESOURCES
    assert partial and partial[0] > 512  # the file was written, then the disk filled up
    assert receiver.instances == 0 and receiver.stored == [] and spool_files(receiver.spool.root) == []


def test_size_cap_is_a700(receiver_factory) -> None:
    receiver = receiver_factory(max_instance_bytes=4096)
    (small,) = ct_series(1, size=16)
    (big,) = ct_series(1, size=128)
    assert send(receiver.scp.port, big) == StoreStatus.OUT_OF_RESOURCES
    assert send(receiver.scp.port, small) == StoreStatus.SUCCESS
    assert receiver.instances == 1


def test_failing_callback_does_not_change_the_answer(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.sqlite")

    def broken(series_uid: str) -> None:
        raise RuntimeError("assembler down")

    scp = ReceiverSCP(AET, "127.0.0.1", 0, Spool(tmp_path / "spool"), ledger, broken)
    scp.start()
    try:
        assert send(scp.port, ct_series(1)[0]) == StoreStatus.SUCCESS
        assert ledger.status_counts()["instances"] == 1
    finally:
        scp.stop()
        ledger.close()


def test_a_defect_in_storing_is_a_processing_failure_and_the_receiver_carries_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = Ledger(tmp_path / "l.sqlite")
    scp = ReceiverSCP(AET, "127.0.0.1", 0, Spool(tmp_path / "spool"), ledger, print)
    scp.start()
    first, second = ct_series(2)
    try:
        with monkeypatch.context() as patch:
            patch.setattr(ledger, "add_instance", lambda *args, **kwargs: 1 / 0)
            assert send(scp.port, first) == StoreStatus.PROCESSING_FAILURE
        assert [p for p in (tmp_path / "spool").rglob("*") if p.is_file()] == []  # its spool file went too
        assert send(scp.port, second) == StoreStatus.SUCCESS
        assert ledger.status_counts()["instances"] == 1
    finally:
        scp.stop()
        ledger.close()


# -- associations -----------------------------------------------------------------------------------

def associate(port: int, calling: str = "PYSCU", called: str = AET) -> tuple[pynetdicom.association.Association,
                                                                             Rejection | None]:
    """Request an association; returns it and the rejection the SCP answered, if any.

    The rejection is read from the association's own record of the answer
    (``acceptor.primitive``, set before ``associate`` returns), not from an event
    handler, and the timeouts are generous: a busy machine only makes it slower.
    """
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.network_timeout = 60
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if assoc.is_aborted:
        raise AssertionError(f"association from {calling} to {called} aborted instead of being answered")
    if not assoc.is_rejected:
        return assoc, None
    answer = assoc.acceptor.primitive
    return assoc, Rejection(answer.result, answer.result_source, answer.diagnostic)


def refusal(port: int, calling: str = "PYSCU", called: str = AET) -> Rejection | None:
    """The SCP's answer to an A-ASSOCIATE-RQ read straight off a socket: its rejection, or None if it accepted.

    A raw socket with a finite timeout, not pynetdicom's requestor: that one can
    report a rejection that arrives just before the SCP closes the connection as
    an abort when the machine is busy.
    """
    from pynetdicom.pdu import A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
    from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification

    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title, primitive.called_ae_title = calling, called
    context = pynetdicom.presentation.build_context(Verification)
    context.context_id = 1
    primitive.presentation_context_definition_list = [context]
    maximum = MaximumLengthNotification()
    maximum.maximum_length_received = 16384
    primitive.user_information = [maximum]
    request = A_ASSOCIATE_RQ()
    request.from_primitive(primitive)
    with socket.create_connection(("127.0.0.1", port), timeout=60) as connection:
        connection.sendall(request.encode())
        answer = connection.makefile("rb")
        header = answer.read(6)
        assert len(header) == 6, "the SCP closed the connection without answering the A-ASSOCIATE-RQ"
        body = answer.read(int.from_bytes(header[2:6], "big"))
    if header[0] == 0x02:  # A-ASSOCIATE-AC
        return None
    assert header[0] == 0x03, f"expected A-ASSOCIATE-AC or -RJ, got PDU type {header[0]:#04x}"
    rejected = A_ASSOCIATE_RJ()
    rejected.decode(header + body)
    return Rejection(rejected.result, rejected.source, rejected.reason_diagnostic)


def test_wrong_called_ae_and_unknown_calling_ae_are_rejected(tmp_path: Path, receiver_factory,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    receiver = receiver_factory(allowed_calling_aets=["CT1", "STORESCU"])
    with caplog.at_level(logging.INFO, logger="engine.receiver.handlers"):
        assert refusal(receiver.scp.port, calling="CT1", called="NOTME") == CALLED_AE_NOT_RECOGNISED
    (line,) = [r.__dict__["fields"] for r in caplog.records if r.getMessage() == "assoc.rejected"]
    assert (line["calling_ae"], line["called_ae"]) == ("CT1", "NOTME") and line["address"].startswith("127.0.0.1:")
    assert refusal(receiver.scp.port, calling="STRANGER") == CALLING_AE_NOT_RECOGNISED
    assoc, rejection = associate(receiver.scp.port, calling="CT1")
    assert rejection is None and assoc.is_established
    assoc.release()
    path = write(ct_series(1)[0], tmp_path / "a.dcm")
    wrong = storescu([path], receiver.scp.port, called_aet="NOTME")
    assert wrong.returncode != 0 and "Called AE Title Not Recognized" in wrong.stdout + wrong.stderr
    stranger = storescu([path], receiver.scp.port, calling_aet="STRANGER")
    assert stranger.returncode != 0 and "Calling AE Title Not Recognized" in stranger.stdout + stranger.stderr
    assert receiver.instances == 0
    assert storescu([path], receiver.scp.port).returncode == 0 and receiver.instances == 1


def test_association_limit_echo_and_tcp_nodelay(receiver_factory) -> None:
    receiver = receiver_factory(max_associations=1)
    first, rejection = associate(receiver.scp.port)
    assert rejection is None and first.send_c_echo().Status == StoreStatus.SUCCESS
    (accepted,) = receiver.scp.active_associations()
    assert accepted.connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    assert refusal(receiver.scp.port) == LOCAL_LIMIT_EXCEEDED
    first.release()
    wait_until(lambda: not receiver.scp.active_associations(), "the released association gone from the SCP")
    again, rejection = associate(receiver.scp.port)
    assert rejection is None and again.is_established
    again.release()


def test_port_zero_binds_a_free_port_and_a_taken_port_is_named(tmp_path: Path, receiver: Receiver) -> None:
    assert receiver.scp.port > 0
    clash = ReceiverSCP(AET, "127.0.0.1", receiver.scp.port, receiver.spool, receiver.ledger, print)
    with pytest.raises(ReceiverError, match=f"127.0.0.1:{receiver.scp.port}"):
        clash.start()
    fixed = free_port()
    other = ReceiverSCP(AET, "127.0.0.1", fixed, receiver.spool, receiver.ledger, print)
    other.start()
    try:
        assert other.port == fixed
    finally:
        other.stop()


def test_an_ipv6_host_is_listened_on(receiver: Receiver) -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this host")
    scp = ReceiverSCP(AET, "::1", 0, receiver.spool, receiver.ledger, print)
    scp.start()
    try:
        ae = AE(ae_title="PYSCU")
        ae.add_requested_context(Verification)
        assoc = ae.associate("::1", scp.port, ae_title=AET)
        assert assoc.is_established and assoc.send_c_echo().Status == StoreStatus.SUCCESS
        assoc.release()
    finally:
        scp.stop()


def test_new_associations_are_refused_below_the_disk_low_water_mark(receiver_factory,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    receiver = receiver_factory(min_free_bytes=1)
    guard = receiver.scp._disk
    assoc, rejection = associate(receiver.scp.port)
    assert rejection is None and assoc.is_established  # plenty of room: at least one byte free
    assoc.release()
    guard._min_free = guard.free_bytes() * 1000 + 1  # the disk is now "below the mark"
    with caplog.at_level(logging.WARNING, logger="engine.receiver.scp"):
        assert refusal(receiver.scp.port) == LOCAL_LIMIT_EXCEEDED
    (line,) = [r.__dict__["fields"] for r in caplog.records if r.getMessage() == "scp.disk_low"]
    assert line["min_free_bytes"] == guard._min_free and line["free_bytes"] < guard._min_free
    guard._min_free = 1  # space came back
    again, rejection = associate(receiver.scp.port)
    assert rejection is None and again.is_established
    again.release()


def test_new_associations_are_refused_while_retention_finds_the_quota_full(receiver_factory) -> None:
    full = [False]
    receiver = receiver_factory(quota_full=lambda: full[0])
    assoc, rejection = associate(receiver.scp.port)
    assert rejection is None and assoc.is_established
    assoc.release()
    full[0] = True  # over quota with only unfinished work left
    assert refusal(receiver.scp.port) == LOCAL_LIMIT_EXCEEDED and receiver.scp.disk_low()
    full[0] = False  # a pass found room
    again, rejection = associate(receiver.scp.port)
    assert rejection is None and again.is_established
    again.release()


def test_audit_trail_records_who_sent_what_without_patient_data(tmp_path: Path, receiver_factory) -> None:
    import json

    from engine.receiver.audit import AuditTrail

    audit = AuditTrail(tmp_path / "audit.log")
    receiver = receiver_factory(audit=audit, allowed_calling_aets=["PYSCU"])
    series = ct_series(3)
    for ds in series:
        ds.PatientName, ds.PatientID = "Doe^Jane", "MRN-12345"
    short = series[2]
    short.PixelData = short.PixelData[:100]
    statuses = send_many(receiver.scp.port, [series[0], series[1], series[1], short])
    assert statuses == [0, 0, 0, StoreStatus.CANNOT_UNDERSTAND_TRUNCATED]
    assert refusal(receiver.scp.port, calling="STRANGER") == CALLING_AE_NOT_RECOGNISED

    def audited() -> list[dict]:
        path = tmp_path / "audit.log"
        lines = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        events = {line["event"] for line in lines}
        return lines if {"instances-transferred", "association-rejected"} <= events else []

    lines = wait_until(audited, "the transfer and the rejection in the audit log")
    transferred = next(line for line in lines if line["event"] == "instances-transferred")
    assert (transferred["calling_ae"], transferred["called_ae"], transferred["ended"]) == ("PYSCU", AET, "released")
    assert (transferred["stored"], transferred["duplicates"], transferred["refused"]) == (2, 1, 1)
    assert transferred["bytes"] > 0 and transferred["address"].startswith("127.0.0.1:")
    assert transferred["study_keys"] == [receiver.ledger.study_key(str(series[0].StudyInstanceUID))]
    rejected = next(line for line in lines if line["event"] == "association-rejected")
    assert rejected["calling_ae"] == "STRANGER"
    text = (tmp_path / "audit.log").read_text()
    assert "Doe" not in text and "MRN-12345" not in text and str(series[0].StudyInstanceUID) not in text


def test_a_study_over_its_byte_cap_gets_a700_for_the_instance_that_would_cross_it(receiver_factory) -> None:
    series = ct_series(3, size=16)
    one = len(_bytes(series[0]))
    receiver = receiver_factory(max_study_bytes=2 * one + one // 2)
    statuses = send_many(receiver.scp.port, series)
    assert statuses == [StoreStatus.SUCCESS, StoreStatus.SUCCESS, StoreStatus.OUT_OF_RESOURCES]
    assert receiver.instances == 2 and len(spool_files(receiver.spool.root)) == 2
    other = ct_series(1, size=16)  # another study has its own budget
    assert send_many(receiver.scp.port, other) == [StoreStatus.SUCCESS]


def test_calling_ae_bound_to_a_host(receiver_factory) -> None:
    receiver = receiver_factory(allowed_calling_aets=["CT1@10.9.9.9", "CT2@127.0.0.1", "PYSCU"])
    assert refusal(receiver.scp.port, calling="CT1") == CALLING_AE_NOT_RECOGNISED  # right AE, wrong host
    for calling in ("CT2", "PYSCU"):
        assoc, rejection = associate(receiver.scp.port, calling=calling)
        assert rejection is None and assoc.is_established, calling
        assoc.release()
    assert refusal(receiver.scp.port, calling="STRANGER") == CALLING_AE_NOT_RECOGNISED


def test_calling_ae_entries_are_checked() -> None:
    from engine.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="expected AE or AE@IP-address"):
        load_config(environ={"SCANSTREAM_RECEIVER__ALLOWED_CALLING_AETS": "CT1@not-an-address"})
    config = load_config(environ={"SCANSTREAM_RECEIVER__ALLOWED_CALLING_AETS": "CT1@10.0.0.5,CT2"})
    assert config.receiver.allowed_calling_aets == ["CT1@10.0.0.5", "CT2"]
