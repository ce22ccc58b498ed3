"""Readiness that tells the truth: the receiver role with each of its threads stopped, and a locked ledger."""

from __future__ import annotations

import json
import sqlite3
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from engine.config import load_config
from engine.plugins import load_plugins
from engine.roles.receiver import ReceiverRole
from engine.testing.ports import free_port


def readyz(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture()
def role(tmp_path: Path):
    environ = {
        "SCANSTREAM_STORAGE__DATA_DIR": str(tmp_path / "data"),
        "SCANSTREAM_RECEIVER__HOST": "127.0.0.1", "SCANSTREAM_RECEIVER__PORT": str(free_port()),
        "SCANSTREAM_RECEIVER__UNHEALTHY_EXIT_S": "20",
        "SCANSTREAM_RETENTION__ENABLED": "true", "SCANSTREAM_RETENTION__QUOTA_BYTES": str(10**12),
        "SCANSTREAM_HTTP__HOST": "127.0.0.1", "SCANSTREAM_HTTP__PORT": str(free_port()),
        "SCANSTREAM_BROKER__BIND": f"tcp://127.0.0.1:{free_port()}",
        "SCANSTREAM_DESTINATIONS": json.dumps([{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1",
                                                "port": free_port()}]),
    }
    config = load_config(environ=environ)
    role = ReceiverRole(config, load_plugins(config))
    fatal: list[float] = []
    role.start(on_fatal=lambda: fatal.append(time.monotonic()))
    yield role, fatal
    role.stop()


@pytest.mark.parametrize("part", ["broker", "delivery", "assembler", "retention"])
def test_a_stopped_thread_is_named_by_readyz_and_ends_the_process_in_bounded_time(role, part: str) -> None:
    receiver, fatal = role
    now = time.monotonic()
    assert receiver.health.check(now) == [] and readyz(receiver.http.port) == (200, "ready\n")
    getattr(receiver, part).stop()  # the thread is gone
    assert receiver.health.check(now + 1) == [f"{part}: thread stopped"]
    assert readyz(receiver.http.port) == (503, f"{part}: thread stopped\n")
    assert fatal == [] and not receiver.failed
    receiver.health.check(now + 25)  # still dead past receiver.unhealthy_exit_s
    assert len(fatal) == 1 and receiver.failed
    receiver.health.check(now + 30)
    assert len(fatal) == 1  # asked once


def test_a_ledger_that_cannot_be_written_is_named(role) -> None:
    receiver, fatal = role
    other = sqlite3.connect(receiver.ledger.path, timeout=0, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")  # another writer holds the ledger
        (problem,) = receiver.health.check(time.monotonic())
        assert problem == "ledger: cannot be written (database is locked)"
        assert readyz(receiver.http.port) == (503, f"{problem}\n")
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert receiver.health.check(time.monotonic()) == []
