"""C-STORE and association event handlers: validate, spool with fsync, record, then answer.

The dataset is stored exactly as received (no decode/re-encode); only its header
is parsed. Every failure maps to a named status; no exception escapes a handler
(pynetdicom would answer 0xC211 for one). Logs carry opaque keys, AE titles and
addresses, never patient data.
"""

from __future__ import annotations

import copy
import io
import re
import socket
import struct
import time
import zlib
from dataclasses import dataclass
from typing import Callable

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian
from pynetdicom import evt

from engine.logs import get_logger
from engine.receiver.ledger import AddOutcome, DuplicatePolicy, InstanceMeta, Ledger
from engine.receiver.spool import PREAMBLE, Spool, SpoolError, encode_file_meta
from engine.receiver.statuses import StoreStatus

log = get_logger(__name__)
_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_UID_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")


class InstanceRejected(Exception):
    """The instance is refused with ``status``; ``reason`` is safe to log."""

    def __init__(self, status: StoreStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def is_safe_uid(value: object) -> bool:
    """A UID of 1-64 characters: digits and dots, no empty or zero-padded components."""
    text = str(value) if value is not None else ""
    return 0 < len(text) <= 64 and bool(_UID_RE.match(text))


def _inflate(raw: bytes, cap: int) -> bytes:
    """Inflate a deflated dataset, refusing to grow past ``cap`` bytes (a zip-bomb guard)."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        data = inflater.decompress(raw, cap + 1)
    except zlib.error as exc:
        raise InstanceRejected(StoreStatus.CANNOT_UNDERSTAND_DEFLATE, f"deflate stream is corrupt: {exc}") from exc
    if len(data) > cap or inflater.unconsumed_tail:
        raise InstanceRejected(StoreStatus.OUT_OF_RESOURCES, f"inflated dataset exceeds the cap of {cap} bytes")
    return data


def _expected_native_pixel_bytes(ds: Dataset) -> int | None:
    keys = ("Rows", "Columns", "BitsAllocated")
    if any(k not in ds for k in keys):
        return None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    bits = int(ds.Rows) * int(ds.Columns) * frames * samples * int(ds.BitsAllocated)
    return (bits + 7) // 8


def parse_dataset(file_meta: FileMetaDataset, raw: bytes, inflated_cap: int) -> Dataset:
    """Parse the received dataset; truncation and nonsense raise :class:`InstanceRejected` (0xC0xx)."""
    transfer_syntax = UID(file_meta.TransferSyntaxUID)
    body = raw
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        body = _inflate(raw, inflated_cap)
        file_meta = copy.deepcopy(file_meta)
        file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    try:
        ds = pydicom.dcmread(io.BytesIO(PREAMBLE + encode_file_meta(file_meta) + body))
        ds.SOPInstanceUID  # noqa: B018 - force the lazy parse of the top level
    except (InvalidDicomError, EOFError, ValueError, KeyError, OSError, AttributeError, struct.error) as exc:
        raise InstanceRejected(StoreStatus.CANNOT_UNDERSTAND, f"dataset cannot be parsed ({type(exc).__name__})") from exc
    if "PixelData" in ds and not transfer_syntax.is_compressed:
        expected = _expected_native_pixel_bytes(ds)
        actual = len(ds.PixelData)
        if expected is not None and actual < expected:
            raise InstanceRejected(StoreStatus.CANNOT_UNDERSTAND_TRUNCATED,
                                   f"pixel data has {actual} bytes, rows x columns x frames x bits need {expected}")
    return ds


def validate_uids(ds: Dataset, command_sop_instance: str, command_sop_class: str) -> None:
    """Dataset UIDs must be safe and match the C-STORE command (else 0xA900)."""
    for keyword in _UID_KEYWORDS:
        if not is_safe_uid(ds.get(keyword)):
            raise InstanceRejected(StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS, f"{keyword} is missing or unsafe")
    if str(ds.SOPInstanceUID) != str(command_sop_instance):
        raise InstanceRejected(StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                               "SOPInstanceUID differs from the command's AffectedSOPInstanceUID")
    if str(ds.SOPClassUID) != str(command_sop_class):
        raise InstanceRejected(StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                               "SOPClassUID differs from the command's AffectedSOPClassUID")


@dataclass
class StoreHandler:
    """The C-STORE handler of one SCP (called on association threads)."""

    spool: Spool
    ledger: Ledger
    on_instance_stored: Callable[[str], object]
    duplicate_policy: DuplicatePolicy = "keep_first"
    inflated_cap: int = 2**31 - 1

    def __call__(self, event: evt.Event) -> int:
        calling_ae = str(event.assoc.requestor.ae_title).strip()
        try:
            return self._store(event, calling_ae)
        except InstanceRejected as rejection:
            log.warning("instance.rejected", status=hex(rejection.status), reason=rejection.reason,
                        calling_ae=calling_ae, address=event.assoc.requestor.address)
            return int(rejection.status)

    def _store(self, event: evt.Event, calling_ae: str) -> int:
        request = event.request
        raw = request.DataSet.getvalue() if request.DataSet is not None else b""
        if len(raw) > self.spool.max_instance_bytes:
            raise InstanceRejected(StoreStatus.OUT_OF_RESOURCES,
                                   f"instance of {len(raw)} bytes exceeds the cap of {self.spool.max_instance_bytes}")
        file_meta = event.file_meta
        ds = parse_dataset(file_meta, raw, self.inflated_cap)
        validate_uids(ds, request.AffectedSOPInstanceUID, request.AffectedSOPClassUID)
        meta = InstanceMeta.from_dataset(ds)
        try:
            entry = self.spool.store(encode_file_meta(file_meta), raw)
        except SpoolError as exc:
            raise InstanceRejected(StoreStatus.OUT_OF_RESOURCES, str(exc)) from exc
        try:
            outcome, to_remove = self.ledger.add_instance(meta, entry, calling_ae, time.time(), self.duplicate_policy)
        except Exception as exc:  # noqa: BLE001 - any ledger failure must answer A700, never C211; logged
            self.spool.remove(entry.name)
            raise InstanceRejected(StoreStatus.OUT_OF_RESOURCES, f"ledger write failed ({type(exc).__name__})") from exc
        if to_remove:
            self.spool.remove(to_remove)
        study_key = self.ledger.study_key(meta.study_uid) if outcome != AddOutcome.DUPLICATE_SAME else None
        log.info("instance." + outcome.value, study_key=study_key, bytes=entry.size, calling_ae=calling_ae)
        if outcome in (AddOutcome.STORED, AddOutcome.REPLACED):
            self.on_instance_stored(meta.series_uid)
        return int(StoreStatus.SUCCESS)


def handle_echo(event: evt.Event) -> int:
    """C-ECHO: the receiver is alive."""
    return int(StoreStatus.SUCCESS)


def tcp_nodelay(event: evt.Event) -> None:
    """Disable Nagle on each accepted connection: no ~40 ms stall per PDU against delayed ACKs."""
    raw = getattr(event.assoc.dul.socket, "socket", None)
    if raw is not None:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def log_association(event: evt.Event) -> None:
    """Association lifecycle as structured log lines (AE titles and address only)."""
    names = {evt.EVT_ACCEPTED: "assoc.accepted", evt.EVT_REJECTED: "assoc.rejected",
             evt.EVT_RELEASED: "assoc.released", evt.EVT_ABORTED: "assoc.aborted"}
    requestor = event.assoc.requestor
    log.info(names.get(event.event, event.event.name), calling_ae=str(requestor.ae_title).strip(),
             address=f"{requestor.address}:{requestor.port}")
