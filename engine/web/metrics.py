"""``/metrics`` (Prometheus text, open like the health endpoints) and the ledger/broker status collector."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable, Iterator

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector


class StatusCollector(Collector):
    """Reads ledger and broker state at scrape time, so the figures are never stale."""

    def __init__(self, job_counts: Callable[[], dict[str, int]], workers: Callable[[], int],
                 received: Callable[[], tuple[int, int]] | None = None,
                 deliveries: Callable[[], dict[str, int]] | None = None,
                 notifications: Callable[[], dict[str, int]] | None = None) -> None:
        self._job_counts = job_counts
        self._workers = workers
        self._received = received
        self._deliveries = deliveries
        self._notifications = notifications

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        counts = self._job_counts()
        jobs = GaugeMetricFamily("scanstream_jobs", "Jobs by state", labels=["state"])
        for state, count in sorted(counts.items()):
            jobs.add_metric([state], count)
        yield jobs
        yield GaugeMetricFamily("scanstream_queue_depth", "Jobs queued, waiting for a worker",
                                value=counts.get("queued", 0))
        yield GaugeMetricFamily("scanstream_workers_connected", "Workers heartbeating", value=self._workers())
        if self._received is not None:
            instances, size = self._received()  # from the ledger: survives restarts, counts only stored instances
            yield CounterMetricFamily("scanstream_instances_received", "Instances stored and acknowledged",
                                      value=instances)
            yield CounterMetricFamily("scanstream_received_bytes", "Bytes of instances stored and acknowledged",
                                      value=size)
        if self._deliveries is not None:
            deliveries = GaugeMetricFamily("scanstream_deliveries", "Result deliveries to destinations by state",
                                           labels=["state"])
            for state, count in sorted(self._deliveries().items()):
                deliveries.add_metric([state], count)
            yield deliveries
        if self._notifications is not None:
            notifications = GaugeMetricFamily("scanstream_notifications",
                                              "Notifications (webhook, HL7) of job and study events by state",
                                              labels=["state"])
            for state, count in sorted(self._notifications().items()):
                notifications.add_metric([state], count)
            yield notifications


def metrics_router(registry: CollectorRegistry) -> APIRouter:
    """``GET /metrics``: every collector registered on the receiver's registry."""
    router = APIRouter(tags=["health"])

    @router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
    def metrics() -> Response:
        """Prometheus metrics (no sign-in: scrapers read it)."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return router


class StorageCollector(Collector):
    """Disk use at scrape time: the spool's bytes (the ledger's kept total of stored instances), the ledger's
    files (with its WAL), and the free bytes of the data folder's volume."""

    def __init__(self, spool_bytes: Callable[[], int], ledger_path: Path, data_dir: Path) -> None:
        self._spool_bytes = spool_bytes
        self._ledger_files = [ledger_path, ledger_path.with_name(ledger_path.name + "-wal"),
                              ledger_path.with_name(ledger_path.name + "-shm")]
        self._data_dir = data_dir

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily("scanstream_spool_bytes", "Bytes of the stored instances in the spool",
                                value=self._spool_bytes())
        yield GaugeMetricFamily("scanstream_ledger_bytes", "Bytes of the ledger's files (database, WAL)",
                                value=sum(path.stat().st_size for path in self._ledger_files if path.exists()))
        yield GaugeMetricFamily("scanstream_free_bytes", "Free bytes on the data folder's volume",
                                value=shutil.disk_usage(self._data_dir).free)
