"""The receiver role, wired from config: SCP, spool, ledger, assembler, router, broker, delivery,
notifications, HTTP.

``ReceiverRole`` owns everything stateful on the receiving host.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from prometheus_client import CollectorRegistry

from engine.broker.broker import Broker
from engine.config import EngineConfig
from engine.delivery.service import DeliveryService
from engine.ledger.latency import DELIVERY_STAGES, StageHistograms
from engine.ledger.store import Ledger
from engine.ledger.study_report import study_report
from engine.logs import get_logger
from engine.notify.registry import StudyFacts
from engine.notify.service import NotificationService
from engine.outputs.store import ResultStore
from engine.plugins import LoadedPlugins
from engine.receiver.assembler import Assembler
from engine.receiver.audit import AuditTrail
from engine.receiver.dispatch import LedgerJobSource
from engine.receiver.retention import RetentionService
from engine.receiver.router import Router, backfill
from engine.receiver.scp import ReceiverSCP
from engine.receiver.spool import Spool
from engine.roles.health import HealthMonitor
from engine.receiver.stow import StowStore
from engine.retention.policy import RetentionPolicy
from engine.roles.memory import freeze_startup_objects
from engine.web.app import create_app
from engine.web.auth.store import AccessStore
from engine.web.console import Console
from engine.web.dicomweb import stow_router
from engine.web.metrics import StatusCollector, StorageCollector
from engine.web.models_view import ModelCatalogue
from engine.web.server import WebServer, tls_context
from engine.web.queries import LedgerReader
from engine.web.study_headers import StudyHeaders

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
        self._headers = StudyHeaders(self.spool, LedgerReader(storage.ledger_path).first_instance)
        self.notifications = NotificationService(self.ledger, config.notifications, plugins.notifiers,
                                                 facts=self._study_facts)
        self.broker = Broker(
            config.broker.bind,
            LedgerJobSource(self.ledger, self.spool, self.results, self.histograms,
                            deliveries=self.delivery.destinations_for, on_done=self.delivery.wake,
                            on_finished=self.notifications.job_finished,
                            lease_seconds=config.broker.lease_timeout_s),
            heartbeat_interval=config.broker.heartbeat_interval_s,
            liveness=config.broker.heartbeat_liveness,
            curve=config.broker.curve(),
        )
        self.router = Router(self.ledger, plugins.models, self.broker.notify, max_attempts=config.broker.max_attempts,
                             priority_values=config.routing.priority_values, enabled=config.routing.models)
        self.assembler = Assembler(self.ledger, self.router.route, idle_timeout=config.assembler.idle_timeout_s)
        self.audit = AuditTrail(storage.audit_path)
        self.retention = self._retention()
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
            audit=self.audit,
            priority_tag=config.routing.priority_tag,
            tls=receiver.tls_context(),
            tls_port=receiver.tls_port,
            plain=receiver.plain_enabled,
            quota_full=self.retention.quota_full if self.retention else lambda: False,
        )
        self.metrics.register(StatusCollector(self._job_counts, lambda: self.broker.stats().workers,
                                              self.ledger.received_totals, self.ledger.delivery_counts,
                                              self.ledger.notification_counts))
        self.metrics.register(StorageCollector(lambda: self.ledger.received_totals()[1], storage.ledger_path,
                                               storage.data_dir))
        if self.retention is not None:
            self.metrics.register(self.retention.collector())
        self.access = AccessStore(storage.users_path)
        stow = stow_router(StowStore(self.scp.store_handler, receiver.ae_title), config.http.stow_max_body_bytes,
                           self.scp.disk_low)
        self.http = WebServer(create_app(self.metrics, self.ready, self._console(plugins), [stow]), config.http.host,
                              config.http.port, tls=tls_context(config),
                              forwarded_allow_ips=config.http.forwarded_allow_ips)
        self._started = False
        checks: list[tuple[str, Callable[[], str | None]]] = [
            ("broker", lambda: None if self.broker.alive() else "thread stopped"),
            ("delivery", lambda: None if self.delivery.alive() else "thread stopped"),
            ("assembler", lambda: None if self.assembler.alive() else "thread stopped"),
            ("ledger", self.ledger.probe_write),
        ]
        if self.retention is not None:
            service = self.retention
            checks.append(("retention", lambda: None if service.alive() else "thread stopped"))
        self.health = HealthMonitor(checks, self._fatal, exit_after=config.receiver.unhealthy_exit_s)
        self._on_fatal: Callable[[], object] = lambda: None

    def _retention(self) -> RetentionService | None:
        """The background retention pass when ``retention.enabled``, else None (nothing is ever deleted)."""
        retention, storage = self.config.retention, self.config.storage
        if not retention.enabled:
            return None
        policy = RetentionPolicy(retention, self.ledger, self.spool, storage.results_dir, storage.ledger_path,
                                 time.time)
        return RetentionService(policy, storage.data_dir, retention.quota_bytes, retention.interval_s,
                                self.ledger.oldest_study_received)

    def _fatal(self) -> None:
        """A part stayed dead past ``receiver.unhealthy_exit_s``: ask the process to stop (and exit non-zero)."""
        self._on_fatal()

    @property
    def failed(self) -> bool:
        """Whether the receiver gave up on a dead part (the process should exit non-zero)."""
        return self.health.fatal

    def _console(self, plugins: LoadedPlugins) -> Console:
        """What the operations console reads and acts on."""
        return Console(self.ledger, self.spool, self.access, self.audit,
                       ModelCatalogue(plugins.models, self.config.routing.models, self.config.worker),
                       self.study_report, self.broker.workers, self.broker.notify, self.delivery.wake,
                       self.config.http)

    def _delivered(self, job_id: str) -> None:
        """A job's results reached a destination: add the delivery stages to the histograms."""
        for timeline in self.ledger.timelines([job_id]):
            self.histograms.observe(timeline, DELIVERY_STAGES)
        self.notifications.wake()

    def _study_facts(self, study_uid: str) -> StudyFacts:
        """Patient id, name and accession number from the study's stored header (HL7 PID/OBR), never logged."""
        header = self._headers.get(study_uid)
        return StudyFacts(header.patient_id, header.patient_name, header.accession_number)

    def _instance_stored(self, series_uid: str) -> None:
        self.assembler.check(series_uid, time.time())

    def study_report(self, study_uid: str, wait_s: float = 0.0) -> dict[str, Any] | None:
        """A study's series and jobs with their stage timings (``GET /api/studies/<uid>``); None if unknown.

        With ``wait_s`` the answer waits (up to that long) for the study to be
        final, woken by every job or delivery state change and at least once a
        second: a client waiting for results asks once instead of polling.

        The report is :func:`engine.ledger.study_report.study_report`'s.
        """
        deadline = time.monotonic() + max(0.0, wait_s)
        seen = self.ledger.job_changes()
        report = study_report(self.ledger, study_uid)
        while report is not None and not report["final"] and (remaining := deadline - time.monotonic()) > 0:
            seen = self.ledger.wait_job_change(seen, min(remaining, STUDY_RECHECK_S))
            if not self._started:  # stopping: answer with what was known rather than ask a closing ledger
                break
            report = study_report(self.ledger, study_uid)
        return report

    def _job_counts(self) -> dict[str, int]:
        return self.ledger.job_counts()

    def ready(self) -> list[str]:
        """The parts that are not healthy (empty: ready), as the health monitor last found them; until every
        part has started, the receiver itself."""
        return self.health.problems() if self._started else ["receiver: starting or stopping"]

    def start(self, on_fatal: Callable[[], object] | None = None) -> None:
        """Recover from the ledger, start broker, assembler and HTTP, and the SCP last.

        ``on_fatal`` is called once when a part stays dead past ``receiver.unhealthy_exit_s``.
        """
        if on_fatal is not None:
            self._on_fatal = on_fatal
        requeued = self.ledger.requeue_leased_on_start()
        self.broker.start()
        for series_uid, revision in self.ledger.unrouted_series_revisions():  # a crash between complete and route
            self.router.route(series_uid, revision)
        since = self.config.routing.backfill_since
        if since is not None:
            backfill(self.ledger, self.router, since, deliver=self.config.routing.backfill_deliver)
        self.assembler.start(tick=self.config.assembler.tick_s)
        self.delivery.start()
        self.notifications.start()
        if self.retention is not None:
            self.retention.start()
        self.http.start()
        self.scp.start()
        self.health.start()
        self._started = True
        freeze_startup_objects()
        log.info("receiver.started", ae_title=self.config.receiver.ae_title, port=self.scp.port,
                 tls_port=self.scp.tls_port, broker=self.broker.bound_address, http_port=self.http.port,
                 requeued_jobs=requeued)

    def stop(self) -> None:
        """Stop accepting, then stop the rest; the ledger is left consistent."""
        self._started = False
        self.health.stop()
        self.scp.stop()
        self.assembler.stop()
        self.broker.stop()
        self.delivery.stop()
        self.notifications.stop()
        if self.retention is not None:
            self.retention.stop()
        self.http.stop()
        self.access.close()
        self.ledger.close()
        log.info("receiver.stopped")


