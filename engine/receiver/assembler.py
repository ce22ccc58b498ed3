"""The assembler: decides when a series is complete and hands it to the router.

A series is complete when it is geometrically complete — a multi-frame instance
(all frames in one object), or ``ImagesInAcquisition`` instances on a distinct,
evenly spaced slice grid along the normal — or when no instance arrived for
``idle_timeout`` seconds. ``check`` runs right after each stored instance (no
waiting on a tick for the common case); a thread ``tick``s for the idle rule.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Sequence

import numpy as np

from engine.logs import get_logger
from engine.receiver.ledger import InstanceRow, Ledger

log = get_logger(__name__)
SPACING_TOLERANCE = 0.05  # relative deviation allowed between slice gaps
GEOMETRY, IDLE, MULTIFRAME = "geometry", "idle", "multiframe"


def geometric_completion(instances: Sequence[InstanceRow]) -> str | None:
    """``multiframe``/``geometry`` when the data says the series is whole, else None."""
    if not instances:
        return None
    if len(instances) == 1 and (instances[0].number_of_frames or 1) > 1:
        return MULTIFRAME
    expected = {row.images_in_acquisition for row in instances}
    if len(expected) != 1 or None in expected or len(instances) != expected.pop():
        return None
    if len({row.orientation for row in instances}) != 1:
        return None
    positions = [row.position for row in instances]
    if any(p is None for p in positions):
        return None
    ordered = np.sort(np.asarray(positions, dtype=float))
    if len(ordered) == 1:
        return GEOMETRY
    gaps = np.diff(ordered)
    if gaps.min() <= 1e-3:
        return None  # two slices at one position: not one consistent grid
    if np.abs(gaps - np.median(gaps)).max() > SPACING_TOLERANCE * np.median(gaps):
        return None
    return GEOMETRY


def completion_reason(instances: Sequence[InstanceRow], last_received: float, now: float,
                      idle_timeout: float) -> str | None:
    """Why the series is complete now, or None while it should wait."""
    reason = geometric_completion(instances)
    if reason is not None:
        return reason
    if instances and now - last_received >= idle_timeout:
        return IDLE
    return None


class Assembler:
    """Watches open series in the ledger and completes them."""

    def __init__(self, ledger: Ledger, on_series_complete: Callable[[str, int], object], *,
                 idle_timeout: float) -> None:
        self._ledger = ledger
        self._on_complete = on_series_complete
        self._idle_timeout = idle_timeout
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self, series_uid: str, now: float) -> bool:
        """Complete ``series_uid`` if its rules say so; True when it completed now."""
        with self._lock:
            series = self._ledger.series(series_uid)
            if series is None or series.state != "open":
                return False
            reason = completion_reason(self._ledger.series_instances(series_uid), series.last_received, now,
                                       self._idle_timeout)
            if reason is None:
                return False
            revision = self._ledger.complete_series(series_uid, reason, now)
        if not revision:
            return False
        log.info("series.complete", series_key=series.series_key, reason=reason, revision=revision,
                 instances=series.instance_count)
        self._on_complete(series_uid, revision)
        return True

    def tick(self, now: float) -> int:
        """Check every open series (idle rule, and recovery after a restart); returns how many completed."""
        return sum(self.check(series.series_uid, now) for series in self._ledger.open_series())

    def start(self, tick: float = 0.25) -> None:
        """Tick on a daemon thread every ``tick`` seconds (runs one tick at once)."""
        self._stop.clear()
        self.tick(time.time())
        self._thread = threading.Thread(target=self._run, args=(tick,), name="assembler", daemon=True)
        self._thread.start()

    def _run(self, period: float) -> None:
        while not self._stop.wait(period):
            try:
                self.tick(time.time())
            except Exception:  # noqa: BLE001 - the ticker must survive one bad series; it is logged
                log.error("assembler.tick_failed", exc_info=True)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
