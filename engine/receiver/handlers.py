"""pynetdicom event handlers: C-STORE (validate, spool with fsync, record, answer), C-ECHO, association logs.

The dataset is stored exactly as received (no decode/re-encode); only its header
is parsed (:mod:`engine.receiver.parse`). Every failure maps to a named status;
no exception escapes the C-STORE handler (pynetdicom would answer 0xC211). Logs
carry opaque keys, AE titles and addresses, never patient data.
"""

from __future__ import annotations

import socket
import sqlite3
import time
from dataclasses import dataclass
from typing import Callable

from pydicom.uid import UID
from pynetdicom import evt

from engine.logs import get_logger
from engine.receiver.audit import AuditTrail
from engine.receiver.ledger import AddOutcome, DuplicatePolicy, Ledger
from engine.receiver.parse import InstanceRejected, parse_instance, validate_uids
from engine.receiver.spool import Spool, SpoolError, file_meta_bytes
from engine.receiver.statuses import StoreStatus

log = get_logger(__name__)


@dataclass
class StoreHandler:
    """The C-STORE handler of one SCP (called on association threads).

    Order: parse and validate the header, write + fsync the spool file, commit the
    ledger row, then notify ``on_instance_stored(series_uid)`` and answer 0x0000.
    """

    spool: Spool
    ledger: Ledger
    on_instance_stored: Callable[[str], object]
    duplicate_policy: DuplicatePolicy = "keep_first"
    max_instance_bytes: int = 2**31 - 1
    audit: AuditTrail | None = None
    max_study_bytes: int = 0  # 0: no cap
    priority_tag: str = ""  # routing.priority_tag: its text is kept on the series for the router

    def __call__(self, event: evt.Event) -> int:
        requestor = event.assoc.requestor
        calling_ae = str(requestor.ae_title).strip()
        try:
            series_uid = self._store(event, calling_ae)
        except InstanceRejected as rejection:
            log.warning("instance.rejected", status=f"0x{rejection.status:04X}", reason=rejection.reason,
                        calling_ae=calling_ae, address=requestor.address)
            if self.audit is not None:
                self.audit.count(event, "refused")
            return int(rejection.status)
        if series_uid is not None:
            self._notify(series_uid)
        return int(StoreStatus.SUCCESS)

    def _store(self, event: evt.Event, calling_ae: str) -> str | None:
        """Store one instance; returns its series UID when it changed the series, None for a duplicate."""
        request = event.request
        raw = request.DataSet.getvalue() if request.DataSet is not None else b""
        if len(raw) > self.max_instance_bytes:
            raise InstanceRejected(StoreStatus.OUT_OF_RESOURCES,
                                   f"instance of {len(raw)} bytes exceeds the cap of {self.max_instance_bytes}")
        transfer_syntax = UID(event.context.transfer_syntax)
        meta = parse_instance(raw, transfer_syntax, self.max_instance_bytes, self.priority_tag)
        validate_uids(meta, request.AffectedSOPInstanceUID, request.AffectedSOPClassUID)
        if self.max_study_bytes:
            held = self.ledger.study_bytes(meta.study_uid)
            if held + len(raw) > self.max_study_bytes:
                raise InstanceRejected(StoreStatus.OUT_OF_RESOURCES,
                                       f"study would hold {held + len(raw)} bytes, over the cap of {self.max_study_bytes}")
        try:
            entry = self.spool.store(file_meta_bytes(request.AffectedSOPClassUID, request.AffectedSOPInstanceUID,
                                                     transfer_syntax), raw)
        except SpoolError as exc:
            raise InstanceRejected(StoreStatus.OUT_OF_RESOURCES, str(exc)) from exc
        try:
            added = self.ledger.add_instance(meta, entry, calling_ae, time.time(), self.duplicate_policy)
        except sqlite3.Error as exc:
            self._discard(entry.name)
            raise InstanceRejected(StoreStatus.OUT_OF_RESOURCES, f"ledger write failed: {exc}") from exc
        if added.discard is not None:
            self._discard(added.discard)
        log.info("instance." + added.outcome.value, study_key=added.study_key, bytes=entry.size,
                 calling_ae=calling_ae, reopened=added.reopened)
        if self.audit is not None:
            stored = added.outcome in (AddOutcome.STORED, AddOutcome.REPLACED)
            self.audit.count(event, "stored" if stored else "duplicate", entry.size if stored else 0, added.study_key)
        return meta.series_uid if added.outcome in (AddOutcome.STORED, AddOutcome.REPLACED) else None

    def _discard(self, name: str) -> None:
        """Delete a spool file nobody references; failing leaves an orphan file, never a wrong answer."""
        try:
            self.spool.remove(name)
        except OSError as exc:
            log.warning("spool.remove_failed", spool_name=name, error=exc.strerror or str(exc))

    def _notify(self, series_uid: str) -> None:
        """Tell the assembler; the instance is durable already, so a failure here is logged, not answered."""
        try:
            self.on_instance_stored(series_uid)
        except Exception:  # noqa: BLE001 - any callback failure must not turn a stored instance into 0xC211
            log.error("instance.notify_failed", exc_info=True)


def handle_echo(event: evt.Event) -> int:
    """C-ECHO: the receiver is alive."""
    return int(StoreStatus.SUCCESS)


def tcp_nodelay(event: evt.Event) -> None:
    """Disable Nagle on each accepted connection: no ~40 ms stall per PDU against delayed ACKs."""
    sock = getattr(event.assoc.dul.socket, "socket", None)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


_ASSOCIATION_EVENTS = {evt.EVT_ACCEPTED: "assoc.accepted", evt.EVT_REJECTED: "assoc.rejected",
                       evt.EVT_RELEASED: "assoc.released", evt.EVT_ABORTED: "assoc.aborted"}


def log_association(event: evt.Event) -> None:
    """Association lifecycle as structured log lines (AE titles and address only)."""
    requestor = event.assoc.requestor
    primitive = requestor.primitive
    called_ae = "" if primitive is None else str(primitive.called_ae_title).strip()
    log.info(_ASSOCIATION_EVENTS.get(event.event, event.event.name), calling_ae=str(requestor.ae_title).strip(),
             called_ae=called_ae, address=f"{requestor.address}:{requestor.port}")
