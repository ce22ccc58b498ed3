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

from pynetdicom import evt

from engine.logs import get_logger

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


def _peer(event: evt.Event) -> tuple[str, str, str]:
    requestor = event.assoc.requestor
    primitive = requestor.primitive
    called = "" if primitive is None else str(primitive.called_ae_title).strip()
    return str(requestor.ae_title).strip(), called, f"{requestor.address}:{requestor.port}"


class AuditTrail:
    """Appends audit lines to one file; safe from every association thread."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._tallies: dict[int, _Tally] = {}

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

    def _tally(self, event: evt.Event) -> _Tally:
        key = id(event.assoc)
        with self._lock:
            tally = self._tallies.get(key)
            if tally is None:
                calling, called, address = _peer(event)
                tally = self._tallies[key] = _Tally(calling, called, address, time.time())
            return tally

    def on_accepted(self, event: evt.Event) -> None:
        """EVT_ACCEPTED: start counting for this association."""
        self._tally(event)

    def count(self, event: evt.Event, outcome: str, nbytes: int = 0, study_key: str | None = None) -> None:
        """One C-STORE's outcome: ``stored``, ``duplicate`` or ``refused``."""
        tally = self._tally(event)
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

    def on_ended(self, event: evt.Event) -> None:
        """EVT_RELEASED / EVT_ABORTED: write the association's line."""
        with self._lock:
            tally = self._tallies.pop(id(event.assoc), None)
        if tally is None:
            return
        self.write({"event": "instances-transferred", "calling_ae": tally.calling_ae, "called_ae": tally.called_ae,
                    "address": tally.address, "started": round(tally.started, 3),
                    "ended": "released" if event.event == evt.EVT_RELEASED else "aborted",
                    "stored": tally.stored, "duplicates": tally.duplicates, "refused": tally.refused,
                    "bytes": tally.bytes, "study_keys": sorted(tally.study_keys)})

    def on_rejected(self, event: evt.Event) -> None:
        """EVT_REJECTED: who was turned away."""
        calling, called, address = _peer(event)
        self.write({"event": "association-rejected", "calling_ae": calling, "called_ae": called, "address": address})

    def handlers(self) -> list[tuple[Any, Any]]:
        """The pynetdicom event bindings for an SCP."""
        return [(evt.EVT_ACCEPTED, self.on_accepted), (evt.EVT_RELEASED, self.on_ended),
                (evt.EVT_ABORTED, self.on_ended), (evt.EVT_REJECTED, self.on_rejected)]
