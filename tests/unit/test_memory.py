"""engine.roles.memory: heap settings and frozen start-up objects of the engine's processes."""

from __future__ import annotations

import gc
import platform

import numpy as np
import pytest

from engine.roles.memory import freeze_startup_objects, retain_freed_memory


def test_start_up_objects_are_frozen_and_later_ones_still_collected() -> None:
    try:
        frozen = freeze_startup_objects()
        assert frozen > 0 and gc.get_freeze_count() == frozen

        cycle: list = []
        cycle.append(cycle)  # a reference cycle only the collector can free
        del cycle
        assert gc.collect() >= 1  # created after the freeze: found and freed
    finally:
        gc.unfreeze()


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="needs glibc")
def test_heap_settings_take_on_glibc_and_large_arrays_still_allocate() -> None:
    assert retain_freed_memory()
    big = np.ones((48, 3, 256, 256), dtype=np.float32)  # 38 MB, from the heap now
    assert float(big.sum()) == big.size
