"""The receiver's answers: C-STORE (validate, spool with fsync, record, answer) and the association log lines.

The dataset is stored exactly as received (no decode/re-encode); only its header
is parsed (:mod:`engine.receiver.parse`). Every failure maps to a named status;
no exception escapes the C-STORE handler (an unexpected one is answered 0x0110). Logs
carry opaque keys, AE titles and addresses, never patient data.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from typing import Callable

from pydicom.uid import UID

from engine.logs import get_logger
from engine.receiver.acse import AssociationInfo
from engine.receiver.association import StoreRequest
from engine.receiver.audit import AuditTrail
from engine.ledger.store import AddOutcome, DuplicatePolicy, Ledger
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

    def __call__(self, request: StoreRequest) -> int:
        peer = request.peer
        try:
            series_uid = self._store(request)
        except InstanceRejected as rejection:
            log.warning("instance.rejected", status=f"0x{rejection.status:04X}", reason=rejection.reason,
                        calling_ae=peer.calling_ae, address=peer.host)
            if self.audit is not None:
                self.audit.count(peer, "refused")
            return int(rejection.status)
        except Exception:  # noqa: BLE001 - a defect must not end the association: answer "processing failure"
            log.error("instance.store_failed", calling_ae=peer.calling_ae, address=peer.host, exc_info=True)
            if self.audit is not None:
                self.audit.count(peer, "refused")
            return int(StoreStatus.PROCESSING_FAILURE)
        if series_uid is not None:
            self._notify(series_uid)
        return int(StoreStatus.SUCCESS)

    def _store(self, request: StoreRequest) -> str | None:
        """Store one instance; returns its series UID when it changed the series, None for a duplicate."""
        raw = request.dataset
        calling_ae = request.peer.calling_ae
        if len(raw) > self.max_instance_bytes:
            raise InstanceRejected(StoreStatus.OUT_OF_RESOURCES,
                                   f"instance of {len(raw)} bytes exceeds the cap of {self.max_instance_bytes}")
        transfer_syntax = UID(request.transfer_syntax)
        meta = parse_instance(raw, transfer_syntax, self.max_instance_bytes, self.priority_tag)
        validate_uids(meta, request.sop_instance_uid, request.sop_class_uid)
        if self.max_study_bytes:
            held = self.ledger.study_bytes(meta.study_uid)
            if held + len(raw) > self.max_study_bytes:
                raise InstanceRejected(StoreStatus.OUT_OF_RESOURCES,
                                       f"study would hold {held + len(raw)} bytes, over the cap of {self.max_study_bytes}")
        try:
            entry = self.spool.store(file_meta_bytes(request.sop_class_uid, request.sop_instance_uid, transfer_syntax),
                                     raw)
        except SpoolError as exc:
            raise InstanceRejected(StoreStatus.OUT_OF_RESOURCES, str(exc)) from exc
        try:
            added = self.ledger.add_instance(meta, entry, calling_ae, time.time(), self.duplicate_policy)
        except sqlite3.Error as exc:
            self._discard(entry.name)
            raise InstanceRejected(StoreStatus.OUT_OF_RESOURCES, f"ledger write failed: {exc}") from exc
        except BaseException:  # a defect: no ledger row will name this file, so it must not stay behind
            self._discard(entry.name)
            raise
        if added.discard is not None:
            self._discard(added.discard)
        log.info("instance." + added.outcome.value, study_key=added.study_key, bytes=entry.size,
                 calling_ae=calling_ae, reopened=added.reopened)
        if self.audit is not None:
            stored = added.outcome in (AddOutcome.STORED, AddOutcome.REPLACED)
            self.audit.count(request.peer, "stored" if stored else "duplicate", entry.size if stored else 0,
                             added.study_key)
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
        except Exception:  # noqa: BLE001 - any callback failure must not turn a stored instance into a failure
            log.error("instance.notify_failed", exc_info=True)


class AssociationLog:
    """Association lifecycle as structured log lines (AE titles and address only), and the audit trail's lines."""

    def __init__(self, audit: AuditTrail | None = None) -> None:
        self.audit = audit

    @staticmethod
    def _line(event: str, info: AssociationInfo) -> None:
        log.info(event, calling_ae=info.calling_ae, called_ae=info.called_ae, address=info.address)

    def accepted(self, info: AssociationInfo) -> None:
        self._line("assoc.accepted", info)
        if self.audit is not None:
            self.audit.on_accepted(info)

    def rejected(self, info: AssociationInfo) -> None:
        self._line("assoc.rejected", info)
        if self.audit is not None:
            self.audit.on_rejected(info)

    def ended(self, info: AssociationInfo, released: bool) -> None:
        self._line("assoc.released" if released else "assoc.aborted", info)
        if self.audit is not None:
            self.audit.on_ended(info, released)
