"""The engine's roles, wired from config: receiver (SCP + ledger + broker), worker, serve.

``ReceiverRole`` owns everything stateful on the receiving host; ``run_worker``
is one worker process; ``WorkerSupervisor`` keeps N worker subprocesses alive
for ``scanstream serve``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry

from engine.broker.broker import Broker
from engine.broker.security import CurveError
from engine.broker.worker_link import WorkerLink
from engine.config import EngineConfig, config_as_env
from engine.dispatch import LedgerJobSource
from engine.http import HealthServer, StatusCollector
from engine.delivery import DeliveryService
from engine.latency import DELIVERY_STAGES, StageHistograms
from engine.logs import get_logger
from engine.memory import freeze_startup_objects, retain_freed_memory
from engine.outputs.store import ResultStore
from engine.plugins import LoadedPlugins, load_plugins
from engine.receiver.assembler import Assembler
from engine.receiver.audit import AuditTrail
from engine.receiver.ledger import FINAL_JOB_STATES, Ledger
from engine.receiver.parse import is_safe_uid
from engine.receiver.router import Router
from engine.receiver.scp import ReceiverSCP
from engine.receiver.spool import Spool
from engine.runtime.base import BackendError
from engine.runtime.export import ExportError
from engine.worker.runner import JobRunner

log = get_logger(__name__)

STUDY_RECHECK_S = 1.0  # a waiting study report looks again at least this often (series completing)


class ReceiverRole:
    """SCP, spool, ledger, assembler, router, broker and the health endpoint of one host."""

    def __init__(self, config: EngineConfig, plugins: LoadedPlugins) -> None:
        storage = config.storage
        storage.data_dir.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.ledger = Ledger(storage.ledger_path)
        self.spool = Spool(storage.spool_dir, recent_bytes=storage.recent_cache_bytes)
        self.results = ResultStore(storage.results_dir)
        self.metrics = CollectorRegistry()
        self.histograms = StageHistograms(self.metrics)
        self.delivery = DeliveryService(self.ledger, config.destinations, on_sent=self._delivered)
        self.broker = Broker(
            config.broker.bind,
            LedgerJobSource(self.ledger, self.spool, self.results, self.histograms,
                            deliveries=self.delivery.destinations_for, on_done=self.delivery.wake),
            heartbeat_interval=config.broker.heartbeat_interval_s,
            liveness=config.broker.heartbeat_liveness,
            curve=config.broker.curve(),
        )
        self.router = Router(self.ledger, plugins.models, self.broker.notify, max_attempts=config.broker.max_attempts,
                             priority_values=config.routing.priority_values, enabled=config.routing.models)
        self.assembler = Assembler(self.ledger, self.router.route, idle_timeout=config.assembler.idle_timeout_s)
        receiver = config.receiver
        self.scp = ReceiverSCP(
            receiver.ae_title,
            receiver.host,
            receiver.port,
            self.spool,
            self.ledger,
            self._instance_stored,
            max_associations=receiver.max_associations,
            allowed_calling_aets=receiver.allowed_calling_aets,
            max_instance_bytes=receiver.max_instance_bytes,
            max_study_bytes=receiver.max_study_bytes,
            max_pdu=receiver.max_pdu_bytes,
            acse_timeout=receiver.acse_timeout_s,
            dimse_timeout=receiver.dimse_timeout_s,
            network_timeout=receiver.network_timeout_s,
            duplicate_policy=receiver.duplicate_policy,
            min_free_bytes=storage.min_free_bytes,
            audit=AuditTrail(storage.data_dir / "audit.log"),
            priority_tag=config.routing.priority_tag,
            tls=receiver.tls_context(),
            tls_port=receiver.tls_port,
            plain=receiver.plain_enabled,
        )
        self.metrics.register(StatusCollector(self._job_counts, lambda: self.broker.stats().workers,
                                              self.ledger.received_totals, self.ledger.delivery_counts))
        self.http = HealthServer(config.http.host, config.http.port, self.metrics, self.ready, self.study_report)
        self._started = False

    def _delivered(self, job_id: str) -> None:
        """A job's results reached a destination: add the delivery stages to the histograms."""
        for timeline in self.ledger.timelines([job_id]):
            self.histograms.observe(timeline, DELIVERY_STAGES)

    def _instance_stored(self, series_uid: str) -> None:
        self.assembler.check(series_uid, time.time())

    def study_report(self, study_uid: str, wait_s: float = 0.0) -> dict[str, Any] | None:
        """A study's series and jobs with their stage timings (``GET /api/studies/<uid>``); None if unknown.

        With ``wait_s`` the answer waits (up to that long) for the study to be
        final, woken by every job or delivery state change and at least once a
        second: a client waiting for results asks once instead of polling.

        ``artifacts`` names the files a done job filed (empty once retention removed them).
        ``final`` is true once every series is complete, every job is done,
        failed or dead-lettered and every delivery sent or failed: nothing more
        will happen without new instances.
        """
        deadline = time.monotonic() + max(0.0, wait_s)
        seen = self.ledger.job_changes()
        report = self._study_report(study_uid)
        while report is not None and not report["final"] and (remaining := deadline - time.monotonic()) > 0:
            seen = self.ledger.wait_job_change(seen, min(remaining, STUDY_RECHECK_S))
            if not self._started:  # stopping: answer with what was known rather than ask a closing ledger
                break
            report = self._study_report(study_uid)
        return report

    def _study_report(self, study_uid: str) -> dict[str, Any] | None:
        if not is_safe_uid(study_uid):
            return None
        series = self.ledger.study_series(study_uid)
        if not series:
            return None
        jobs = self.ledger.study_jobs(study_uid)
        timelines = {t.job_id: t for t in self.ledger.timelines([j.job_id for j in jobs if j.state == "done"])}
        deliveries: dict[str, list[dict[str, Any]]] = {}
        for row in self.ledger.deliveries([j.job_id for j in jobs]):
            deliveries.setdefault(row.job_id, []).append(
                {"destination": row.destination, "state": row.state, "attempts": row.attempts, "reason": row.reason,
                 "warnings": row.warnings, "finished": row.finished})
        return {
            "study_uid": study_uid,
            "study_key": self.ledger.study_key(study_uid),
            "series": [{"series_uid": s.series_uid, "series_key": s.series_key, "state": s.state,
                        "revision": s.revision, "instances": s.instance_count, "expected": s.expected_count,
                        "completion": s.completion_reason} for s in series],
            "jobs": [{"job_id": j.job_id, "series_uid": j.series_uid, "series_revision": j.series_revision,
                      "model": j.model, "state": j.state, "attempts": j.attempts, "reason": j.reason,
                      "created": j.created, "finished": j.finished,
                      "stages_s": timelines[j.job_id].stage_seconds() if j.job_id in timelines else {},
                      "artifacts": _artifact_names(j.result_dir) if j.state == "done" else [],
                      "deliveries": deliveries.get(j.job_id, [])}
                     for j in jobs],
            "final": all(s.state == "complete" for s in series) and all(j.state in FINAL_JOB_STATES for j in jobs)
            and all(d["state"] != "pending" for rows in deliveries.values() for d in rows),
        }

    def _job_counts(self) -> dict[str, int]:
        return self.ledger.job_counts()

    def ready(self) -> bool:
        """Ready once every part has started."""
        return self._started

    def start(self) -> None:
        """Recover from the ledger, start broker, assembler and HTTP, and the SCP last."""
        requeued = self.ledger.requeue_leased_on_start()
        self.broker.start()
        for series_uid, revision in self.ledger.complete_series_revisions():
            self.router.route(series_uid, revision)
        self.assembler.start(tick=self.config.assembler.tick_s)
        self.delivery.start()
        self.http.start()
        self.scp.start()
        self._started = True
        freeze_startup_objects()
        log.info("receiver.started", ae_title=self.config.receiver.ae_title, port=self.scp.port,
                 tls_port=self.scp.tls_port, broker=self.broker.bound_address, http_port=self.http.port,
                 requeued_jobs=requeued)

    def stop(self) -> None:
        """Stop accepting, then stop the rest; the ledger is left consistent."""
        self._started = False
        self.scp.stop()
        self.assembler.stop()
        self.broker.stop()
        self.delivery.stop()
        self.http.stop()
        self.ledger.close()
        log.info("receiver.stopped")


def worker_name(index: int = 0) -> str:
    """A readable, unique worker name: host, pid and index."""
    return f"{socket.gethostname()}:{os.getpid()}:{index}"


def run_worker(config: EngineConfig, broker: str, stop: threading.Event, name: str | None = None) -> None:
    """One worker process: load plugins, connect to the broker, process jobs until ``stop``."""
    if config.worker.retain_heap:
        retain_freed_memory()
    plugins = load_plugins(config)
    runner = JobRunner(plugins, config.worker)
    try:
        runner.warm_up(only=config.routing.models)
    except (BackendError, ExportError) as error:
        log.error("worker.model_unavailable", reason=str(error), backend=config.worker.backend,
                  device=config.worker.device)
        raise SystemExit(2) from error
    freeze_startup_objects()
    try:
        link = WorkerLink(
            broker,
            name or worker_name(),
            runner.handle,
            capacity=config.worker.capacity,
            models=runner.model_names(),
            heartbeat_interval=config.broker.heartbeat_interval_s,
            liveness=config.broker.heartbeat_liveness,
            curve=config.worker.curve(),
        )
    except CurveError as error:
        log.error("worker.curve_refused", reason=str(error))
        runner.close()
        raise SystemExit(2) from error
    log.info("worker.started", broker=broker, models=",".join(runner.model_names()))
    try:
        link.run(stop)
    finally:
        runner.close()
    log.info("worker.stopped")


def stop_with_parent(parent_pid: int, stop: threading.Event, interval_s: float = 1.0) -> None:
    """Set ``stop`` when ``parent_pid`` is no longer this process's parent (it died, even by SIGKILL).

    Workers spawned by ``scanstream serve`` use it so a killed ``serve`` leaves no orphans.
    """
    def watch() -> None:
        while not stop.wait(interval_s):
            if os.getppid() != parent_pid:
                log.warning("worker.parent_gone", parent_pid=parent_pid)
                stop.set()

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def stop_on_signals(stop: threading.Event) -> None:
    """Set ``stop`` on SIGTERM and SIGINT (graceful shutdown)."""
    def handler(signum: int, _frame: object) -> None:
        log.info("signal.received", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _artifact_names(result_dir: str | None) -> list[str]:
    """The files in a job's result folder, sorted; none when there is no folder (any more)."""
    if not result_dir:
        return []
    try:
        return sorted(entry.name for entry in os.scandir(result_dir) if entry.is_file())
    except (FileNotFoundError, NotADirectoryError):
        return []


@dataclass
class _Child:
    index: int
    process: subprocess.Popen
    started: float


class WorkerSupervisor:
    """Keeps ``count`` worker subprocesses running, restarting any that die (with backoff)."""

    def __init__(self, config: EngineConfig, broker: str, count: int) -> None:
        self._env = {**os.environ, **config_as_env(config)}
        self._broker = broker
        self._count = count
        self._children: dict[int, _Child] = {}
        self._backoff: dict[int, float] = {}
        self._thread = threading.Thread(target=self._watch, name="worker-supervisor", daemon=True)
        self._stop = threading.Event()

    def _spawn(self, index: int) -> None:
        command = [sys.executable, "-m", "engine.cli", "worker", "--broker", self._broker, "--index", str(index),
                   "--parent-pid", str(os.getpid())]
        process = subprocess.Popen(command, env=self._env)
        self._children[index] = _Child(index, process, time.monotonic())
        log.info("worker.spawned", index=index, pid=process.pid)

    def start(self) -> None:
        for index in range(self._count):
            self._spawn(index)
        self._thread.start()

    def pids(self) -> list[int]:
        """PIDs of the running worker processes."""
        return [child.process.pid for child in self._children.values()]

    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            for index, child in list(self._children.items()):
                code = child.process.poll()
                if code is None:
                    continue
                lived = time.monotonic() - child.started
                delay = 0.0 if lived > 30 else min(2 * self._backoff.get(index, 0.25), 10.0)
                self._backoff[index] = delay or 0.25
                log.warning("worker.exited", index=index, pid=child.process.pid, code=code, restart_in_s=delay)
                if self._stop.wait(delay):
                    return
                self._spawn(index)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM every worker, wait, then SIGKILL stragglers."""
        self._stop.set()
        for child in self._children.values():
            if child.process.poll() is None:
                child.process.terminate()
        deadline = time.monotonic() + timeout
        for child in self._children.values():
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()
        if self._thread.is_alive():
            self._thread.join(timeout=2)
