"""engine.logs: records go to the stderr of the moment, so a late thread never writes to a closed stream."""

from __future__ import annotations

import io
import json
import logging
import sys

import pydicom.config
import pytest
from pydicom.dataset import Dataset

from engine.logs import configure_logging, get_logger


@pytest.fixture(autouse=True)
def restore_pydicom_settings():
    """configure_logging changes process-wide pydicom settings: put them back for the other tests."""
    settings = pydicom.config.settings
    saved = settings.reading_validation_mode, settings.writing_validation_mode
    level = logging.getLogger("pydicom").level
    yield
    settings.reading_validation_mode, settings.writing_validation_mode = saved
    logging.getLogger("pydicom").setLevel(level)
    logging.getLogger().handlers[:] = []


def test_records_follow_sys_stderr_when_it_is_swapped(monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    configure_logging("INFO")
    log = get_logger("engine.test")
    log.info("one", n=1)
    first.close()  # what a test runner does with its captured stream
    monkeypatch.setattr(sys, "stderr", second)
    log.info("two", n=2)
    assert json.loads(second.getvalue())["event"] == "two"


def test_dicom_values_never_reach_the_log_or_stderr(monkeypatch: pytest.MonkeyPatch,
                                                   recwarn: pytest.WarningsRecorder) -> None:
    captured = io.StringIO()
    monkeypatch.setattr(sys, "stderr", captured)
    configure_logging("INFO")
    ds = Dataset()
    ds.PatientBirthDate = "1970-01-31"  # not a DICOM DA: pydicom would warn quoting it
    ds.PatientName = "Doe^Jane" * 10  # a component over 64 characters
    assert ds.PatientBirthDate == "1970-01-31"  # stored as given, as before
    assert "1970" not in captured.getvalue() and "Doe" not in captured.getvalue()
    assert not [w for w in recwarn if "1970" in str(w.message) or "PN" in str(w.message)]
