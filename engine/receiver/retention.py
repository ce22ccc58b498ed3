"""The receiver's retention thread: applies ``[retention]`` every ``interval_s`` and keeps its state.

The state (bytes used, quota, studies recycled, whether new associations are
refused because only unfinished work is left) is served on /metrics, used by the
SCP's refusal, and written to ``retention.json`` in the data folder so that
``scanstream status``, another process, can say why the receiver refuses.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from engine.logs import get_logger
from engine.retention.policy import PassOutcome, RetentionPolicy

log = get_logger(__name__)

STATE_FILE = "retention.json"


@dataclass(frozen=True)
class RetentionState:
    """Where the last pass left things (``retention.json``)."""

    checked: float
    used_bytes: int
    quota_bytes: int | None
    quota_full: bool
    recycled_total: int
    expired_total: int


def read_state(data_dir: Path) -> RetentionState | None:
    """The last pass's state written by a receiver with retention on, or None."""
    try:
        return RetentionState(**json.loads((data_dir / STATE_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return None


class RetentionService:
    """Runs the policy on a daemon thread; :meth:`quota_full` is what the SCP refuses on."""

    def __init__(self, policy: RetentionPolicy, data_dir: Path, quota_bytes: int | None, interval: float,
                 oldest_received: Callable[[], float | None], clock: Callable[[], float] = time.time) -> None:
        self._policy = policy
        self._state_path = data_dir / STATE_FILE
        self._quota = quota_bytes
        self._interval = interval
        self._oldest = oldest_received
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._full = False
        self._recycled = 0
        self._expired = 0

    def quota_full(self) -> bool:
        """Whether the last pass found the data folder over quota with nothing left to recycle."""
        return self._full

    def run_pass(self) -> PassOutcome:
        """One pass now; updates the state, logs a change of refusal and writes ``retention.json``."""
        with self._lock:
            outcome = self._policy.run_pass()
            self._recycled += outcome.recycled
            self._expired += outcome.expired
            if outcome.quota_full != self._full:
                if outcome.quota_full:
                    log.warning("retention.quota_full", used_bytes=outcome.used_bytes, quota_bytes=self._quota,
                                action="refusing new associations: only unfinished work is left")
                else:
                    log.info("retention.quota_ok", used_bytes=outcome.used_bytes, quota_bytes=self._quota)
            self._full = outcome.quota_full
            self._write(RetentionState(self._clock(), outcome.used_bytes, self._quota, outcome.quota_full,
                                       self._recycled, self._expired))
        return outcome

    def _write(self, state: RetentionState) -> None:
        partial = self._state_path.with_suffix(".json.tmp")
        partial.write_text(json.dumps(asdict(state)))
        os.replace(partial, self._state_path)

    def start(self) -> None:
        """One pass now, then every ``interval`` on a daemon thread."""
        self._stop.clear()
        self.run_pass()
        self._thread = threading.Thread(target=self._run, name="retention", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.run_pass()
            except Exception:  # noqa: BLE001 - one failing pass (a file that cannot be removed) is retried next time
                log.error("retention.pass_failed", exc_info=True)

    def alive(self) -> bool:
        """Whether the pass thread runs."""
        return self._thread is not None and self._thread.is_alive() and not self._stop.is_set()

    def stop(self) -> None:
        """Stop the thread (waits for a pass in progress)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def collector(self) -> Collector:
        """The /metrics families of retention."""
        return _RetentionCollector(self)

    def families(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        """Recycled and expired counts, oldest study age, quota and whether refusing for it."""
        recycled = CounterMetricFamily("scanstream_studies_recycled", "Finished studies removed to stay under "
                                       "retention.quota_bytes", value=self._recycled)
        yield recycled
        yield CounterMetricFamily("scanstream_studies_expired", "Finished studies removed after "
                                  "retention.keep_days", value=self._expired)
        oldest = self._oldest()
        yield GaugeMetricFamily("scanstream_oldest_study_age_seconds", "Age of the oldest retained study's last "
                                "instance", value=0.0 if oldest is None else max(0.0, self._clock() - oldest))
        yield GaugeMetricFamily("scanstream_quota_bytes", "retention.quota_bytes (0: no quota)",
                                value=self._quota or 0)
        yield GaugeMetricFamily("scanstream_quota_refusing", "1 while new associations are refused because the "
                                "data folder is over quota with only unfinished work", value=int(self._full))


class _RetentionCollector(Collector):
    def __init__(self, service: RetentionService) -> None:
        self._service = service

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        return self._service.families()
