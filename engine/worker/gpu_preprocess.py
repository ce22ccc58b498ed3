"""The GPU worker's preprocessing: a handler's SlicePlan run by the fused CUDA kernel, output left on the device.

pycuda works in torch's primary context (retained, pushed around each call), so
the kernel writes into a torch CUDA tensor that the backend reads in place:
stored values cross PCIe once, as uint8/int16/uint16, never as floats. Each
compute thread has its own kernel scratch buffer and page-locked staging buffer,
so the host-to-device copy is asynchronous and threads never share a buffer.
"""

from __future__ import annotations

import importlib
import threading
from typing import Any

import numpy as np

from engine.kernels.cuda import CudaPreprocessor, CudaUnavailable
from engine.kernels.plan import SlicePlan


class GpuSlicePreprocessor:
    """Runs :class:`SlicePlan` s on CUDA device ``index`` for any number of threads."""

    def __init__(self, index: int = 0) -> None:
        try:
            self._driver = importlib.import_module("pycuda.driver")
        except ImportError as error:
            raise CudaUnavailable(f"pycuda is not importable ({error}); install the [gpu] extra") from error
        self._driver.init()
        if self._driver.Device.count() <= index:
            raise CudaUnavailable(f"no CUDA device {index} (found {self._driver.Device.count()})")
        self.index = index
        self._context = self._driver.Device(index).retain_primary_context()
        self._local = threading.local()

    def _thread_state(self) -> tuple[CudaPreprocessor, Any]:
        state = getattr(self._local, "state", None)
        if state is None:
            state = (CudaPreprocessor(), None)
            self._local.state = state
        return state

    def _staged(self, stored: np.ndarray) -> np.ndarray:
        """``stored`` copied into this thread's page-locked buffer (grown as needed)."""
        preprocessor, pinned = self._thread_state()
        if pinned is None or pinned.nbytes < stored.nbytes:
            pinned = self._driver.pagelocked_empty(stored.nbytes, np.uint8)
            self._local.state = (preprocessor, pinned)
        copied = getattr(self._local, "copied", None)
        if copied is not None:
            copied.synchronize()  # the previous upload from this buffer has left it
        view = pinned[:stored.nbytes].view(stored.dtype).reshape(stored.shape)
        np.copyto(view, stored)
        return view

    def run(self, stored: np.ndarray, plan: SlicePlan) -> Any:
        """The network input for ``stored`` (S, H, W) as a torch tensor on ``cuda:<index>``."""
        self._context.push()
        try:
            preprocessor, _ = self._thread_state()
            output = preprocessor.run_slice_plan(self._staged(np.ascontiguousarray(stored)), plan,
                                                 device=f"cuda:{self.index}")
            copied = getattr(self._local, "copied", None) or self._driver.Event()
            copied.record()
            self._local.copied = copied
            return output
        finally:
            self._context.pop()
