"""The assembler: decides when a series is complete and hands it on (to the router).

A series is complete when it is geometrically complete — one multi-frame instance
(all frames in one object), or ``ImagesInAcquisition`` instances with one
orientation on a distinct, evenly spaced grid along the slice normal — or when no
instance arrived for ``idle_timeout`` seconds. ``check`` runs right after each
stored instance (no waiting for a tick in the common case); ``tick`` (driven by the
caller or by :meth:`Assembler.start`'s thread) applies the idle rule.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Sequence

import numpy as np

from engine.logs import get_logger
from engine.ledger.store import InstanceRow, Ledger, SeriesRow

log = get_logger(__name__)
GEOMETRY, IDLE, MULTIFRAME = "geometry", "idle", "multiframe"
SPACING_TOLERANCE = 0.05  # allowed deviation of a slice gap from the median gap, relative...
SPACING_TOLERANCE_MM = 0.01  # ...or absolute (rounding in written positions), whichever is larger
ORIENTATION_TOLERANCE = 1e-4  # per direction-cosine component


def geometric_completion(instances: Sequence[InstanceRow]) -> str | None:
    """``multiframe``/``geometry`` when the instances say the series is whole, else None."""
    if not instances:
        return None
    if len(instances) == 1 and (instances[0].number_of_frames or 1) > 1:
        return MULTIFRAME
    expected = {row.images_in_acquisition for row in instances}
    if len(expected) != 1 or None in expected or len(instances) != expected.pop():
        return None
    orientations = [row.orientation for row in instances]
    if any(o is None for o in orientations):
        return None
    if np.abs(np.asarray(orientations, dtype=float) - np.asarray(orientations[0], dtype=float)).max() \
            > ORIENTATION_TOLERANCE:
        return None
    positions = [row.position for row in instances]
    if any(p is None for p in positions):
        return None
    ordered = np.sort(np.asarray(positions, dtype=float))
    if len(ordered) == 1:
        return GEOMETRY
    gaps = np.diff(ordered)
    median = float(np.median(gaps))
    if gaps.min() <= SPACING_TOLERANCE_MM:
        return None  # two slices at one position: not one consistent grid
    if np.abs(gaps - median).max() > max(SPACING_TOLERANCE * median, SPACING_TOLERANCE_MM):
        return None
    return GEOMETRY


def completion_reason(instances: Sequence[InstanceRow], *, now: float, last_received: float,
                      idle_timeout: float) -> str | None:
    """Why the series is complete at ``now``, or None while it should wait for more instances."""
    reason = geometric_completion(instances)
    if reason is not None:
        return reason
    if instances and now - last_received >= idle_timeout:
        return IDLE
    return None


def _may_be_geometric(series: SeriesRow) -> bool:
    """Cheap pre-check on counts, so a check per instance does not re-read the whole series."""
    return series.instance_count == 1 or series.instance_count == series.expected_count


class Assembler:
    """Watches open series in the ledger, completes them, and calls ``on_series_complete(uid, revision)``."""

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
        series = self._ledger.series(series_uid)
        return series is not None and self._check(series, now)

    def _check(self, series: SeriesRow, now: float) -> bool:
        if series.state != "open" or series.instance_count == 0:
            return False
        idle = now - series.last_received >= self._idle_timeout
        if not idle and not _may_be_geometric(series):
            return False
        with self._lock:
            instances = self._ledger.series_instances(series.series_uid)
            reason = completion_reason(instances, now=now, last_received=series.last_received,
                                       idle_timeout=self._idle_timeout)
            if reason is None:
                return False
            revision = self._ledger.complete_series(series.series_uid, reason, now, seen_updates=series.updates)
        if not revision:
            return False  # completed meanwhile, or an instance arrived since we looked: its own check decides
        log.info("series.complete", series_key=series.series_key, reason=reason, revision=revision,
                 instances=len(instances))
        self._on_complete(series.series_uid, revision)
        return True

    def tick(self, now: float) -> int:
        """Check every open series (idle rule, and recovery after a restart); returns how many completed."""
        return sum(self._check(series, now) for series in self._ledger.open_series())

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
            except Exception:  # noqa: BLE001 - the ticker must outlive one failing series or router; logged
                log.error("assembler.tick_failed", exc_info=True)

    def alive(self) -> bool:
        """Whether the ticking thread runs."""
        return self._thread is not None and self._thread.is_alive() and not self._stop.is_set()

    def stop(self) -> None:
        """Stop the ticking thread (waits for a tick in progress)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
