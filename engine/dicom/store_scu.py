"""A C-STORE client for files and folders: ``scanstream send`` and the demo's modality.

Proposes each file's SOP class with its own transfer syntax (no transcoding), sends
over one association, and reports each instance's status by name.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import pydicom
from pydicom.errors import InvalidDicomError
from pynetdicom import AE, build_context, evt

from engine.logs import get_logger

log = get_logger(__name__)
MAX_CONTEXTS = 128


def tcp_nodelay(event: evt.Event) -> None:
    """EVT_CONN_OPEN: disable Nagle on a pynetdicom connection (no ~40 ms stall per PDU against delayed ACKs)."""
    sock = getattr(event.assoc.dul.socket, "socket", None)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class SendError(Exception):
    """The association could not be made or was rejected."""


@dataclass
class SendReport:
    """What happened to each file."""

    sent: int = 0
    failed: list[tuple[str, int | None]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    bytes_sent: int = 0


def collect_files(paths: Iterable[Path | str]) -> list[Path]:
    """Expand folders (recursively) into files, sorted, keeping given files as they are."""
    files: list[Path] = []
    for item in map(Path, paths):
        if item.is_dir():
            files.extend(sorted(p for p in item.rglob("*") if p.is_file()))
        elif item.is_file():
            files.append(item)
        else:
            raise SendError(f"{item} does not exist")
    return files


def _headers(files: Sequence[Path], report: SendReport) -> list[tuple[Path, str, str]]:
    found = []
    for path in files:
        try:
            meta = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
            found.append((path, str(meta.file_meta.MediaStorageSOPClassUID), str(meta.file_meta.TransferSyntaxUID)))
        except (InvalidDicomError, AttributeError, OSError):
            report.skipped.append(str(path))
    return found


def store_files(entries: Sequence[tuple[Path, str, str]], host: str, port: int, called_aet: str, calling_aet: str,
                timeout_s: float | None = None, tls: ssl.SSLContext | None = None) -> list[tuple[Path, int | None]]:
    """C-STORE ``(path, SOP class, transfer syntax)`` entries over one association: each file's status.

    The status is None when no response came (the association dropped or timed
    out). Raises :class:`SendError` when the association cannot be made.
    """
    pairs = sorted({(sop, ts) for _, sop, ts in entries})
    if len(pairs) > MAX_CONTEXTS:
        raise SendError(f"{len(pairs)} SOP class / transfer syntax pairs exceed the {MAX_CONTEXTS} contexts allowed")
    if not entries:
        return []
    ae = AE(ae_title=calling_aet)
    if timeout_s is not None:
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
        ae.connection_timeout = timeout_s
    ae.requested_contexts = [build_context(sop, ts) for sop, ts in pairs]
    assoc = ae.associate(host, port, ae_title=called_aet, evt_handlers=[(evt.EVT_CONN_OPEN, tcp_nodelay)],
                         tls_args=(tls, host) if tls is not None else None)
    if not assoc.is_established:
        raise SendError(f"association to {called_aet}@{host}:{port}{' over TLS' if tls else ''} was rejected "
                        "or failed")
    statuses: list[tuple[Path, int | None]] = []
    try:
        for path, _, _ in entries:
            if not assoc.is_established:
                statuses.append((path, None))
                continue
            status = assoc.send_c_store(path)
            statuses.append((path, int(status.Status) if "Status" in status else None))
    finally:
        if assoc.is_established:
            assoc.release()
    return statuses


def read_headers(files: Sequence[Path]) -> tuple[list[tuple[Path, str, str]], list[str]]:
    """(path, SOP class, transfer syntax) of each readable DICOM file, and the paths that are not DICOM."""
    report = SendReport()
    return _headers(files, report), report.skipped


def send_files(
    paths: Iterable[Path | str], host: str, port: int, called_aet: str = "SCANSTREAM", calling_aet: str = "SCANSTREAM_SCU"
) -> SendReport:
    """C-STORE every DICOM file under ``paths``; non-DICOM files are skipped and reported."""
    report = SendReport()
    entries = _headers(collect_files(paths), report)
    for path, code in store_files(entries, host, port, called_aet, calling_aet):
        if code == 0x0000 or (code is not None and code & 0xF000 == 0xB000):
            report.sent += 1
            report.bytes_sent += path.stat().st_size
        else:
            report.failed.append((str(path), code))
    log.info("send.finished", sent=report.sent, failed=len(report.failed), skipped=len(report.skipped))
    return report
