"""The spool: every acknowledged instance as a Part-10 file, fsynced before the answer.

Files are written to a temp name, fsynced, renamed, and the directory fsynced, so
an instance acknowledged with 0x0000 survives a crash or power loss. Names are
random (sharded by their first two characters), never UIDs or patient data.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from pydicom.filewriter import write_file_meta_info
from pydicom.filebase import DicomBytesIO
from pydicom.dataset import FileMetaDataset

PREAMBLE = b"\x00" * 128 + b"DICM"


class SpoolError(Exception):
    """The instance could not be stored (disk full, I/O error, size cap); nothing is left behind."""


@dataclass(frozen=True)
class SpoolEntry:
    """A stored instance: opaque name, size of the whole file, and its SHA-256."""

    name: str
    size: int
    sha256: str


def encode_file_meta(file_meta: FileMetaDataset) -> bytes:
    """The file meta group as bytes (preamble and prefix not included)."""
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_file_meta_info(buffer, file_meta, enforce_standard=True)
    return buffer.getvalue()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """A folder of instance files."""

    def __init__(self, root: Path, max_instance_bytes: int = 2**31 - 1) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_instance_bytes = max_instance_bytes

    def path(self, name: str) -> Path:
        """Where the instance called ``name`` lives."""
        if len(name) != 32 or not all(ch in "0123456789abcdef" for ch in name):
            raise SpoolError(f"not a spool name: {name!r}")
        return self.root / name[:2] / name

    def store(self, meta_bytes: bytes, dataset: bytes | memoryview) -> SpoolEntry:
        """Write preamble + meta + dataset as received; fsync; return its entry. Raises SpoolError."""
        size = len(PREAMBLE) + len(meta_bytes) + len(dataset)
        if len(dataset) > self.max_instance_bytes:
            raise SpoolError(f"instance of {len(dataset)} bytes exceeds the cap of {self.max_instance_bytes}")
        name = uuid.uuid4().hex
        final = self.path(name)
        temp = final.with_name(f".{name}.part")
        digest = hashlib.sha256(dataset)
        try:
            final.parent.mkdir(exist_ok=True)
            with open(temp, "wb") as handle:
                handle.write(PREAMBLE)
                handle.write(meta_bytes)
                handle.write(dataset)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, final)
            _fsync_dir(final.parent)
        except OSError as exc:
            temp.unlink(missing_ok=True)
            final.unlink(missing_ok=True)
            raise SpoolError(f"spool write failed: {exc.strerror or exc}") from exc
        return SpoolEntry(name=name, size=size, sha256=digest.hexdigest())

    def read(self, name: str) -> bytes:
        """The whole Part-10 file."""
        return self.path(name).read_bytes()

    def remove(self, name: str) -> None:
        """Delete an instance file (a duplicate, or a store the ledger refused)."""
        self.path(name).unlink(missing_ok=True)
