"""Waiting on a condition in tests: poll until it holds or a generous deadline passes, then fail saying what.

Tests never sleep for a fixed time and hope: a busy machine makes things slower,
not different. The deadline only bounds a failing test; a passing one returns as
soon as the condition holds.
"""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")
WAIT_S = 120.0  # a failing test's bound on a shared 2-core machine, never a figure a passing test meets


def wait_until(condition: Callable[[], T], what: str, timeout: float = WAIT_S, interval: float = 0.02,
               detail: Callable[[], str] | None = None) -> T:
    """Return ``condition()``'s first truthy value; raise AssertionError naming ``what`` (and ``detail()``) at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            context = f"\n{detail()}" if detail is not None else ""
            raise AssertionError(f"not seen within {timeout:g} s: {what}{context}")
        time.sleep(interval)
