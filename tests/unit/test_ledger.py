"""Ledger: instances and duplicates, series revisions, job leases and their failures."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.receiver.ledger import AddOutcome, InstanceMeta, Ledger
from engine.receiver.spool import SpoolEntry

STUDY, SERIES = "1.2.3", "1.2.3.4"


def meta(n: int, series: str = SERIES) -> InstanceMeta:
    return InstanceMeta(STUDY, series, f"{series}.{n}", "1.2.840.10008.5.1.4.1.1.2", modality="CT",
                        instance_number=n, image_position=(0.0, 0.0, float(n)),
                        image_orientation=(1, 0, 0, 0, 1, 0), images_in_acquisition=3)


def entry(name: str, sha: str = "a") -> SpoolEntry:
    return SpoolEntry(name=name, size=10, sha256=sha)


@pytest.fixture()
def ledger(tmp_path: Path):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    yield ledger
    ledger.close()


def test_wal_mode_and_keys_are_opaque(ledger: Ledger) -> None:
    assert ledger._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    ledger.add_instance(meta(1), entry("n1"), "CT1", 1.0)
    assert ledger.study_key(STUDY).startswith("st_") and STUDY not in ledger.study_key(STUDY)
    assert ledger.series_key(SERIES).startswith("se_")


def test_duplicates_by_policy(ledger: Ledger) -> None:
    assert ledger.add_instance(meta(1), entry("n1", "a"), "CT1", 1.0) == (AddOutcome.STORED, None)
    assert ledger.add_instance(meta(1), entry("n2", "a"), "CT1", 2.0) == (AddOutcome.DUPLICATE_SAME, "n2")
    assert ledger.add_instance(meta(1), entry("n3", "b"), "CT1", 3.0) == (AddOutcome.DUPLICATE_KEPT_FIRST, "n3")
    assert ledger.add_instance(meta(1), entry("n4", "b"), "CT1", 4.0, "replace") == (AddOutcome.REPLACED, "n1")
    assert [row.spool_name for row in ledger.series_instances(SERIES)] == ["n4"]


def test_series_info_positions_and_late_instance_reopens(ledger: Ledger) -> None:
    for n in (3, 1, 2):
        ledger.add_instance(meta(n), entry(f"n{n}"), "CT1", float(n))
    assert [row.position for row in ledger.series_instances(SERIES)] == [1.0, 2.0, 3.0]
    info = ledger.series_info(SERIES)
    assert (info.modality, info.instance_count, info.frame_count, info.calling_ae) == ("CT", 3, 3, "CT1")
    assert ledger.complete_series(SERIES, "geometry", 5.0) == 1
    assert ledger.complete_series(SERIES, "geometry", 5.0) == 0  # not open any more
    ledger.add_instance(meta(4), entry("n4"), "CT1", 6.0)
    assert ledger.series(SERIES).state == "open"
    assert ledger.complete_series(SERIES, "idle", 9.0) == 2
    assert ledger.complete_series_revisions() == [(SERIES, 2)]


def test_jobs_are_idempotent_leased_and_retried(ledger: Ledger) -> None:
    ledger.add_instance(meta(1), entry("n1"), "CT1", 1.0)
    job = ledger.create_job(SERIES, 1, "m", "1", now=1.0, max_attempts=2)
    assert job is not None and ledger.create_job(SERIES, 1, "m", "1", now=2.0) is None
    assert ledger.claim_job("w1", 3.0, models=["other"]) is None
    leased = ledger.claim_job("w1", 3.0, models=["m"])
    assert (leased.job_id, leased.state, leased.attempts, leased.worker) == (job, "leased", 1, "w1")
    assert ledger.claim_job("w2", 3.0) is None
    assert ledger.release_job(job, 1, "heartbeat timeout", 4.0) == "queued"
    assert ledger.complete_job(job, 1, "/r", 4.5) is False  # stale attempt
    again = ledger.claim_job("w2", 5.0)
    assert again.attempts == 2
    assert ledger.fail_job(job, 2, "boom", True, 6.0) == "dead"
    assert ledger.job(job).reason == "boom"
    assert ledger.job_counts()["dead"] == 1
    assert ledger.status_counts()["dead-lettered"] == 1


def test_non_retryable_failure_and_success_and_restart(ledger: Ledger) -> None:
    ledger.add_instance(meta(1), entry("n1"), "CT1", 1.0)
    a = ledger.create_job(SERIES, 1, "a", "1", now=1.0)
    b = ledger.create_job(SERIES, 1, "b", "1", now=1.1, priority=5)
    assert ledger.claim_job("w", 2.0).job_id == b  # priority first
    assert ledger.fail_job(b, 1, "corrupt pixels", False, 2.0) == "failed"
    assert ledger.claim_job("w", 2.0).job_id == a
    assert ledger.requeue_leased_on_start() == 1
    assert ledger.claim_job("w", 3.0).attempts == 2
    assert ledger.complete_job(a, 2, "/results/x", 4.0)
    assert [j.state for j in ledger.study_jobs(STUDY)] == ["done", "failed"]
    assert ledger.status_counts()["done"] == 1
