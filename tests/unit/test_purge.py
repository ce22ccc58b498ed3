"""``scanstream purge`` on a real ledger, spool and results: finished studies only, safe to repeat after a crash."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from engine.cli import main
from engine.ledger.store import Ledger
from engine.receiver.spool import Spool
from engine.retention.purge import finish_removals
from tests.unit.test_verify import SERIES, build

STUDY = "1.2"


def test_purge_removes_a_finished_study_and_verify_stays_clean(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    names, folder = build(tmp_path)
    assert main(["purge", STUDY, "--dry-run", "--data-dir", str(tmp_path)]) == 0
    assert "would remove 1 finished study" in capsys.readouterr().out
    assert Spool(tmp_path / "spool").has(names[0]) and folder.is_dir()  # a dry run removes nothing
    assert main(["purge", STUDY, "--data-dir", str(tmp_path)]) == 0
    assert "removed 1 finished study (3 file(s) and folder(s))" in capsys.readouterr().out
    assert not folder.exists() and not any(Spool(tmp_path / "spool").has(name) for name in names)
    ledger = Ledger(tmp_path / "ledger.sqlite")
    try:
        assert ledger.status_counts()["studies"] == 0 and ledger.received_totals() == (0, 0)
        assert ledger.job_counts()["done"] == 0 and ledger.removals() == []
    finally:
        ledger.close()
    assert main(["verify", "--data-dir", str(tmp_path)]) == 0


def test_a_study_with_unfinished_work_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    build(tmp_path)
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.create_job(SERIES, 1, "other", "1", now=5.0)  # queued: not finished
    ledger.close()
    assert main(["purge", STUDY, "--data-dir", str(tmp_path)]) == 1
    assert "not removed: study 1.2 is unknown or has unfinished work" in capsys.readouterr().err
    assert main(["purge", "--older-than", "0", "--data-dir", str(tmp_path)]) == 0  # by age: finished ones only
    assert "removed 0 finished studies" in capsys.readouterr().out
    assert main(["verify", "--data-dir", str(tmp_path)]) == 0


def test_a_crash_between_the_transaction_and_the_deletions_is_finished_by_the_next_pass(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    names, folder = build(tmp_path)
    ledger = Ledger(tmp_path / "ledger.sqlite")
    files = ledger.remove_study(STUDY, time.time())  # the transaction committed; the process died here
    assert sorted(kind for _, kind in files) == ["results", "spool", "spool"]
    ledger.close()
    assert main(["verify", "--data-dir", str(tmp_path)]) == 1  # files no row names ...
    assert main(["purge", "--older-than", "30", "--data-dir", str(tmp_path)]) == 0  # ... until the next pass
    capsys.readouterr()
    assert main(["verify", "--data-dir", str(tmp_path)]) == 0
    ledger = Ledger(tmp_path / "ledger.sqlite")
    try:
        assert ledger.removals() == [] and finish_removals(ledger, Spool(tmp_path / "spool"), tmp_path / "results") == 0
    finally:
        ledger.close()


def test_a_study_with_a_pending_notification_waits_and_its_notifications_go_with_it(tmp_path: Path) -> None:
    build(tmp_path)
    ledger = Ledger(tmp_path / "ledger.sqlite")
    try:
        ledger._db.execute("INSERT INTO notifications (event_id, notifier, trigger, study_uid, payload, state,"
                           " next_attempt, created) VALUES ('e1', 'hook', 'study_final', ?, '{}', 'pending', 1, 1)",
                           (STUDY,))
        assert ledger.finished_studies() == [] and ledger.remove_study(STUDY, 10.0) is None
        ledger._db.execute("UPDATE notifications SET state = 'sent'")
        assert ledger.finished_studies() == [STUDY] and ledger.remove_study(STUDY, 10.0) is not None
        assert ledger._db.execute("SELECT COUNT(*) FROM notifications").fetchone()[0] == 0
    finally:
        ledger.close()
