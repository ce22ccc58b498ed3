"""Memory settings of the engine's long-running processes: large buffers kept in the heap, start-up objects frozen.

Large buffers (:func:`retain_freed_memory`, workers). Each job allocates the
same few large arrays again: the stacked series, the network input (48 x 3 x
256 x 256 float32 is 38 MB), the logits, the label map. glibc serves
allocations above its mmap threshold (at most 32 MB by its own adjustment)
with fresh ``mmap`` pages and unmaps them on free, so every job paid
first-touch page faults on every large array: building the 2.5D input took
19 ms of which 11 ms were page faults. Raising the mmap and trim thresholds
lets the next job reuse freed blocks, and one arena for all threads keeps the
compute threads' blocks in that heap too (a thread arena's heaps are at most
64 MB, so larger blocks were mapped afresh whatever the threshold). The cost is
resident memory held at the worker's peak working set, which an inference
worker keeps anyway. A no-op (returns False) where the C library is not glibc.

Start-up objects (:func:`freeze_startup_objects`, workers and the receiver):
see there.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc

from engine.logs import get_logger

log = get_logger(__name__)

M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD_BYTES = 1 << 30  # blocks below 1 GiB come from the heap (larger ones are still mapped)
TRIM_THRESHOLD_BYTES = 1 << 31  # free heap top returned to the system only beyond 2 GiB


def retain_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds and use one arena in this process; True when all settings took."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        log.info("memory.heap_unchanged", reason="no glibc mallopt here")
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    applied = all([bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)),
                   bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)), bool(mallopt(M_ARENA_MAX, 1))])
    log.info("memory.heap_retained" if applied else "memory.heap_unchanged", mmap_threshold=MMAP_THRESHOLD_BYTES,
             trim_threshold=TRIM_THRESHOLD_BYTES)
    return applied


def freeze_startup_objects() -> int:
    """Move every object alive now out of the garbage collector's view; returns how many were frozen.

    Called once start-up is over (models loaded, DICOM tables read). Those
    objects live as long as the process, yet each full (generation 2) collection
    walks them all: ~180 ms in a worker with torch, ONNX Runtime and pydicom
    loaded, landing on whichever job is running. Frozen, they are never scanned
    again; objects created by jobs are collected as before.
    """
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info("memory.gc_frozen", objects=frozen)
    return frozen
