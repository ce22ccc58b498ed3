"""Ledger.probe_write: readiness learns whether the ledger takes writes, without committing anything."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from engine.ledger.store import Ledger


def test_the_probe_commits_nothing_so_open_pages_are_not_woken(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    watcher = sqlite3.connect(tmp_path / "ledger.sqlite")  # as the console's change stream reads it
    try:
        before = watcher.execute("PRAGMA data_version").fetchone()[0]
        assert ledger.probe_write() is None
        assert watcher.execute("PRAGMA data_version").fetchone()[0] == before
        assert watcher.execute("SELECT COUNT(*) FROM totals WHERE name = 'write_probes'").fetchone()[0] == 0
    finally:
        watcher.close()
        ledger.close()


def test_a_ledger_held_by_another_writer_is_reported_with_the_reason(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    other = sqlite3.connect(tmp_path / "ledger.sqlite", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        assert "cannot be written (database is locked)" == ledger.probe_write(timeout=0.1)
        other.execute("ROLLBACK")
        assert ledger.probe_write() is None
    finally:
        other.close()
        ledger.close()
