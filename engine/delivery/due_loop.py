"""The loop of a ledger-backed sender (deliveries, notifications): attempt what is due, else sleep until the next.

A sender thread wakes early when told (a new row was queued) and at least every
``idle_wait`` seconds, so a row due later, or queued by another process, is not
missed.
"""

from __future__ import annotations

import threading
from typing import Callable

IDLE_WAIT_S = 1.0


def run_due_loop(stop: threading.Event, wake: threading.Event, attempt_due: Callable[[], object],
                 next_due: Callable[[], float | None], clock: Callable[[], float],
                 idle_wait: float = IDLE_WAIT_S) -> None:
    """Until ``stop`` is set: call ``attempt_due``; when it attempted nothing, wait for ``wake`` or the next due
    time (at most ``idle_wait``)."""
    while not stop.is_set():
        if attempt_due():
            continue
        due = next_due()
        wake.wait(idle_wait if due is None else min(idle_wait, max(0.0, due - clock())))
        wake.clear()
