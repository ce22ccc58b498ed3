"""The worker role: one process that loads the plugins, connects to a broker and computes jobs."""

from __future__ import annotations

import os
import socket
import threading

from engine.broker.security import CurveError
from engine.broker.worker_link import WorkerLink
from engine.config import EngineConfig
from engine.logs import get_logger
from engine.plugins import load_plugins
from engine.roles.memory import freeze_startup_objects, retain_freed_memory
from engine.runtime.errors import BackendError
from engine.runtime.export import ExportError
from engine.worker.runner import JobRunner

log = get_logger(__name__)


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
