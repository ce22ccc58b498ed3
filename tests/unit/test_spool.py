"""Spool: bytes as received, opaque names, durable writes, nothing left behind on failure."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from engine.receiver import spool as spool_module
from engine.receiver.spool import Spool, SpoolError

UID = "1.2.826.0.1.3680043.8.498.1"
# (0008,0016) SOP Class UID, explicit VR LE, even length: a one-element dataset
DATASET = b"\x08\x00\x16\x00UI\x1a\x00" + CTImageStorage.encode() + b"\x00"


def encode_file_meta(meta: FileMetaDataset) -> bytes:
    """pydicom's encoding of a file meta group (the reference for the spool's own encoder)."""
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_file_meta_info(buffer, meta, enforce_standard=True)
    return buffer.getvalue()


def file_meta() -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = UID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return encode_file_meta(meta)


def files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def test_store_writes_part10_with_the_dataset_bytes_unchanged(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    entry = spool.store(file_meta(), DATASET)
    data = spool.read(entry.name)
    assert data[:128] == b"\0" * 128 and data[128:132] == b"DICM" and data.endswith(DATASET)
    assert entry.sha256 == hashlib.sha256(DATASET).hexdigest() and entry.size == len(data)
    path = spool.path(entry.name)
    assert path == tmp_path / entry.name[:2] / entry.name and UID not in str(path)
    ds = pydicom.dcmread(path)
    assert ds.file_meta.MediaStorageSOPInstanceUID == UID and ds.SOPClassUID == CTImageStorage
    assert files(tmp_path) == [path]  # no temp file left
    spool.remove(entry.name)
    assert not path.exists()


def test_meta_may_be_given_as_a_dataset_and_names_are_unique(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    first = spool.store(file_meta(), DATASET)
    second = spool.store(file_meta(), DATASET)
    assert first.name != second.name and len(first.name) == 32
    assert spool.read(first.name) == spool.read(second.name)


def test_fsyncs_file_and_folder_before_returning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(spool_module.os, "fsync", recording_fsync)
    spool = Spool(tmp_path)
    entry = spool.store(file_meta(), DATASET)
    assert synced[-2].endswith(".part")                  # the data, before the rename
    assert synced[-1] == str(spool.path(entry.name).parent)  # the rename itself


def test_shard_folders_are_made_at_start_and_again_if_removed(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real_fsync = os.fsync
    monkeypatch.setattr(spool_module.os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")),
                                                             real_fsync(fd)))
    spool = Spool(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{i:02x}" for i in range(256)]
    assert synced == [str(tmp_path)]  # one fsync of the root for all 256
    Spool(tmp_path)
    assert synced == [str(tmp_path)]  # nothing to make the second time
    for folder in tmp_path.iterdir():
        folder.rmdir()
    entry = spool.store(file_meta(), DATASET)
    assert spool.path(entry.name).read_bytes()[128:132] == b"DICM" and str(tmp_path) in synced[1:]


def test_size_cap_refuses_before_writing(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_instance_bytes=2048)
    with pytest.raises(SpoolError, match="exceeds the cap of 2048"):
        spool.store(b"", b"x" * 4096)
    assert files(tmp_path) == []


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
def test_io_errors_leave_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    spool = Spool(tmp_path)
    written: list[int] = []
    real_fsync = os.fsync

    def failing_fsync(fd: int) -> None:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            return real_fsync(fd)
        written.append(status.st_size)  # the partial file really exists at this point
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(spool_module.os, "fsync", failing_fsync)
    with pytest.raises(SpoolError, match=os.strerror(code)):
        spool.store(file_meta(), b"x" * 100)
    assert written and written[0] > 100 and files(tmp_path) == []


def test_names_are_validated(tmp_path: Path) -> None:
    for bad in ("../../etc/passwd", "A" * 32, "0" * 31, UID):
        with pytest.raises(SpoolError):
            Spool(tmp_path).path(bad)


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.50"])
@pytest.mark.parametrize("instance_uid", ["1.2.3.4", "1.2.3.45"])  # even and odd lengths (padding)
def test_file_meta_bytes_equal_pydicoms_encoding_of_the_same_file_meta(syntax: str, instance_uid: str) -> None:
    from pynetdicom.dsutils import create_file_meta

    from engine.receiver.acse import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
    from engine.receiver.spool import file_meta_bytes

    expected = encode_file_meta(create_file_meta(sop_class_uid=CTImageStorage, sop_instance_uid=instance_uid,
                                                 transfer_syntax=syntax, implementation_uid=IMPLEMENTATION_CLASS_UID,
                                                 implementation_version=IMPLEMENTATION_VERSION_NAME))
    assert file_meta_bytes(CTImageStorage, instance_uid, syntax) == expected


def test_recent_files_keep_the_newest_within_the_budget() -> None:
    from engine.receiver.recent import RecentFiles

    recent = RecentFiles(budget_bytes=10)
    recent.put("a", b"1234")
    recent.put("b", b"5678")
    recent.put("c", b"90ab")  # 12 bytes > 10: the oldest goes
    assert recent.get("a") is None and recent.get("b") == b"5678" and recent.get("c") == b"90ab"
    recent.put("big", b"x" * 11)  # larger than the whole budget: not kept, nothing dropped for it
    assert recent.get("big") is None and recent.held_bytes == 8
    recent.discard("b")
    assert recent.get("b") is None and recent.held_bytes == 4


def test_a_recently_stored_file_reads_from_memory_and_equals_the_file(tmp_path: Path) -> None:
    spool = Spool(tmp_path, recent_bytes=1 << 20)
    entry = spool.store(file_meta(), b"dataset-bytes!")
    assert spool.recent.get(entry.name) == spool.path(entry.name).read_bytes()
    assert spool.read(entry.name) == spool.path(entry.name).read_bytes()
    spool.remove(entry.name)
    assert spool.recent.get(entry.name) is None and not spool.path(entry.name).exists()


def test_without_a_budget_every_read_goes_to_the_file(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    entry = spool.store(file_meta(), b"dataset-bytes!")
    assert spool.recent.get(entry.name) is None
    assert spool.read(entry.name).endswith(b"dataset-bytes!")
