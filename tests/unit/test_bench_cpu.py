"""engine.bench.cpu: CPU seconds of the engine's processes and of the bench side, read from /proc."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from engine.bench.cpu import CpuMeter, children, cpu_seconds

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")


def burn(seconds: float) -> int:
    """Spend ``seconds`` of CPU in this thread; returns a count so the loop does work."""
    end, loops = time.process_time() + seconds, 0
    while time.process_time() < end:
        loops += 1
    return loops


def test_the_engine_process_and_this_side_are_counted() -> None:
    meter = CpuMeter(os.getpid())
    meter.start()
    burn(0.3)
    spent = meter.stop()
    assert spent["receiver"] is not None and spent["receiver"] >= 0.2
    assert spent["modality"] >= 0.2


def test_a_child_process_is_a_worker_and_a_running_engine_is_not_measured() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"])
    try:
        assert child.pid in children(os.getpid())
        assert cpu_seconds(child.pid) is not None
    finally:
        child.kill()
        child.wait()
    meter = CpuMeter(None)
    meter.start()
    spent = meter.stop()
    assert spent["receiver"] is None and spent["workers"] is None and spent["modality"] >= 0.0
