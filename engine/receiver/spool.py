"""The spool: every acknowledged instance as a Part-10 file, fsynced before the answer.

Files are written to a temp name in their final folder, fsynced, renamed, and the
folder fsynced, so an instance acknowledged with 0x0000 survives a crash or power
loss. The dataset bytes are written exactly as received (never re-encoded). Names
are random (uuid4 hex, sharded by their first two characters), never UIDs or
patient data.
"""

from __future__ import annotations

import hashlib
import os
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path

from engine.dicom.encode import element, padded, uid_element
from engine.receiver.acse import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from engine.receiver.recent import RecentFiles

PREAMBLE = b"\x00" * 128 + b"DICM"
_HEX = frozenset("0123456789abcdef")


class SpoolError(Exception):
    """The instance could not be stored (disk full, I/O error, size cap); nothing is left behind."""


@dataclass(frozen=True)
class SpoolEntry:
    """A stored instance: opaque name (its file is ``Spool.path(name)``), file size, SHA-256 of the dataset bytes."""

    name: str
    size: int
    sha256: str


def file_meta_bytes(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> bytes:
    """The file meta group of a received instance (ScanStream's implementation UID and version), encoded directly.

    Byte for byte what pydicom writes for that dataset (``write_file_meta_info``), without
    building and validating a pydicom dataset for every received instance.
    """
    body = b"".join((
        element(0x00020001, b"OB", b"\x00\x01"),
        uid_element(0x00020002, sop_class_uid),
        uid_element(0x00020003, sop_instance_uid),
        uid_element(0x00020010, transfer_syntax),
        uid_element(0x00020012, IMPLEMENTATION_CLASS_UID),
        element(0x00020013, b"SH", padded(IMPLEMENTATION_VERSION_NAME, b" ")),
    ))
    return element(0x00020000, b"UL", struct.pack("<L", len(body))) + body


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """A folder of instance files, ``<root>/<name[:2]>/<name>``."""

    def __init__(self, root: Path, max_instance_bytes: int = 2**31 - 1, recent_bytes: int = 0) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._make_folders()
        self.max_instance_bytes = max_instance_bytes
        self.recent = RecentFiles(recent_bytes)  # the newest files' bytes, for the next read

    def _make_folders(self) -> None:
        """Create the 256 ``<name[:2]>`` folders up front (one folder fsync), not one by one as instances arrive."""
        made = False
        for index in range(256):
            folder = self.root / f"{index:02x}"
            if not folder.is_dir():
                folder.mkdir(exist_ok=True)
                made = True
        if made:
            _fsync_dir(self.root)

    def path(self, name: str) -> Path:
        """Where the instance called ``name`` lives (names are validated: no path tricks)."""
        if len(name) != 32 or not set(name) <= _HEX:
            raise SpoolError(f"not a spool name: {name!r}")
        return self.root / name[:2] / name

    def store(self, file_meta: bytes, dataset: bytes | memoryview) -> SpoolEntry:
        """Write preamble + the encoded file meta group + ``dataset`` as received, durably; raises
        :class:`SpoolError`."""
        if len(dataset) > self.max_instance_bytes:
            raise SpoolError(f"instance of {len(dataset)} bytes exceeds the cap of {self.max_instance_bytes}")
        name = uuid.uuid4().hex
        final = self.path(name)
        temp = final.with_name(f".{name}.part")
        try:
            data = b"".join((PREAMBLE, file_meta, dataset))
            try:
                handle = open(temp, "wb")
            except FileNotFoundError:  # its folder was removed since start-up
                final.parent.mkdir(exist_ok=True)
                _fsync_dir(self.root)
                handle = open(temp, "wb")
            with handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, final)
            _fsync_dir(final.parent)
        except OSError as exc:
            temp.unlink(missing_ok=True)
            final.unlink(missing_ok=True)
            raise SpoolError(f"spool write failed: {exc.strerror or exc}") from exc
        self.recent.put(name, data)
        size = len(data)
        return SpoolEntry(name=name, size=size, sha256=hashlib.sha256(dataset).hexdigest())

    def has(self, name: str) -> bool:
        """Whether the instance file is on disk (a name that is not a spool name never is)."""
        try:
            return self.path(name).is_file()
        except SpoolError:
            return False

    def read(self, name: str) -> bytes:
        """The whole Part-10 file (from memory when it was stored recently)."""
        path = self.path(name)
        return self.recent.get(name) or path.read_bytes()

    def remove(self, name: str) -> None:
        """Delete an instance file (a duplicate, a replaced instance, or a store the ledger refused)."""
        self.recent.discard(name)
        self.path(name).unlink(missing_ok=True)
