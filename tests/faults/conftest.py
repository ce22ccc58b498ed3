"""Fault injection against real processes: each test breaks something and checks the exact answer and that
nothing acknowledged was lost."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).is_relative_to(Path(__file__).parent):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def require_dcmtk() -> None:
    for tool in ("storescu", "echoscu"):
        if shutil.which(tool) is None:
            pytest.fail(f"DCMTK {tool} is not installed; `make test` installs it (apt-get install dcmtk)")
