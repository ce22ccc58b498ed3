"""The storage SCP against real clients: DCMTK storescu and pynetdicom's SCU.

Statuses follow DESIGN.md's table; rejected instances leave nothing in spool or ledger.
"""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pynetdicom
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEG2000Lossless, RLELossless, generate_uid
from pynetdicom import AE, build_context
from pynetdicom.sop_class import CTImageStorage, Verification

from engine.phantom import generate_ct_phantom, write_ct_series
from engine.ports import free_port
from engine.receiver.ledger import Ledger
from engine.receiver.scp import ReceiverSCP
from engine.receiver.spool import Spool, SpoolError
from engine.receiver.statuses import StoreStatus
from engine.testing import storescu
from tests.unit.factories import ct_slice


class FullSpool(Spool):
    """A spool whose disk is full (the SCP's own unit test: only the spool is replaced)."""

    def store(self, meta_bytes, dataset):
        raise SpoolError("spool write failed: No space left on device")


@pytest.fixture(autouse=True)
def send_files_as_stored(monkeypatch: pytest.MonkeyPatch) -> None:
    """pynetdicom sends a file's bytes as they are, command UIDs from its file meta."""
    monkeypatch.setattr(pynetdicom._config, "STORE_SEND_CHUNKED_DATASET", True)


@pytest.fixture()
def scp_factory(tmp_path: Path):
    started: list[tuple[ReceiverSCP, Ledger]] = []

    def make(spool_class=Spool, **options) -> tuple[ReceiverSCP, Ledger, Spool, list[str]]:
        ledger = Ledger(tmp_path / "ledger.sqlite")
        spool = spool_class(tmp_path / "spool")
        stored: list[str] = []
        scp = ReceiverSCP("SCANSTREAM", "127.0.0.1", free_port(), spool, ledger, stored.append, **options)
        scp.start()
        started.append((scp, ledger))
        return scp, ledger, spool, stored

    yield make
    for scp, ledger in started:
        scp.stop()
        ledger.close()


def write(tmp_path: Path, data: bytes, name: str) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def send_path(port: int, path: Path, transfer_syntax: str | None = None) -> int:
    """C-STORE a file as stored (pynetdicom reads command UIDs from the file meta)."""
    meta = pydicom.dcmread(path, stop_before_pixels=True)
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(CTImageStorage, transfer_syntax or meta.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="SCANSTREAM")
    assert assoc.is_established
    try:
        return int(assoc.send_c_store(path).Status)
    finally:
        assoc.release()


def dataset_part(path: Path) -> bytes:
    """The bytes after the file meta group."""
    data = path.read_bytes()
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    meta_end = 132 + 12 + int(ds.file_meta.FileMetaInformationGroupLength)
    return data[meta_end:]


def test_storescu_series_lands_in_spool_and_ledger(tmp_path: Path, scp_factory) -> None:
    scp, ledger, spool, stored = scp_factory()
    files = write_ct_series(generate_ct_phantom(1, slices=4, size=32), tmp_path / "s")
    result = storescu(files, scp.port)
    assert result.returncode == 0, result.stderr
    ds = pydicom.dcmread(files[0])
    rows = ledger.series_instances(str(ds.SeriesInstanceUID))
    assert len(rows) == 4 and len(stored) == 4
    by_uid = {row.sop_instance_uid: row.spool_name for row in rows}
    spooled = spool.path(by_uid[str(ds.SOPInstanceUID)])
    assert str(ds.SOPInstanceUID) not in str(spooled) and "Phantom" not in str(spooled)
    assert spooled.read_bytes().endswith(dataset_part(files[0]))


@pytest.mark.parametrize("syntax, flag", [(JPEG2000Lossless, "-xv"), (RLELossless, "-xr")])
def test_storescu_compressed_syntaxes(tmp_path: Path, scp_factory, syntax: str, flag: str) -> None:
    scp, ledger, spool, _ = scp_factory()
    files = write_ct_series(generate_ct_phantom(2, slices=2, size=32), tmp_path / "s", transfer_syntax=syntax)
    assert storescu(files, scp.port, extra_args=(flag,)).returncode == 0
    row = ledger.series_instances(str(pydicom.dcmread(files[0]).SeriesInstanceUID))[0]
    assert pydicom.dcmread(spool.path(row.spool_name)).file_meta.TransferSyntaxUID == syntax


def test_deflated_dataset_is_parsed_and_stored_as_received(tmp_path: Path, scp_factory) -> None:
    scp, ledger, spool, _ = scp_factory()
    ds = pydicom.dcmread(io.BytesIO(ct_slice(0.0, 5, size=64)))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    path = tmp_path / "deflated.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert send_path(scp.port, path) == StoreStatus.SUCCESS
    (row,) = ledger.series_instances(str(ds.SeriesInstanceUID))
    assert spool.read(row.spool_name).endswith(dataset_part(path))
    assert pydicom.dcmread(spool.path(row.spool_name)).pixel_array.max() == 5


def test_same_instance_twice_is_one_row(tmp_path: Path, scp_factory) -> None:
    scp, ledger, spool, stored = scp_factory()
    path = write(tmp_path, ct_slice(0.0, 1), "a.dcm")
    assert send_path(scp.port, path) == StoreStatus.SUCCESS
    assert send_path(scp.port, path) == StoreStatus.SUCCESS
    assert ledger.status_counts()["instances"] == 1 and len(stored) == 1
    assert len([p for p in (tmp_path / "spool").rglob("*") if p.is_file()]) == 1


def test_uid_mismatch_between_command_and_dataset_is_a900(tmp_path: Path, scp_factory) -> None:
    scp, ledger, _, _ = scp_factory()
    ds = pydicom.dcmread(io.BytesIO(ct_slice(0.0, 1)))
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()   # the command takes this one
    path = tmp_path / "mismatch.dcm"
    ds.save_as(path, enforce_file_format=False)
    assert send_path(scp.port, path) == StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS
    assert ledger.status_counts()["instances"] == 0


@pytest.mark.parametrize("bad_uid", ["1.2.840.../x", "1." + "2" * 70, "1.2.abc", "1.02.3"])
def test_unsafe_uids_are_a900(tmp_path: Path, scp_factory, bad_uid: str) -> None:
    scp, ledger, _, _ = scp_factory()
    ds = pydicom.dcmread(io.BytesIO(ct_slice(0.0, 1)))
    ds.SeriesInstanceUID = bad_uid
    path = tmp_path / "unsafe.dcm"
    ds.save_as(path, enforce_file_format=False)
    assert send_path(scp.port, path) == StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS
    assert ledger.status_counts()["instances"] == 0 and not list((tmp_path / "spool").rglob("*.part"))


def test_truncated_pixel_data_is_c001(tmp_path: Path, scp_factory) -> None:
    scp, ledger, _, _ = scp_factory()
    ds = pydicom.dcmread(io.BytesIO(ct_slice(0.0, 1, size=16)))
    ds.PixelData = ds.PixelData[:100]
    path = tmp_path / "truncated.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert send_path(scp.port, path) == StoreStatus.CANNOT_UNDERSTAND_TRUNCATED
    assert ledger.status_counts()["instances"] == 0


def test_disk_full_is_a700_and_nothing_recorded(tmp_path: Path, scp_factory) -> None:
    scp, ledger, _, stored = scp_factory(spool_class=FullSpool)
    assert send_path(scp.port, write(tmp_path, ct_slice(0.0, 1), "a.dcm")) == StoreStatus.OUT_OF_RESOURCES
    assert ledger.status_counts()["instances"] == 0 and stored == []


def test_size_cap_is_a700(tmp_path: Path, scp_factory) -> None:
    scp, ledger, _, _ = scp_factory(max_instance_bytes=4096)
    big = write(tmp_path, ct_slice(0.0, 1, size=128), "big.dcm")
    assert send_path(scp.port, big) == StoreStatus.OUT_OF_RESOURCES
    assert ledger.status_counts()["instances"] == 0


def test_wrong_called_ae_and_unknown_calling_ae_are_rejected(tmp_path: Path, scp_factory) -> None:
    scp, _, _, _ = scp_factory(allowed_calling_aets=["CT1"])
    path = write(tmp_path, ct_slice(0.0, 1), "a.dcm")
    wrong_called = storescu([path], scp.port, called_aet="NOTME", calling_aet="CT1")
    assert wrong_called.returncode != 0
    assert "Called AE Title Not Recognized" in wrong_called.stderr + wrong_called.stdout
    stranger = storescu([path], scp.port, calling_aet="STRANGER")
    assert "Calling AE Title Not Recognized" in stranger.stderr + stranger.stdout
    assert storescu([path], scp.port, calling_aet="CT1").returncode == 0


def test_association_over_the_limit_is_rejected_and_echo_answers(scp_factory) -> None:
    scp, _, _, _ = scp_factory(max_associations=1)
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(Verification)
    first = ae.associate("127.0.0.1", scp.port, ae_title="SCANSTREAM")
    assert first.is_established and first.send_c_echo().Status == StoreStatus.SUCCESS
    second = ae.associate("127.0.0.1", scp.port, ae_title="SCANSTREAM")
    try:
        assert second.is_rejected
    finally:
        first.release()
    again = ae.associate("127.0.0.1", scp.port, ae_title="SCANSTREAM")
    assert again.is_established
    again.release()


def test_port_in_use_is_named(tmp_path: Path, scp_factory) -> None:
    scp, ledger, spool, _ = scp_factory()
    from engine.receiver.scp import ReceiverError
    clash = ReceiverSCP("SCANSTREAM", "127.0.0.1", scp.port, spool, ledger, print)
    with pytest.raises(ReceiverError, match=f"127.0.0.1:{scp.port}"):
        clash.start()
