"""Fixtures shared by unit tests."""

from __future__ import annotations

from typing import Iterator

import pytest
import zmq


@pytest.fixture
def context() -> Iterator[zmq.Context]:
    """A private ZeroMQ context, destroyed without lingering after the test."""
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)
