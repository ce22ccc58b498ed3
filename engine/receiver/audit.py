"""The audit trail: who sent what and when, one JSON line per association, in the spirit of DICOM's audit events.

``audit.log`` in the data folder gets a line when an association ends
(``instances-transferred``: calling and called AE, peer address, start and end,
how it ended, instances stored / duplicate / refused, bytes, and the opaque study
keys touched) and when one is refused (``association-rejected``). No patient
names, IDs or birth dates: study keys, never UIDs or demographics. Each line is
flushed and fsynced, so the trail survives a crash of the receiver.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.logs import get_logger
from engine.receiver.acse import AssociationInfo

log = get_logger(__name__)


@dataclass
class _Tally:
    """What one association did so far."""

    calling_ae: str
    called_ae: str
    address: str
    started: float
    stored: int = 0
    duplicates: int = 0
    refused: int = 0
    bytes: int = 0
    study_keys: set[str] = field(default_factory=set)


class AuditTrail:
    """Appends audit lines to one file; safe from every association thread."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._tallies: dict[int, _Tally] = {}  # by id() of the association's AssociationInfo

    def write(self, record: dict[str, Any]) -> None:
        """Append one line and make it durable; a failing disk is logged, never raised into DICOM handling."""
        line = json.dumps({"ts": round(time.time(), 3), **record}, sort_keys=True) + "\n"
        try:
            with self._lock, open(self.path, "a", encoding="utf-8") as handle:
                handle.write(line)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as error:
            log.error("audit.write_failed", path=str(self.path), error=error.strerror or str(error))

    def _tally(self, info: AssociationInfo) -> _Tally:
        key = id(info)
        with self._lock:
            tally = self._tallies.get(key)
            if tally is None:
                tally = self._tallies[key] = _Tally(info.calling_ae, info.called_ae, info.address, time.time())
            return tally

    def on_accepted(self, info: AssociationInfo) -> None:
        """An association was accepted: start counting for it."""
        self._tally(info)

    def count(self, info: AssociationInfo, outcome: str, nbytes: int = 0, study_key: str | None = None) -> None:
        """One C-STORE's outcome: ``stored``, ``duplicate`` or ``refused``."""
        tally = self._tally(info)
        with self._lock:
            if outcome == "stored":
                tally.stored += 1
                tally.bytes += nbytes
            elif outcome == "duplicate":
                tally.duplicates += 1
            else:
                tally.refused += 1
            if study_key:
                tally.study_keys.add(study_key)

    def on_ended(self, info: AssociationInfo, released: bool) -> None:
        """The association was released or aborted: write its line."""
        with self._lock:
            tally = self._tallies.pop(id(info), None)
        if tally is None:
            return
        self.write({"event": "instances-transferred", "calling_ae": tally.calling_ae, "called_ae": tally.called_ae,
                    "address": tally.address, "started": round(tally.started, 3),
                    "ended": "released" if released else "aborted",
                    "stored": tally.stored, "duplicates": tally.duplicates, "refused": tally.refused,
                    "bytes": tally.bytes, "study_keys": sorted(tally.study_keys)})

    def on_rejected(self, info: AssociationInfo) -> None:
        """An association was refused: who was turned away."""
        self.write({"event": "association-rejected", "calling_ae": info.calling_ae, "called_ae": info.called_ae,
                    "address": info.address})
