"""engine.logs: records go to the stderr of the moment, so a late thread never writes to a closed stream."""

from __future__ import annotations

import io
import json
import logging
import sys

import pytest

from engine.logs import configure_logging, get_logger


def test_records_follow_sys_stderr_when_it_is_swapped(monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    configure_logging("INFO")
    log = get_logger("engine.test")
    try:
        log.info("one", n=1)
        first.close()  # what a test runner does with its captured stream
        monkeypatch.setattr(sys, "stderr", second)
        log.info("two", n=2)
    finally:
        logging.getLogger().handlers[:] = []
    assert json.loads(second.getvalue())["event"] == "two"
