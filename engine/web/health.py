"""Health and metrics over HTTP: ``/healthz``, ``/readyz``, ``/metrics`` (Prometheus text)."""

from __future__ import annotations

import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from engine.logs import get_logger

log = get_logger(__name__)

STUDY_PREFIX = "/api/studies/"


class StatusCollector(Collector):
    """Reads ledger and broker state at scrape time, so the figures are never stale."""

    def __init__(self, job_counts: Callable[[], dict[str, int]], workers: Callable[[], int],
                 received: Callable[[], tuple[int, int]] | None = None,
                 deliveries: Callable[[], dict[str, int]] | None = None) -> None:
        self._job_counts = job_counts
        self._workers = workers
        self._received = received
        self._deliveries = deliveries

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


StudyReport = Callable[[str, float], "dict[str, Any] | None"]
MAX_STUDY_WAIT_S = 60.0


def _wait_seconds(query: dict[str, list[str]]) -> float | None:
    """The ``wait_s`` query parameter (0 when absent), or None when it is not one number in [0, 60]."""
    values = query.get("wait_s", ["0"])
    try:
        wait_s = float(values[0])
    except ValueError:
        return None
    return wait_s if len(values) == 1 and 0.0 <= wait_s <= MAX_STUDY_WAIT_S else None


class HealthServer:
    """A small threaded HTTP server; readiness comes from a callable.

    ``study_report``, when given, answers ``GET /api/studies/<study UID>`` with JSON
    (404 for an unknown study); ``?wait_s=N`` (0-60) holds the answer until the
    study is final or N seconds passed: how ``scanstream bench`` waits for results.
    """

    def __init__(self, host: str, port: int, registry: CollectorRegistry, ready: Callable[[], bool],
                 study_report: StudyReport | None = None) -> None:
        self._registry = registry
        self._ready = ready
        self._study_report = study_report
        self._server = ThreadingHTTPServer((host, port), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server naming)
                if self.path == "/healthz":
                    self._reply(200, b"ok\n", "text/plain")
                elif self.path == "/readyz":
                    ready = server._ready()
                    self._reply(200 if ready else 503, b"ready\n" if ready else b"not ready\n", "text/plain")
                elif self.path == "/metrics":
                    self._reply(200, generate_latest(server._registry), CONTENT_TYPE_LATEST)
                elif self.path.startswith(STUDY_PREFIX) and server._study_report is not None:
                    url = urllib.parse.urlsplit(self.path)
                    wait_s = _wait_seconds(urllib.parse.parse_qs(url.query))
                    if wait_s is None:
                        self._reply(400, b'{"error": "wait_s: expected seconds from 0 to 60"}\n', "application/json")
                        return
                    report = server._study_report(url.path[len(STUDY_PREFIX):], wait_s)
                    if report is None:
                        self._reply(404, b'{"error": "unknown study"}\n', "application/json")
                    else:
                        self._reply(200, json.dumps(report).encode(), "application/json")
                else:
                    self._reply(404, b"not found\n", "text/plain")

            def _reply(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                return

        return Handler

    def start(self) -> None:
        self._thread.start()
        log.info("http.listening", port=self.port)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
