"""Ledger: instances and duplicates, series revisions, job leases and their failures, schema."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage

from engine.ledger import store as ledger_module
from engine.ledger.store import AddOutcome, AddResult, InstanceMeta, Ledger, LedgerError
from engine.receiver.spool import SpoolEntry

STUDY, SERIES = "1.2.3", "1.2.3.4"


def meta(n: int, series: str = SERIES, expected: int | None = 3) -> InstanceMeta:
    return InstanceMeta(STUDY, series, f"{series}.{n}", CTImageStorage, modality="CT",
                        instance_number=n, image_position=(0.0, 0.0, float(n)),
                        image_orientation=(1, 0, 0, 0, 1, 0), images_in_acquisition=expected)


def entry(name: str, sha: str = "a") -> SpoolEntry:
    return SpoolEntry(name=name, size=10, sha256=sha)


@pytest.fixture()
def ledger(tmp_path: Path):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    yield ledger
    ledger.close()


def test_wal_full_sync_schema_and_opaque_keys(ledger: Ledger) -> None:
    assert ledger._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert ledger._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert ledger.schema_version() == ledger_module.SCHEMA_VERSION
    added = ledger.add_instance(meta(1), entry("n1"), "CT1", 1.0)
    assert added.study_key == ledger.study_key(STUDY)
    assert ledger.study_key(STUDY).startswith("st_") and len(ledger.study_key(STUDY)) == 15
    assert ledger.series_key(SERIES).startswith("se_") and STUDY not in ledger.series_key(SERIES)
    with pytest.raises(KeyError):
        ledger.study_key("9.9")


def test_version_1_ledger_is_migrated_and_a_newer_one_refused(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript(ledger_module._MIGRATIONS[0])
    db.executescript("CREATE TABLE schema_version (version INTEGER NOT NULL); INSERT INTO schema_version VALUES (1);"
                     "INSERT INTO studies VALUES ('1.2', 'st_000000000001', 1, 1);"
                     "INSERT INTO series (series_uid, series_key, study_uid, modality, sop_class_uid, body_part,"
                     " series_description, calling_ae, first_received, last_received)"
                     " VALUES ('1.2.3', 'se_000000000001', '1.2', 'CT', '1.2.840.10008.5.1.4.1.1.2', '', '', 'CT1',"
                     " 1, 1)")
    db.close()
    ledger = Ledger(path)
    assert ledger.schema_version() == ledger_module.SCHEMA_VERSION
    row = ledger.series("1.2.3")
    assert row is not None and row.updates == 0 and row.expected_count is None and row.series_key == "se_000000000001"
    ledger._db.execute("UPDATE schema_version SET version = 99")
    ledger.close()
    with pytest.raises(LedgerError, match="schema version 99"):
        Ledger(path)


def test_duplicates_by_policy(ledger: Ledger) -> None:
    key = ledger.add_instance(meta(1), entry("n1", "a"), "CT1", 1.0).study_key
    assert ledger.add_instance(meta(1), entry("n2", "a"), "CT1", 2.0) == AddResult(AddOutcome.DUPLICATE_SAME, "n2", key)
    assert ledger.add_instance(meta(1), entry("n3", "b"), "CT1", 3.0) == \
        AddResult(AddOutcome.DUPLICATE_KEPT_FIRST, "n3", key)
    assert [row.spool_name for row in ledger.series_instances(SERIES)] == ["n1"]
    assert ledger.series(SERIES).last_received == 1.0 and ledger.series(SERIES).updates == 1  # nothing changed
    replaced = ledger.add_instance(meta(1), entry("n4", "b"), "CT1", 4.0, "replace")
    assert replaced == AddResult(AddOutcome.REPLACED, "n1", key)
    assert [row.spool_name for row in ledger.series_instances(SERIES)] == ["n4"]
    assert ledger.status_counts()["instances"] == 1


def test_series_facts_positions_and_late_instance_reopens(ledger: Ledger) -> None:
    for n in (3, 1, 2):
        ledger.add_instance(meta(n), entry(f"n{n}"), "CT1", float(n))
    rows = ledger.series_instances(SERIES)
    assert [row.position for row in rows] == [1.0, 2.0, 3.0]
    assert rows[0].orientation == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0) and rows[0].images_in_acquisition == 3
    info = ledger.series_info(SERIES)
    assert (info.study_uid, info.modality, info.instance_count, info.frame_count, info.calling_ae) == \
        (STUDY, "CT", 3, 3, "CT1")
    series = ledger.series(SERIES)
    assert (series.state, series.instance_count, series.expected_count, series.updates) == ("open", 3, 3, 3)
    assert ledger.complete_series(SERIES, "geometry", 5.0, seen_updates=2) == 0  # it has changed since
    assert ledger.complete_series(SERIES, "geometry", 5.0, seen_updates=3) == 1
    assert ledger.complete_series(SERIES, "geometry", 5.0) == 0  # not open any more
    late = ledger.add_instance(meta(4), entry("n4"), "CT1", 6.0)
    assert late.outcome == AddOutcome.STORED and late.reopened
    assert ledger.series(SERIES).state == "open" and [s.series_uid for s in ledger.open_series()] == [SERIES]
    assert ledger.complete_series(SERIES, "idle", 9.0) == 2
    assert ledger.series(SERIES).completion_reason == "idle"
    assert ledger.complete_series_revisions() == [(SERIES, 2)]
    with pytest.raises(KeyError):
        ledger.series_info("9.9")


def test_instance_meta_from_dataset_reads_header_facts() -> None:
    ds = Dataset()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = "1.2", "1.2.3", "1.2.3.4"
    ds.SOPClassUID, ds.Modality, ds.BodyPartExamined = CTImageStorage, "CT", "CHEST"
    ds.SeriesDescription, ds.InstanceNumber, ds.ImagesInAcquisition = "Thorax", 7, 40
    ds.ImagePositionPatient = [1.5, -2, 30]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]  # coronal: normal is (0, 1, 0)
    ds.PatientName = "Not^Read"
    facts = InstanceMeta.from_dataset(ds)
    assert facts == InstanceMeta("1.2", "1.2.3", "1.2.3.4", CTImageStorage, "CT", "CHEST", "Thorax", 7,
                                 (1.5, -2.0, 30.0), (1.0, 0.0, 0.0, 0.0, 0.0, -1.0), 40, None)
    assert facts.position_along_normal() == pytest.approx(-2.0)
    del ds.SOPInstanceUID
    assert InstanceMeta.from_dataset(ds).sop_instance_uid == ""  # refused by the UID check, not here
    ds.ImagePositionPatient = [1, 2]
    with pytest.raises(ValueError, match="ImagePositionPatient"):
        InstanceMeta.from_dataset(ds)


def test_concurrent_adds_from_many_threads(ledger: Ledger) -> None:
    def add(start: int) -> None:
        for n in range(start, start + 25):
            ledger.add_instance(meta(n, expected=None), entry(f"n{n}", str(n)), "CT1", float(n))

    threads = [threading.Thread(target=add, args=(k * 25,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert ledger.series(SERIES).instance_count == 100 and ledger.series(SERIES).updates == 100


def test_jobs_are_idempotent_leased_and_retried(ledger: Ledger) -> None:
    ledger.add_instance(meta(1), entry("n1"), "CT1", 1.0)
    job = ledger.create_job(SERIES, 1, "m", "1", now=1.0, max_attempts=2)
    assert job is not None and ledger.create_job(SERIES, 1, "m", "1", now=2.0) is None
    assert ledger.create_job(SERIES, 1, "m", "2", now=2.0) is not None  # another model version is another job
    assert ledger.claim_job("w1", 3.0, models=["other"]) is None
    leased = ledger.claim_job("w1", 3.0, models=["m"], lease_seconds=10.0)
    assert (leased.job_id, leased.state, leased.attempts, leased.worker, leased.lease_expires) == \
        (job, "leased", 1, "w1", 13.0)
    assert ledger.release_job(job, 1, "heartbeat timeout", 4.0) == "queued"
    assert ledger.job(job).reason == "lease lost: heartbeat timeout" and ledger.job(job).lease_expires is None
    assert ledger.complete_job(job, 1, "/r", 4.5) is False  # stale attempt
    assert ledger.fail_job(job, 1, "late", True, 4.6) is None  # stale too: no change
    again = ledger.claim_job("w2", 5.0, models=["m"])
    assert (again.job_id, again.attempts) == (job, 2)
    assert ledger.fail_job(job, 2, "boom", True, 6.0) == "dead"  # retries exhausted
    assert ledger.job(job).reason == "boom" and ledger.job(job).finished == 6.0
    assert ledger.job_counts() == {"queued": 1, "leased": 0, "done": 0, "failed": 0, "dead": 1}
    assert ledger.status_counts()["dead-lettered"] == 1 and ledger.status_counts()["queue depth"] == 1
    assert [j.job_id for j in ledger.list_jobs("dead")] == [job]


def test_priority_failure_success_and_restart(ledger: Ledger) -> None:
    ledger.add_instance(meta(1), entry("n1"), "CT1", 1.0)
    a = ledger.create_job(SERIES, 1, "a", "1", now=1.0)
    b = ledger.create_job(SERIES, 1, "b", "1", now=1.1, priority=5)
    c = ledger.create_job(SERIES, 1, "c", "1", now=0.5)
    assert ledger.claim_job("w", 2.0).job_id == b  # priority first
    assert ledger.fail_job(b, 1, "corrupt pixels", False, 2.0) == "failed"  # not retryable
    assert ledger.claim_job("w", 2.0).job_id == c  # then oldest
    assert ledger.fail_job(c, 1, "cuda oom", True, 2.5) == "queued"  # retryable with attempts left
    assert ledger.claim_job("w", 2.6).job_id == c
    assert ledger.complete_job(c, 2, "/results/c", 2.7)
    assert ledger.claim_job("w", 2.8).job_id == a
    assert ledger.requeue_leased_on_start() == 1  # the receiver died while a was leased
    restarted = ledger.claim_job("w", 3.0)
    assert (restarted.job_id, restarted.attempts) == (a, 2)
    assert ledger.complete_job(a, 2, "/results/x", 4.0)
    assert ledger.job(a).result_dir == "/results/x"
    assert sorted(j.state for j in ledger.study_jobs(STUDY)) == ["done", "done", "failed"]
    counts = ledger.status_counts()
    assert (counts["studies"], counts["series open"], counts["done"], counts["failed"]) == (1, 1, 2, 1)


def test_final_study_jobs_and_manual_requeue(ledger: Ledger) -> None:
    ledger.add_instance(meta(1), entry("n1"), "CT1", 1.0)
    job = ledger.create_job(SERIES, 1, "m", "1", now=1.0, max_attempts=1)
    assert ledger.final_study_jobs(STUDY) is None  # queued: not final yet
    ledger.claim_job("w", 2.0)
    assert ledger.fail_job(job, 1, "boom", True, 3.0) == "dead"
    assert [j.job_id for j in ledger.final_study_jobs(STUDY)] == [job]
    assert ledger.final_study_jobs(STUDY, minimum=2) is None
    assert ledger.requeue(job, 4.0) and not ledger.requeue(job, 4.0)  # only failed/dead jobs requeue
    requeued = ledger.job(job)
    assert (requeued.state, requeued.attempts, requeued.reason) == ("queued", 0, "requeued: boom")
    assert ledger.claim_job("w", 5.0).attempts == 1


def test_a_clean_worker_stop_gives_the_attempt_back(ledger: Ledger) -> None:
    ledger.add_instance(meta(1), entry("n1"), "CT1", 1.0)
    job = ledger.create_job(SERIES, 1, "m", "1", now=1.0, max_attempts=1)
    assert ledger.claim_job("w1", 2.0).attempts == 1
    assert ledger.release_job(job, 1, "worker disconnected", 3.0, count_attempt=False) == "queued"
    assert ledger.release_job(job, 1, "worker disconnected", 3.0, count_attempt=False) is None  # stale
    assert ledger.claim_job("w2", 4.0).attempts == 1
    assert ledger.release_job(job, 1, "heartbeat timeout", 5.0) == "dead"  # a crash costs the attempt


def test_waiters_wake_on_job_changes_only(ledger: Ledger) -> None:
    ledger.add_instance(meta(1), entry("n1"), "CT1", 1.0)
    seen = ledger.job_changes()
    assert ledger.wait_job_change(seen, timeout=0.05) == seen  # nothing changed: back after the timeout
    ledger.complete_series(SERIES, "expected count", 2.0)  # a series completing is not a job change
    assert ledger.job_changes() == seen
    woke: list[int] = []
    waiter = threading.Thread(target=lambda: woke.append(ledger.wait_job_change(seen, timeout=30.0)))
    waiter.start()
    job = ledger.create_job(SERIES, 2, "m", "1", now=3.0)
    waiter.join(timeout=10.0)
    assert not waiter.is_alive() and woke == [seen + 1]
    leased = ledger.claim_job("w1", 4.0, models=["m"])
    assert ledger.job_changes() == seen + 1  # leasing does not make a study final
    assert ledger.complete_job(job, leased.attempts, "/r", 5.0, deliveries=["pacs"])
    ledger.record_delivery(job, "pacs", "sent", 6.0)
    assert ledger.job_changes() == seen + 3


def test_closing_the_ledger_wakes_its_waiters(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    woke: list[int] = []
    waiter = threading.Thread(target=lambda: woke.append(ledger.wait_job_change(ledger.job_changes(), 30.0)))
    waiter.start()
    ledger.close()
    waiter.join(timeout=10.0)
    assert not waiter.is_alive() and woke == [0]


def test_totals_kept_by_triggers_agree_with_counting(ledger: Ledger) -> None:
    ledger.add_instance(meta(1), SpoolEntry("n1", 10, "a"), "CT1", 1.0)
    ledger.add_instance(meta(2), SpoolEntry("n2", 30, "b"), "CT1", 1.0)
    ledger.add_instance(meta(2), SpoolEntry("n3", 50, "c"), "CT1", 1.1, duplicate_policy="replace")  # resized
    ledger.add_instance(meta(1), SpoolEntry("n4", 99, "a"), "CT1", 1.2)  # the same bytes again: no change
    job = ledger.create_job(SERIES, 1, "m", "1", now=2.0)
    other = ledger.create_job(SERIES, 1, "n", "1", now=2.1, max_attempts=1)
    ledger.claim_job("w", 3.0)
    ledger.complete_job(job, 1, "/r", 4.0, deliveries=["pacs", "archive"])
    ledger.record_delivery(job, "pacs", "sent", 5.0)
    ledger.claim_job("w", 5.0)
    ledger.fail_job(other, 1, "boom", True, 6.0)  # dead
    assert ledger.received_totals() == (2, 60)
    db = ledger._db
    assert ledger.job_counts() == {s: db.execute("SELECT COUNT(*) FROM jobs WHERE state = ?", (s,)).fetchone()[0]
                                   for s in ledger_module.JOB_STATES}
    assert ledger.job_counts()["dead"] == 1 and ledger.job_counts()["done"] == 1
    assert ledger.delivery_counts() == {"pending": 1, "sent": 1, "failed": 0}
    db.execute("DELETE FROM deliveries WHERE destination = 'archive'")
    db.execute("DELETE FROM instances WHERE spool_name = 'n1'")
    assert ledger.delivery_counts()["pending"] == 0 and ledger.received_totals() == (1, 50)


def test_notification_totals_kept_by_triggers_agree_with_counting(ledger: Ledger) -> None:
    ledger.add_notifications("e1", "findings", "1.2", None, "{}", ["hook", "ris"], 1.0)
    ledger.add_notifications("e1", "findings", "1.2", None, "{}", ["hook"], 1.1)  # queued already: not counted
    ledger.record_notification("e1", "hook", "sent", 2.0)
    ledger.record_notification("e1", "ris", "pending", 2.0, next_attempt=3.0)  # a retry stays pending
    assert ledger.notification_counts() == {"pending": 1, "sent": 1, "failed": 0}
    ledger.record_notification("e1", "ris", "failed", 4.0, reason="NAK")
    counted = dict(ledger._db.execute("SELECT state, COUNT(*) FROM notifications GROUP BY state").fetchall())
    assert ledger.notification_counts() == {"pending": 0, "sent": counted["sent"], "failed": counted["failed"]}
    ledger._db.execute("DELETE FROM notifications WHERE notifier = 'ris'")
    assert ledger.notification_counts() == {"pending": 0, "sent": 1, "failed": 0}


def test_a_version_4_ledger_gets_its_totals_counted_on_upgrade(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    for step in ledger_module._MIGRATIONS[:4]:
        for statement in ledger_module._statements(step):
            db.execute(statement)
    db.execute("INSERT INTO schema_version VALUES (4)")
    db.execute("INSERT INTO studies VALUES ('1.2', 'st_1', 1, 1)")
    db.execute("INSERT INTO series (series_uid, series_key, study_uid, modality, sop_class_uid, body_part,"
               " series_description, calling_ae, first_received, last_received) VALUES"
               " ('1.2.3', 'se_1', '1.2', 'CT', '1.2', '', '', 'CT1', 1, 1)")
    for n in range(3):
        db.execute("INSERT INTO instances (sop_instance_uid, series_uid, sop_class_uid, spool_name, sha256, size,"
                   " received_at, calling_ae) VALUES (?, '1.2.3', '1.2', ?, 'h', 7, 1, 'CT1')", (f"1.2.3.{n}", f"n{n}"))
    db.execute("INSERT INTO jobs (job_id, series_uid, series_revision, model, model_version, state, max_attempts,"
               " created) VALUES ('j', '1.2.3', 1, 'm', '1', 'queued', 3, 1)")
    db.commit()
    db.close()
    ledger = Ledger(path)
    try:
        assert ledger.schema_version() == ledger_module.SCHEMA_VERSION
        assert ledger.received_totals() == (3, 21)
        assert ledger.job_counts()["queued"] == 1
    finally:
        ledger.close()
