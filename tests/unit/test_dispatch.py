"""The broker's job source on a real ledger, spool and results folder: no job is left leased to nobody."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from engine.broker.broker import WorkerInfo
from engine.ledger.store import LEASE_EXPIRED, InstanceMeta, Ledger
from engine.outputs.store import ResultStore
from engine.receiver.dispatch import SOURCE_GONE, LedgerJobSource
from engine.receiver.spool import Spool, file_meta_bytes

STUDY = "1.2.826.0.1.3680043.8.498.7"
WORKER = WorkerInfo(b"id", "w1", 1, ("m",))


@pytest.fixture()
def parts(tmp_path: Path):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    spool = Spool(tmp_path / "spool")
    results = ResultStore(tmp_path / "results")
    yield ledger, spool, results
    ledger.close()


def add_series(ledger: Ledger, spool: Spool, series: str, count: int = 2, max_attempts: int = 3,
               created: float = 2.0) -> tuple[str, list]:
    """Spool and record ``count`` instances of a series; queue one job of model "m" on it."""
    entries = []
    for n in range(1, count + 1):
        sop = f"{series}.{n}"
        entry = spool.store(file_meta_bytes(CTImageStorage, sop, ExplicitVRLittleEndian), b"\x08\x00\x16\x00UI\x00\x00")
        ledger.add_instance(InstanceMeta(STUDY, series, sop, CTImageStorage, modality="CT", instance_number=n),
                            entry, "CT1", 1.0)
        entries.append(entry)
    job = ledger.create_job(series, 0, "m", "1", now=created, max_attempts=max_attempts)
    assert job is not None
    return job, entries


def test_a_job_whose_spool_files_are_gone_fails_at_once_and_the_next_job_goes_out(parts) -> None:
    ledger, spool, results = parts
    gone, entries = add_series(ledger, spool, "1.2.826.0.1.3680043.8.498.7.1")
    intact, _ = add_series(ledger, spool, "1.2.826.0.1.3680043.8.498.7.2", created=3.0)  # claimed second
    spool.path(entries[1].name).unlink()  # removed by hand
    source = LedgerJobSource(ledger, spool, results)
    outgoing = source.next_job(WORKER)
    assert outgoing is not None and outgoing.job_id == intact and len(outgoing.payload) == 2
    failed = ledger.job(gone)
    assert failed.state == "failed" and failed.attempts == 1  # not retried: no retry brings the files back
    assert failed.reason == f"{SOURCE_GONE}: 1 of 2 spool file(s) of the series are missing"
    assert ledger.job(intact).state == "leased" and ledger.job(intact).lease_expires is not None


def test_a_filing_error_is_retried_then_dead_lettered_with_its_reason(parts, tmp_path: Path) -> None:
    ledger, spool, results = parts
    job, _ = add_series(ledger, spool, "1.2.826.0.1.3680043.8.498.7.3", max_attempts=2)
    shutil.rmtree(results.root)
    results.root.write_text("not a folder")  # the results folder cannot be written
    source = LedgerJobSource(ledger, spool, results)
    for attempt in (1, 2):
        outgoing = source.next_job(WORKER)
        assert (outgoing.job_id, outgoing.attempt) == (job, attempt)
        source.job_done(job, attempt, {"timings_s": {}}, [({"name": "result.json"}, memoryview(b"{}"))])
        row = ledger.job(job)
        assert row.state == ("queued" if attempt == 1 else "dead"), row
        assert row.reason.startswith("filing: ")
    assert source.next_job(WORKER) is None
    assert ledger.final_study_jobs(STUDY) is not None  # the study is final


def test_an_unheld_lease_is_taken_back_once_expired_and_a_held_one_renewed(parts) -> None:
    ledger, spool, _ = parts
    add_series(ledger, spool, "1.2.826.0.1.3680043.8.498.7.4", max_attempts=1)
    add_series(ledger, spool, "1.2.826.0.1.3680043.8.498.7.5", max_attempts=1)
    held = ledger.claim_job("w1", 10.0, lease_seconds=30.0).job_id
    stray = ledger.claim_job("w1", 10.0, lease_seconds=30.0).job_id
    assert ledger.reap_leases({held}, 20.0, 30.0) == []  # nothing expired yet
    assert ledger.job(held).lease_expires == 40.0  # more than half left: not rewritten
    assert not ledger.requeue(stray, 20.0)  # its lease is still running: a worker may hold it
    assert ledger.reap_leases({held}, 30.0, 30.0) == []
    assert ledger.job(held).lease_expires == 60.0  # renewed
    assert ledger.reap_leases({held}, 41.0, 30.0) == [(stray, "dead")]  # attempts used up
    row = ledger.job(stray)
    assert (row.state, row.reason, row.finished) == ("dead", LEASE_EXPIRED, 41.0)
    assert ledger.job(held).state == "leased"
    assert ledger.final_study_jobs(STUDY) is None  # the held job still runs


def test_requeue_takes_a_leased_job_whose_lease_ran_out(parts) -> None:
    ledger, spool, _ = parts
    job, _ = add_series(ledger, spool, "1.2.826.0.1.3680043.8.498.7.6")
    ledger.claim_job("w1", 10.0, lease_seconds=5.0)
    assert not ledger.requeue(job, 14.0)
    assert ledger.requeue(job, 16.0)  # leased by no connected worker (no renewal came)
    row = ledger.job(job)
    assert (row.state, row.attempts, row.lease_expires) == ("queued", 0, None)


def test_a_backfilled_job_not_asked_to_deliver_files_without_deliveries(parts) -> None:
    ledger, spool, results = parts
    series = "1.2.826.0.1.3680043.8.498.7.7"
    add_series(ledger, spool, series)
    ledger.complete_series(series, "test", 3.0)
    backfilled = ledger.create_job(series, 1, "m", "1", now=4.0, deliver=False)
    source = LedgerJobSource(ledger, spool, results, deliveries=lambda model, folder: ["pacs"])
    for _ in range(2):
        outgoing = source.next_job(WORKER)
        source.job_done(outgoing.job_id, outgoing.attempt, {}, [({"name": "result.json"}, memoryview(b"{}"))])
    assert {row.job_id for row in ledger.deliveries()} == {j.job_id for j in ledger.list_jobs() if j.deliver}
    assert ledger.job(backfilled).state == "done" and ledger.deliveries([backfilled]) == []
    assert len(ledger.deliveries()) == 1
