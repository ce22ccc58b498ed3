"""``scanstream serve``'s worker supervisor: N worker subprocesses kept alive, restarted with backoff."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

from engine.config import EngineConfig, config_as_env
from engine.logs import get_logger

log = get_logger(__name__)


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
