"""The HTTP side served by uvicorn: health, readiness (the parts that are not ready) and metrics, open to all."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from engine.web.app import create_app
from engine.web.metrics import StatusCollector
from engine.web.server import WebError, WebServer


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture()
def server():
    failing: list[str] = ["broker: not started", "ledger: locked"]
    registry = CollectorRegistry()
    registry.register(StatusCollector(lambda: {"queued": 2, "done": 5}, lambda: 3, lambda: (7, 7000)))
    server = WebServer(create_app(registry, lambda: list(failing)), "127.0.0.1", 0)
    server.start()
    yield server, failing
    server.stop()


def test_health_readiness_and_metrics(server) -> None:
    http, failing = server
    assert get(http.port, "/healthz") == (200, "ok\n")
    assert get(http.port, "/readyz") == (503, "broker: not started\nledger: locked\n")
    failing.clear()
    assert get(http.port, "/readyz") == (200, "ready\n")
    code, text = get(http.port, "/metrics")
    assert code == 200
    assert 'scanstream_jobs{state="queued"} 2.0' in text and "scanstream_workers_connected 3.0" in text
    assert "scanstream_queue_depth 2.0" in text
    assert "scanstream_instances_received_total 7.0" in text and "scanstream_received_bytes_total 7000.0" in text
    assert get(http.port, "/nope")[0] == 404


def test_without_a_console_only_the_open_endpoints_exist(server) -> None:
    http, _ = server
    assert get(http.port, "/api/studies/1.2.3")[0] == 404
    assert get(http.port, "/login")[0] == 404


def test_a_port_in_use_names_the_setting() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(WebError, match="http.host/http.port: cannot listen on 127.0.0.1"):
            WebServer(create_app(CollectorRegistry(), lambda: []), "127.0.0.1", port)


def test_stop_closes_the_port(server) -> None:
    http, _ = server
    http.stop()
    assert get_refused(http.port)


def get_refused(port: int) -> bool:
    try:
        get(port, "/healthz")
    except urllib.error.URLError:
        return True
    return False


def test_storage_gauges_read_the_ledger_total_its_files_and_the_free_space(tmp_path: Path) -> None:
    from prometheus_client import generate_latest

    from engine.web.metrics import StorageCollector

    ledger = tmp_path / "ledger.sqlite"
    ledger.write_bytes(b"x" * 4096)
    ledger.with_name("ledger.sqlite-wal").write_bytes(b"y" * 1000)
    registry = CollectorRegistry()
    registry.register(StorageCollector(lambda: 123456, ledger, tmp_path))
    text = generate_latest(registry).decode()
    assert "scanstream_spool_bytes 123456.0" in text and "scanstream_ledger_bytes 5096.0" in text
    free = [line for line in text.splitlines() if line.startswith("scanstream_free_bytes ")]
    assert len(free) == 1 and float(free[0].split()[1]) > 0
