"""The retention policy on a real ledger, spool and results folder, with a clock the test sets."""

from __future__ import annotations

from pathlib import Path

from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from engine.cli import main
from engine.config.sections import RetentionConfig
from engine.ledger.store import InstanceMeta, Ledger
from engine.outputs.store import ResultStore
from engine.receiver.spool import Spool, file_meta_bytes
from engine.retention.policy import DAY_S, RetentionPolicy

ROOT = "1.2.826.0.1.3680043.8.498.77"
BODY = b"\0" * 1_000_000  # 2 MB a study: well above what a removal adds to the WAL


def add_study(ledger: Ledger, spool: Spool, results: ResultStore, n: int, day: float, finished: bool = True) -> str:
    """Study ``n`` with one series of two instances received on ``day``; its job done, or still queued."""
    study, series, at = f"{ROOT}.{n}", f"{ROOT}.{n}.1", day * DAY_S
    for i in (1, 2):
        entry = spool.store(file_meta_bytes(CTImageStorage, f"{series}.{i}", ExplicitVRLittleEndian), BODY)
        ledger.add_instance(InstanceMeta(study, series, f"{series}.{i}", CTImageStorage), entry, "CT1", at)
    ledger.complete_series(series, "test", at + 1)
    job = ledger.create_job(series, 1, "m", "1", now=at + 1)
    ledger.mark_routed(series, 1)
    if finished:
        claimed = ledger.claim_job("w", at + 2)
        assert claimed is not None and claimed.job_id == job
        folder = results.file(ledger.study_key(study), "m", ledger.series_key(series), [("result.json", b"{}")])
        ledger.complete_job(job, 1, str(folder), at + 3)
    return study


class Clock:
    """A clock the test moves."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def setup(data: Path) -> tuple[Ledger, Spool, ResultStore]:
    return Ledger(data / "ledger.sqlite"), Spool(data / "spool"), ResultStore(data / "results")


def policy(data: Path, ledger: Ledger, spool: Spool, clock: Clock, **settings: object) -> RetentionPolicy:
    config = RetentionConfig(enabled=True, **settings)
    return RetentionPolicy(config, ledger, spool, data / "results", data / "ledger.sqlite", clock)


def known(ledger: Ledger, study_uid: str) -> bool:
    try:
        ledger.study_key(study_uid)
    except KeyError:
        return False
    return True


def remaining(ledger: Ledger) -> int:
    return ledger.status_counts()["studies"]


def test_keep_days_removes_old_finished_studies_only(tmp_path: Path) -> None:
    ledger, spool, results = setup(tmp_path)
    old, mid = add_study(ledger, spool, results, 1, 0), add_study(ledger, spool, results, 2, 10)
    add_study(ledger, spool, results, 3, 20)
    unfinished = add_study(ledger, spool, results, 4, 0, finished=False)
    outcome = policy(tmp_path, ledger, spool, Clock(25 * DAY_S), keep_days=12).run_pass()
    assert (outcome.expired, outcome.recycled, outcome.quota_full) == (2, 0, False)
    assert remaining(ledger) == 2 and known(ledger, unfinished) and not known(ledger, old)
    assert not known(ledger, mid) and ledger.finished_studies() == [f"{ROOT}.3"]
    ledger.close()
    assert main(["verify", "--data-dir", str(tmp_path)]) == 0


def test_over_quota_the_oldest_finished_go_first_and_unfinished_work_stays(tmp_path: Path) -> None:
    ledger, spool, results = setup(tmp_path)
    for n in (1, 2, 3):
        add_study(ledger, spool, results, n, n)
    unfinished = add_study(ledger, spool, results, 0, 0, finished=False)  # the oldest, but its job is queued
    clock = Clock(10 * DAY_S)
    full = policy(tmp_path, ledger, spool, clock, quota_bytes=10**12)
    used = full.used_bytes()
    quota = used - 1_500_000  # room for all but about one study (2 MB)
    outcome = policy(tmp_path, ledger, spool, clock, quota_bytes=quota).run_pass()
    assert (outcome.recycled, outcome.quota_full) == (1, False) and outcome.used_bytes <= quota
    assert ledger.finished_studies() == [f"{ROOT}.2", f"{ROOT}.3"]  # study 1, the oldest, went
    outcome = policy(tmp_path, ledger, spool, clock, quota_bytes=1).run_pass()
    assert outcome.recycled == 2 and outcome.quota_full  # only unfinished work is left: refuse
    assert ledger.finished_studies() == [] and remaining(ledger) == 1
    assert known(ledger, unfinished)
    ledger.close()


def test_the_grace_period_keeps_a_just_finished_study_even_over_quota(tmp_path: Path) -> None:
    ledger, spool, results = setup(tmp_path)
    add_study(ledger, spool, results, 1, 0)
    clock = Clock(0.5 * 3600)  # half an hour after its last instance
    outcome = policy(tmp_path, ledger, spool, clock, quota_bytes=1, grace_hours=1.0).run_pass()
    assert (outcome.recycled, outcome.quota_full) == (0, True) and remaining(ledger) == 1
    clock.now = 2 * 3600
    outcome = policy(tmp_path, ledger, spool, clock, quota_bytes=1, grace_hours=1.0).run_pass()
    assert outcome.recycled == 1 and remaining(ledger) == 0
    ledger.close()
    assert main(["verify", "--data-dir", str(tmp_path)]) == 0
