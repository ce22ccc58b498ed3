"""Spool: bytes as received, opaque names, nothing left behind on failure."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from engine.receiver.spool import Spool, SpoolError, encode_file_meta

UID = "1.2.826.0.1.3680043.8.498.1"


def file_meta() -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = UID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return meta


def test_store_writes_part10_with_the_dataset_bytes_unchanged(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    dataset = b"\x08\x00\x16\x00UI\x1a\x00" + CTImageStorage.encode() + b"\x00"
    entry = spool.store(encode_file_meta(file_meta()), dataset)
    data = spool.read(entry.name)
    assert data.endswith(dataset) and data[128:132] == b"DICM"
    assert entry.sha256 == hashlib.sha256(dataset).hexdigest() and entry.size == len(data)
    assert UID not in str(spool.path(entry.name))
    assert pydicom.dcmread(spool.path(entry.name)).file_meta.MediaStorageSOPInstanceUID == UID
    spool.remove(entry.name)
    assert not spool.path(entry.name).exists()


def test_size_cap_and_io_errors_leave_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path, max_instance_bytes=2048)
    with pytest.raises(SpoolError, match="exceeds the cap"):
        spool.store(b"", b"x" * 4096)

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(SpoolError, match="No space left"):
        spool.store(b"", b"x" * 100)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_names_are_validated(tmp_path: Path) -> None:
    with pytest.raises(SpoolError):
        Spool(tmp_path).path("../../etc/passwd")
