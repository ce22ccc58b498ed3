"""Graceful shutdown: SIGTERM and SIGINT set a stop event that every role waits on."""

from __future__ import annotations

import signal
import threading

from engine.logs import get_logger

log = get_logger(__name__)


def stop_on_signals(stop: threading.Event) -> None:
    """Set ``stop`` on SIGTERM and SIGINT (graceful shutdown)."""
    def handler(signum: int, _frame: object) -> None:
        log.info("signal.received", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
