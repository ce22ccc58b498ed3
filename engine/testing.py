"""Helpers for tests of ScanStream and of its plugins: a real engine in a subprocess.

``EngineProcess`` starts ``scanstream serve`` on free loopback ports with its own
data folder and config, waits for ``/readyz``, and stops it with SIGTERM.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.ports import free_port
from engine.receiver.ledger import Ledger



def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_config(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    """Write a TOML config file from nested dicts (enough for tests)."""
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in values.items())
        lines.append("")
    path.write_text("\n".join(lines))
    return path


# ONNX exports and backend timings are keyed by weights and host, so test engines share them.
TEST_MODEL_CACHE = Path(tempfile.gettempdir()) / "scanstream-test-model-cache"


@dataclass
class EngineProcess:
    """``scanstream serve`` in a subprocess, on free ports, with its data under ``data_dir``."""

    data_dir: Path
    workers: int = 1
    idle_timeout_s: float = 5.0
    heartbeat_interval_s: float = 0.5
    extra: dict[str, dict[str, Any]] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    ae_title: str = "SCANSTREAM"
    model_cache: Path = field(default_factory=lambda: TEST_MODEL_CACHE)

    def __post_init__(self) -> None:
        self.port = free_port()
        self.http_port = free_port()
        self.broker_port = free_port()
        self.process: subprocess.Popen | None = None
        self.log_path = self.data_dir / "serve.log"

    def config_sections(self) -> dict[str, dict[str, Any]]:
        sections: dict[str, dict[str, Any]] = {
            "receiver": {"ae_title": self.ae_title, "host": "127.0.0.1", "port": self.port},
            "storage": {"data_dir": str(self.data_dir)},
            "assembler": {"idle_timeout_s": self.idle_timeout_s},
            "broker": {"bind": f"tcp://127.0.0.1:{self.broker_port}",
                       "heartbeat_interval_s": self.heartbeat_interval_s},
            "worker": {"count": self.workers, "torch_threads": 1, "model_cache": str(self.model_cache)},
            "http": {"host": "127.0.0.1", "port": self.http_port},
        }
        for name, values in self.extra.items():
            sections.setdefault(name, {}).update(values)
        return sections

    def start(self, timeout: float = 60.0) -> "EngineProcess":
        """Start and wait until ``/readyz`` answers 200 (raises with the log tail otherwise)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = write_config(self.data_dir / "scanstream.toml", self.config_sections())
        env = {k: v for k, v in os.environ.items() if not k.startswith("SCANSTREAM_")}
        env.update(self.env)
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "engine.cli", "serve", "--config", str(config)],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"scanstream serve exited with {self.process.returncode}:\n{self.log_tail()}")
            if self.http_status("/readyz") == 200:
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"scanstream serve not ready in {timeout} s:\n{self.log_tail()}")

    def http_status(self, path: str) -> int | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=2) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def ledger(self) -> Ledger:
        """A reader on the engine's ledger (SQLite WAL allows it beside the writer)."""
        return Ledger(self.data_dir / "ledger.sqlite")

    def wait_for_jobs(self, study_uid: str, count: int, timeout: float = 120.0) -> list:
        """Wait until the study has ``count`` jobs in a final state; returns them."""
        deadline = time.monotonic() + timeout
        ledger = self.ledger()
        try:
            while time.monotonic() < deadline:
                jobs = ledger.final_study_jobs(study_uid, count)
                if jobs:
                    return jobs
                if self.process is not None and self.process.poll() is not None:
                    break
                time.sleep(0.2)
        finally:
            ledger.close()
        raise AssertionError(f"study did not reach {count} final job(s) in {timeout} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, wait, SIGKILL if needed; returns the exit code."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def __enter__(self) -> "EngineProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def storescu(files: list[Path], port: int, called_aet: str = "SCANSTREAM", calling_aet: str = "STORESCU",
             extra_args: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Send files with DCMTK's storescu (TCP_NODELAY=1 so DCMTK does not stall on Nagle)."""
    env = {**os.environ, "TCP_NODELAY": "1"}
    command = ["storescu", "-aet", calling_aet, "-aec", called_aet, *extra_args, "127.0.0.1", str(port),
               *map(str, files)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
