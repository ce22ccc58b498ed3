"""The receiver's health monitor: which parts are dead, for /readyz, and a bounded exit when they stay dead.

A thread checks each part every ``interval`` seconds (a thread still running, the
ledger still writable) and keeps the failing ones' lines; /readyz answers from that
list, so a probe never waits on the ledger. A part failing for ``exit_after``
seconds calls ``on_fatal`` once: the role stops and the process exits non-zero, so
Kubernetes or systemd starts it again instead of leaving a half-dead receiver up.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Sequence

from engine.logs import get_logger

log = get_logger(__name__)

Check = Callable[[], "str | None"]
"""A part's check: None when healthy, else why not (one line, no patient data)."""


class HealthMonitor:
    """Runs named checks on a thread; the failing ones' lines are :meth:`problems`."""

    def __init__(self, checks: Sequence[tuple[str, Check]], on_fatal: Callable[[], object], *,
                 interval: float = 1.0, exit_after: float = 30.0) -> None:
        self._checks = list(checks)
        self._on_fatal = on_fatal
        self._interval = interval
        self._exit_after = exit_after
        self._problems: tuple[str, ...] = ()
        self._failing_since: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.fatal = False

    def problems(self) -> list[str]:
        """The parts found failing at the last check, one line each ("broker: thread stopped")."""
        return list(self._problems)

    def check(self, now: float) -> list[str]:
        """Run every check once; after ``exit_after`` seconds of failures, call ``on_fatal`` (once)."""
        problems = []
        for name, check in self._checks:
            try:
                why = check()
            except Exception as exc:  # a check that raises reports its part, never stops the monitor
                why = f"check raised {type(exc).__name__}: {exc}"
            if why:
                problems.append(f"{name}: {why}")
        if problems and not self._problems:
            log.error("receiver.unhealthy", parts="; ".join(problems), exit_after_s=self._exit_after)
        self._problems = tuple(problems)
        if not problems:
            self._failing_since = None
        elif self._failing_since is None:
            self._failing_since = now
        elif not self.fatal and now - self._failing_since >= self._exit_after:
            self.fatal = True
            log.error("receiver.unhealthy_exit", parts="; ".join(problems), failing_s=round(now - self._failing_since, 1))
            self._on_fatal()
        return problems

    def start(self) -> None:
        """Check once now, then every ``interval`` on a daemon thread."""
        self.check(time.monotonic())
        self._thread = threading.Thread(target=self._run, name="health", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.check(time.monotonic())

    def stop(self) -> None:
        """Stop checking."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
