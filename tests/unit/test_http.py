"""Health and metrics endpoint."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry

from engine.web.health import HealthServer, StatusCollector


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


@pytest.fixture()
def server():
    ready = {"value": False}
    registry = CollectorRegistry()
    registry.register(StatusCollector(lambda: {"queued": 2, "done": 5}, lambda: 3, lambda: (7, 7000)))
    reports = {"1.2.3": {"study_uid": "1.2.3", "final": True}}
    asked: list[tuple[str, float]] = []

    def report(study_uid: str, wait_s: float):
        asked.append((study_uid, wait_s))
        return reports.get(study_uid)

    server = HealthServer("127.0.0.1", 0, registry, lambda: ready["value"], report)
    server.asked = asked
    server.start()
    yield server, ready
    server.stop()


def test_health_readiness_and_metrics(server) -> None:
    http, ready = server
    assert get(http.port, "/healthz")[0] == 200
    assert get(http.port, "/readyz")[0] == 503
    ready["value"] = True
    assert get(http.port, "/readyz")[0] == 200
    code, text = get(http.port, "/metrics")
    assert code == 200
    assert 'scanstream_jobs{state="queued"} 2.0' in text and "scanstream_workers_connected 3.0" in text
    assert "scanstream_queue_depth 2.0" in text
    assert "scanstream_instances_received_total 7.0" in text and "scanstream_received_bytes_total 7000.0" in text
    assert get(http.port, "/nope")[0] == 404


def test_study_reports_as_json(server) -> None:
    import json

    http, _ = server
    code, text = get(http.port, "/api/studies/1.2.3")
    assert code == 200 and json.loads(text) == {"study_uid": "1.2.3", "final": True}
    assert get(http.port, "/api/studies/9.9")[0] == 404
    assert get(http.port, "/api/studies/1.2.3?wait_s=2.5")[0] == 200
    assert http.asked == [("1.2.3", 0.0), ("9.9", 0.0), ("1.2.3", 2.5)]
    for bad in ("-1", "61", "nan", "soon", "1&wait_s=2"):
        assert get(http.port, f"/api/studies/1.2.3?wait_s={bad}")[0] == 400
    assert len(http.asked) == 3
