"""Results back to a PACS: each done job's DICOM outputs are C-STOREd (or STOW-RS'd, ``kind = "dicomweb"``,
see :mod:`engine.delivery.stow`) to the configured destinations.

The ledger holds one delivery per (job, destination), so a restart resumes what
was not yet sent. One sender thread in the receiver process sends due deliveries
one at a time; a destination that is down costs one connection attempt per
backoff step and never blocks the others for longer than its timeout.

Statuses (PS3.4 Annex B / C-STORE) decide what happens to a delivery:

- 0x0000: sent; 0xB000, 0xB006, 0xB007: sent, counted as a warning;
- 0xA7xx (out of resources), no response, or no association: tried again after
  the destination's backoff, until ``max_attempts``; then failed;
- 0xA9xx, 0xCxxx, 0x0122 and any other status: failed at once, with the reason.

Re-sending is safe: result UIDs are derived from the source series, model and
version, so a PACS sees the same instances again, never new ones.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from engine.config.entries import DestinationConfig
from engine.delivery.due_loop import run_due_loop
from engine.logs import get_logger
from engine.ledger.store import DeliveryRow, Ledger
from engine.delivery.stow import StowClient, StowError
from engine.dicom.store_scu import SendError, read_headers, store_files

log = get_logger(__name__)

WARNING_STATUSES = frozenset({0xB000, 0xB006, 0xB007})


@dataclass(frozen=True)
class AttemptOutcome:
    """What one attempt came to: ``sent``, ``retry`` or ``failed``, why, and how many warnings."""

    verdict: str
    reason: str | None = None
    warnings: int = 0


def judge_statuses(statuses: Sequence[tuple[Path, int | None]]) -> AttemptOutcome:
    """The outcome of one association's C-STORE statuses (see the module docstring)."""
    warnings = sum(1 for _, code in statuses if code in WARNING_STATUSES)
    permanent = [(path, code) for path, code in statuses
                 if code is not None and code != 0x0000 and code not in WARNING_STATUSES and code & 0xFF00 != 0xA700]
    transient = [(path, code) for path, code in statuses if code is None or code & 0xFF00 == 0xA700]
    if permanent:
        path, code = permanent[0]
        return AttemptOutcome("failed", f"{path.name} refused with status 0x{code:04X}"
                              + (f" (and {len(permanent) - 1} more)" if len(permanent) > 1 else ""), warnings)
    if transient:
        path, code = transient[0]
        what = "no response" if code is None else f"status 0x{code:04X} (out of resources)"
        return AttemptOutcome("retry", f"{path.name}: {what}" + (f" (and {len(transient) - 1} more)"
                                                                 if len(transient) > 1 else ""), warnings)
    return AttemptOutcome("sent", f"{warnings} warning status(es)" if warnings else None, warnings)


def dicom_outputs(result_dir: Path) -> list[Path]:
    """The DICOM files among a job's results (``*.dcm``), in name order."""
    return sorted(result_dir.glob("*.dcm"))


class DeliveryService:
    """Queues done jobs' results for the destinations and sends them, with retry and backoff."""

    def __init__(self, ledger: Ledger, destinations: Sequence[DestinationConfig], *,
                 on_sent: Callable[[str], object] | None = None, clock: Callable[[], float] = time.time) -> None:
        self._ledger = ledger
        self._destinations = {destination.name: destination for destination in destinations}
        self._tls = {destination.name: destination.tls_context() for destination in destinations
                     if destination.kind == "dimse"}
        self._stow = {destination.name: StowClient(destination) for destination in destinations
                      if destination.kind == "dicomweb"}
        self._on_sent = on_sent
        self._clock = clock
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def destinations_for(self, model: str, result_dir: Path) -> list[str]:
        """Names of the destinations that get ``model``'s results in ``result_dir`` (none without DICOM files)."""
        if not dicom_outputs(result_dir):
            return []
        return [d.name for d in self._destinations.values() if d.takes(model)]

    def wake(self, _job_id: str = "") -> None:
        """New deliveries were queued: look now instead of at the next tick."""
        self._wake.set()

    def deliver_due(self) -> int:
        """Attempt every due delivery once; returns how many were attempted."""
        due = self._ledger.due_deliveries(self._clock())
        for row in due:
            if self._stop.is_set():
                break
            self._attempt(row)
        return len(due)

    def _attempt(self, row: DeliveryRow) -> None:
        destination = self._destinations.get(row.destination)
        now = self._clock()
        if destination is None:
            self._ledger.record_delivery(row.job_id, row.destination, "failed", now,
                                         reason="destination no longer configured")
            log.warning("delivery.failed", job=row.job_id, destination=row.destination,
                        reason="destination no longer configured")
            return
        outcome = self._send(row, destination)
        attempts = row.attempts + 1
        now = self._clock()
        if outcome.verdict == "retry" and attempts < destination.max_attempts:
            wait = destination.backoff_s(attempts)
            self._ledger.record_delivery(row.job_id, row.destination, "pending", now, reason=outcome.reason,
                                         warnings=outcome.warnings, next_attempt=now + wait)
            log.warning("delivery.retry", job=row.job_id, destination=row.destination, attempt=attempts,
                        retry_in_s=round(wait, 3), reason=outcome.reason)
            return
        if outcome.verdict == "retry":
            reason = f"gave up after {attempts} attempts; last: {outcome.reason}"
            self._ledger.record_delivery(row.job_id, row.destination, "failed", now, reason=reason,
                                         warnings=outcome.warnings)
            log.warning("delivery.failed", job=row.job_id, destination=row.destination, attempts=attempts,
                        reason=reason)
            return
        self._ledger.record_delivery(row.job_id, row.destination, outcome.verdict, now, reason=outcome.reason,
                                     warnings=outcome.warnings)
        if outcome.verdict == "sent":
            log.info("delivery.sent", job=row.job_id, destination=row.destination, attempt=attempts,
                     warnings=outcome.warnings)
            if self._on_sent is not None:
                self._on_sent(row.job_id)
        else:
            log.warning("delivery.failed", job=row.job_id, destination=row.destination, attempts=attempts,
                        reason=outcome.reason)

    def _send(self, row: DeliveryRow, destination: DestinationConfig) -> AttemptOutcome:
        files = dicom_outputs(Path(row.result_dir))
        if not files:
            return AttemptOutcome("failed", "the job's result folder holds no DICOM files (replaced by a re-run?)")
        entries, unreadable = read_headers(files)
        if unreadable:
            return AttemptOutcome("failed", f"{len(unreadable)} result file(s) are not readable DICOM")
        if destination.kind == "dicomweb":
            try:
                return judge_statuses(self._stow[destination.name].store(files))
            except StowError as exc:
                return AttemptOutcome("retry" if exc.transient else "failed", str(exc))
        try:
            statuses = store_files(entries, destination.host, destination.port, destination.ae_title,
                                   destination.calling_ae_title, timeout_s=destination.timeout_s,
                                   tls=self._tls[destination.name])
        except SendError as exc:
            return AttemptOutcome("retry", str(exc))
        except OSError as exc:
            return AttemptOutcome("retry", f"connection to {destination.host}:{destination.port} failed: {exc}")
        return judge_statuses(statuses)

    def alive(self) -> bool:
        """Whether the sender thread runs, or none is needed (no destinations)."""
        if not self._destinations:
            return True
        return self._thread is not None and self._thread.is_alive() and not self._stop.is_set()

    def start(self) -> None:
        """Start the sender thread (no-op without destinations)."""
        if not self._destinations or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="delivery", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        run_due_loop(self._stop, self._wake, self.deliver_due, self._ledger.next_delivery_due, self._clock)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the current attempt (pending deliveries stay in the ledger for the next start)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        for client in self._stow.values():
            client.close()
