"""engine.testing.waiting: a condition's first truthy value, or a failure that names what was awaited."""

from __future__ import annotations

import itertools

import pytest

from engine.testing.waiting import wait_until


def test_returns_the_first_truthy_value_as_soon_as_it_holds() -> None:
    calls = itertools.count()
    assert wait_until(lambda: next(calls) >= 3 and "ready", "the third call", interval=0) == "ready"
    assert next(calls) == 4  # no call after the one that held


def test_fails_at_the_deadline_naming_what_and_the_detail() -> None:
    with pytest.raises(AssertionError, match=r"not seen within 0.05 s: the moon\nlog tail"):
        wait_until(lambda: None, "the moon", timeout=0.05, detail=lambda: "log tail")
