"""Events into the ledger, then out to each ``[[notifications]]`` target with retry and backoff.

A finished job (done or failed) becomes one event (built on the sender thread, not
the broker's: it reads the job's result files), queued in the ledger for
every target whose triggers and models take it; its study is then watched and,
once final (every series complete, every job and delivery finished), a
``study_final`` event is queued the same way. One sender thread in the receiver
sends due events one at a time, like the delivery service; a restart resumes
what is pending. An event is queued after its job's ledger transaction, so a
crash between the two loses that one event (the job itself is kept).
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from typing import Callable, Sequence

from engine.config.entries import NotificationConfig
from engine.delivery.due_loop import run_due_loop
from engine.ledger.store import Ledger, NotificationRow
from engine.ledger.study_report import study_report
from engine.logs import get_logger
from engine.notify.events import Event, job_event, study_event
from engine.notify.registry import Notifier, NotifierRegistry, SendOutcome, StudyFacts

log = get_logger(__name__)


class NotificationService:
    """Queues events for the configured targets and sends them; see the module docstring."""

    def __init__(self, ledger: Ledger, configs: Sequence[NotificationConfig], registry: NotifierRegistry, *,
                 facts: Callable[[str], StudyFacts] | None = None, clock: Callable[[], float] = time.time) -> None:
        self._ledger = ledger
        self._configs = {config.name: config for config in configs}
        self._notifiers: dict[str, Notifier] = {config.name: registry.build(config, index)
                                                for index, config in enumerate(configs)}
        self._facts = facts or (lambda _study_uid: StudyFacts())
        self._clock = clock
        self._finished: deque[str] = deque()  # appended on the broker thread, drained on the sender thread
        self._watched: set[str] = set()  # sender thread only
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        """True when any target is configured."""
        return bool(self._configs)

    def job_finished(self, job_id: str) -> None:
        """A job is done or failed: noted here, its event built and queued on the sender thread (the caller is
        the broker's thread, which must not read result files)."""
        if not self._configs:
            return
        self._finished.append(job_id)
        self._wake.set()

    def queue_finished(self) -> int:
        """Build and queue the events of the jobs noted by :meth:`job_finished`, watching their studies."""
        queued = 0
        while self._finished:
            job = self._ledger.job(self._finished.popleft())
            event = job_event(self._ledger, job, self._clock()) if job is not None else None
            if event is None:
                continue
            queued += self._queue(event)
            self._watched.add(event.study_uid)
        return queued

    def check_studies(self) -> int:
        """Queue ``study_final`` for each watched study now final; returns how many were queued."""
        self.queue_finished()
        queued = 0
        for study_uid in list(self._watched):
            report = study_report(self._ledger, study_uid)
            event = study_event(report, self._clock()) if report is not None else None
            if report is None or event is not None:
                self._watched.discard(study_uid)
            if event is not None:
                queued += self._queue(event)
        return queued

    def _queue(self, event: Event) -> int:
        targets = [name for name, config in self._configs.items() if config.takes(event.trigger, event.model)]
        if not targets:
            return 0
        added = self._ledger.add_notifications(event.event_id, event.trigger, event.study_uid, event.job_id,
                                               event.payload(), targets, self._clock())
        if added:
            log.info("notification.queued", kind=event.event_id.split(":", 1)[0], trigger=event.trigger,
                     job=event.job_id, targets=len(targets))
        return added

    def send_due(self) -> int:
        """Queue the events of finished jobs, then attempt every due notification once; returns how many were
        attempted."""
        self.queue_finished()
        due = self._ledger.due_notifications(self._clock())
        for row in due:
            if self._stop.is_set():
                break
            self._attempt(row)
        return len(due)

    def _attempt(self, row: NotificationRow) -> None:
        config = self._configs.get(row.notifier)
        notifier = self._notifiers.get(row.notifier)
        if config is None or notifier is None:
            self._record(row, "failed", "notification target no longer configured")
            return
        outcome = self._send(notifier, row)
        attempts = row.attempts + 1
        if outcome.verdict == "retry" and attempts < config.max_attempts:
            wait = config.backoff_s(attempts)
            self._ledger.record_notification(row.event_id, row.notifier, "pending", self._clock(),
                                             reason=outcome.reason, next_attempt=self._clock() + wait)
            log.warning("notification.retry", target=row.notifier, trigger=row.trigger, job=row.job_id,
                        attempt=attempts, retry_in_s=round(wait, 3), reason=outcome.reason)
            return
        if outcome.verdict == "retry":
            self._record(row, "failed", f"gave up after {attempts} attempts; last: {outcome.reason}")
            return
        self._record(row, outcome.verdict, outcome.reason)

    def _send(self, notifier: Notifier, row: NotificationRow) -> SendOutcome:
        try:
            event = json.loads(row.payload)
        except ValueError:
            return SendOutcome("failed", "the stored event is not JSON")
        return notifier.send(event, self._facts(row.study_uid))

    def _record(self, row: NotificationRow, state: str, reason: str | None) -> None:
        self._ledger.record_notification(row.event_id, row.notifier, state, self._clock(), reason=reason)
        if state == "sent":
            log.info("notification.sent", target=row.notifier, trigger=row.trigger, job=row.job_id,
                     attempt=row.attempts + 1)
        else:
            log.warning("notification.failed", target=row.notifier, trigger=row.trigger, job=row.job_id,
                        attempts=row.attempts + 1, reason=reason)

    def wake(self) -> None:
        """Something changed (a delivery finished): look at watched studies now."""
        self._wake.set()

    def start(self) -> None:
        """Start the sender thread (no-op without targets)."""
        if not self._configs or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="notifications", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        run_due_loop(self._stop, self._wake, self._check_and_send, self._ledger.next_notification_due, self._clock)

    def _check_and_send(self) -> int:
        """Queue the events of studies that became final, then send what is due; how many were attempted."""
        self.check_studies()
        return self.send_due()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the current attempt (pending notifications stay in the ledger for the next start)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        for notifier in self._notifiers.values():
            notifier.close()
