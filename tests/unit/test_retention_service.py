"""The receiver's retention thread: its state for the SCP's refusal, /metrics and ``scanstream status``."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from engine.cli import main
from engine.config.sections import RetentionConfig
from engine.ledger.store import Ledger
from engine.receiver.retention import RetentionService, read_state
from engine.retention.policy import DAY_S, RetentionPolicy
from engine.testing.waiting import wait_until
from tests.unit.test_retention_policy import Clock, add_study, setup


def service(data: Path, clock: Clock, quota: int) -> tuple[RetentionService, Ledger]:
    ledger, spool, results = setup(data)
    add_study(ledger, spool, results, 1, 0)
    add_study(ledger, spool, results, 2, 1, finished=False)
    policy = RetentionPolicy(RetentionConfig(enabled=True, quota_bytes=quota), ledger, spool, data / "results",
                             data / "ledger.sqlite", clock)
    return RetentionService(policy, data, quota, 0.05, ledger.oldest_study_received, clock), ledger


def test_over_quota_with_only_unfinished_work_refuses_and_says_why(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    clock = Clock(3 * DAY_S)
    retention, ledger = service(tmp_path, clock, quota=1)
    registry = CollectorRegistry()
    registry.register(retention.collector())
    assert not retention.quota_full()
    outcome = retention.run_pass()
    assert outcome.recycled == 1 and outcome.quota_full and retention.quota_full()
    metrics = generate_latest(registry).decode()
    assert "scanstream_studies_recycled_total 1.0" in metrics and "scanstream_quota_refusing 1.0" in metrics
    assert "scanstream_quota_bytes 1.0" in metrics
    assert f"scanstream_oldest_study_age_seconds {2 * DAY_S}" in metrics  # study 2, received on day 1
    state = read_state(tmp_path)
    assert state is not None and state.quota_full and state.recycled_total == 1
    ledger.close()
    assert main(["status", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "1 recycled" in out and "REFUSING new associations: the data folder is over retention.quota_bytes" in out


def test_under_quota_nothing_is_removed_and_the_thread_keeps_passing(tmp_path: Path) -> None:
    clock = Clock(3 * DAY_S)
    retention, ledger = service(tmp_path, clock, quota=10**12)
    retention.start()
    try:
        assert retention.alive() and not retention.quota_full()
        clock.now += 60
        wait_until(lambda: (state := read_state(tmp_path)) is not None and state.checked == clock.now,
                   "a pass by the thread after the first")
        assert ledger.status_counts()["studies"] == 2
    finally:
        retention.stop()
        ledger.close()
    assert not retention.alive()
