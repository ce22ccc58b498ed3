"""Fixtures for integration tests: real `scanstream serve` subprocesses and DCMTK."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

PLUGIN_DIR = Path(__file__).parent / "plugins"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).is_relative_to(Path(__file__).parent):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def require_storescu() -> str:
    path = shutil.which("storescu")
    if path is None:
        pytest.fail("DCMTK storescu is not installed; `make test` installs it (apt-get install dcmtk)")
    return path
