"""The broker's job source: ledger jobs out as frames, results in as files.

Runs on the broker thread. A job goes out as a header (model, series facts) plus
one frame per spooled instance file, read from the spool as stored (no decode).
A DONE files the artifacts under ``results/<study key>/<model>/<series key>/`` and only then
marks the job done in the ledger, so "done" always means "the files are there"; then
the destinations the files go to (``deliveries``) are queued in the same ledger
transaction, and ``on_done`` wakes the delivery service. ``on_finished`` hears of
every job that ends done, failed or dead-lettered (notifications).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Collection

from engine.broker.broker import CLEAN_REASONS, OutgoingJob, WorkerInfo
from engine.ledger.latency import StageHistograms
from engine.logs import get_logger
from engine.outputs.store import ResultStore, ResultStoreError
from engine.ledger.store import JobRow, Ledger
from engine.receiver.spool import Spool

log = get_logger(__name__)

SOURCE_GONE = "source files gone"
"""Start of the reason of a job failed because its series' spool files are missing."""
_CLAIM_TRIES = 16
"""Jobs tried per ``next_job`` call when the claimed ones cannot be sent."""


class LedgerJobSource:
    """Implements the broker's ``JobSource`` on the ledger, spool and result store."""

    def __init__(self, ledger: Ledger, spool: Spool, results: ResultStore,
                 histograms: StageHistograms | None = None,
                 deliveries: Callable[[str, Path], list[str]] | None = None,
                 on_done: Callable[[str], object] | None = None,
                 on_finished: Callable[[str], object] | None = None, lease_seconds: float = 30.0) -> None:
        self._ledger = ledger
        self._lease_seconds = lease_seconds
        self._next_reap = 0.0
        self._spool = spool
        self._results = results
        self._histograms = histograms
        self._deliveries = deliveries
        self._on_done = on_done
        self._on_finished = on_finished

    def next_job(self, worker: WorkerInfo) -> OutgoingJob | None:
        """Lease the most urgent queued job this worker can run, with its instance files.

        A job that cannot be sent ends here, never leased to nobody: its source files
        gone fails it at once (no retry brings them back); any other error reading them
        counts an attempt and queues it again. The next queued job is tried instead.
        """
        for _ in range(_CLAIM_TRIES):
            job = self._ledger.claim_job(worker.name, time.time(), models=worker.models or None,
                                         lease_seconds=self._lease_seconds)
            if job is None:
                return None
            try:
                outgoing = self._outgoing(job, worker)
            except Exception as exc:  # the boundary: whatever went wrong, the job gets a retry or a reason
                log.error("job.dispatch_error", job=job.job_id, attempt=job.attempts, exc_info=True)
                self.job_failed(job.job_id, job.attempts, f"dispatch: {type(exc).__name__}: {exc}", True)
                continue
            if outgoing is not None:
                return outgoing
        return None

    def _outgoing(self, job: JobRow, worker: WorkerInfo) -> OutgoingJob | None:
        """The job's header and frames, or None after failing a job whose source files are gone."""
        instances = self._ledger.series_instances(job.series_uid)
        missing = sum(not self._spool.has(row.spool_name) for row in instances)
        if missing or not instances:
            self.job_failed(job.job_id, job.attempts, f"{SOURCE_GONE}: {missing} of {len(instances)} spool "
                            "file(s) of the series are missing", False)
            return None
        payload = [self._spool.read(row.spool_name) for row in instances]
        series = self._ledger.series_info(job.series_uid)
        header = {
            "model": job.model,
            "model_version": job.model_version,
            "series": asdict(series),
            "series_revision": job.series_revision,
            "study_key": self._ledger.study_key(series.study_uid),
        }
        log.info("job.leased", job=job.job_id, attempt=job.attempts, model=job.model, worker=worker.name,
                 instances=len(payload))
        return OutgoingJob(job_id=job.job_id, attempt=job.attempts, job=header, payload=payload)

    def reap(self, held: Collection[str]) -> None:
        """Renew the leases connected workers hold and take back every other expired one (throttled to a
        quarter of the lease, so the broker may call it on every heartbeat)."""
        now = time.monotonic()
        if now < self._next_reap:
            return
        self._next_reap = now + self._lease_seconds / 4
        for job_id, state in self._ledger.reap_leases(held, time.time(), self._lease_seconds):
            log.warning("job.lease_expired", job=job_id, state=state)

    def job_done(self, job_id: str, attempt: int, result: dict, artifacts: list[tuple[dict, memoryview]]) -> None:
        """File the artifacts, then mark the job done (a stale attempt files nothing)."""
        job = self._ledger.job(job_id)
        if job is None or job.state != "leased" or job.attempts != attempt:
            log.warning("job.stale_result", job=job_id, attempt=attempt)
            return
        series = self._ledger.series_info(job.series_uid)
        study_key = self._ledger.study_key(series.study_uid)
        files = [(meta["name"], data) for meta, data in artifacts]
        try:
            folder = self._results.file(study_key, job.model, self._ledger.series_key(job.series_uid), files)
        except ResultStoreError as exc:  # an unsafe artifact name: running it again writes the same
            self.job_failed(job_id, attempt, f"filing: {exc}", False)
            return
        except OSError as exc:  # disk full, results folder unwritable: retried, then dead-lettered
            self.job_failed(job_id, attempt, f"filing: {exc.strerror or exc}", True)
            return
        stages = {str(k): float(v) for k, v in (result.get("timings_s") or {}).items()
                  if isinstance(v, (int, float))}
        destinations = self._deliveries(job.model, folder) if self._deliveries is not None and job.deliver else []
        if self._ledger.complete_job(job_id, attempt, str(folder), time.time(), stages, destinations):
            (timeline,) = self._ledger.timelines([job_id])
            if self._histograms is not None:
                self._histograms.observe(timeline)
            seconds = timeline.stage_seconds()
            log.info("job.done", job=job_id, model=job.model, study_key=study_key,
                     artifacts=len(files), summary_findings=len(result.get("findings", [])),
                     end_to_end_s=round(seconds.get("end_to_end", 0.0), 4),
                     overhead_s=round(seconds.get("end_to_end", 0.0) - seconds.get("infer", 0.0), 4))
            if destinations and self._on_done is not None:
                self._on_done(job_id)
            self._finished(job_id, "done")
        else:
            log.warning("job.stale_result", job=job_id, attempt=attempt)

    def job_failed(self, job_id: str, attempt: int, reason: str, retryable: bool) -> None:
        """Record the failure; the ledger requeues it or dead-letters it after max attempts."""
        state = self._ledger.fail_job(job_id, attempt, reason, retryable, time.time())
        log.warning("job.failed", job=job_id, attempt=attempt, retryable=retryable, state=state,
                    reason=json.dumps(reason)[:300])
        self._finished(job_id, state)

    def lease_lost(self, job_id: str, attempt: int, reason: str) -> None:
        """The worker went away: queue the job again; a crash costs an attempt, a clean stop does not."""
        state = self._ledger.release_job(job_id, attempt, reason, time.time(),
                                         count_attempt=reason not in CLEAN_REASONS)
        log.warning("job.lease_lost", job=job_id, attempt=attempt, reason=reason)
        self._finished(job_id, state)

    def _finished(self, job_id: str, state: str | None) -> None:
        """Tell ``on_finished`` (notifications) of a job that reached done, failed or dead."""
        if state in ("done", "failed", "dead") and self._on_finished is not None:
            self._on_finished(job_id)
