"""Where the CPU went during a bench run: the engine's receiver, its workers, and the modality simulator.

On a shared machine the engine's throughput is bounded by everything that
competes with the model for the cores, so ``scanstream bench`` reports CPU
seconds per study for each party alongside the latencies. Read from
``/proc/<pid>/stat`` (utime + stime) for the ``scanstream serve`` process the
bench started and its children (the workers), and from ``getrusage`` for this
process and its finished children (the ``storescu`` senders, or pynetdicom in
this process). Linux only; elsewhere, or for an engine the bench did not
start, the engine's share is not measured.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass, field
from pathlib import Path

PROC = Path("/proc")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of one process so far, or None when it cannot be read."""
    try:
        fields = (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """The live child processes of ``pid``."""
    found = []
    for entry in PROC.iterdir() if PROC.is_dir() else []:
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if parent == pid:
                found.append(int(entry.name))
    return found


def _own_and_children() -> float:
    own, finished = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + finished.ru_utime + finished.ru_stime


@dataclass
class CpuMeter:
    """CPU seconds from :meth:`start` to :meth:`stop` of the engine started at ``engine_pid`` and of this process."""

    engine_pid: int | None
    _start: dict[int, float] = field(default_factory=dict)
    _workers: list[int] = field(default_factory=list)
    _modality: float = 0.0

    def start(self) -> None:
        """Snapshot the counters (call once the workers are up)."""
        self._modality = _own_and_children()
        if self.engine_pid is None:
            return
        self._workers = children(self.engine_pid)
        for pid in [self.engine_pid, *self._workers]:
            seconds = cpu_seconds(pid)
            if seconds is not None:
                self._start[pid] = seconds

    def stop(self) -> dict[str, float | None]:
        """CPU seconds since :meth:`start`: ``receiver`` (serve process), ``workers``, ``modality`` (this side)."""
        def spent(pid: int) -> float | None:
            now = cpu_seconds(pid)
            return None if now is None or pid not in self._start else now - self._start[pid]

        receiver = spent(self.engine_pid) if self.engine_pid is not None else None
        workers = [spent(pid) for pid in self._workers]
        return {"receiver": receiver,
                "workers": sum(w for w in workers if w is not None) if workers and None not in workers else None,
                "modality": _own_and_children() - self._modality}
