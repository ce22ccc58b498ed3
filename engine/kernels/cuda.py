"""The CUDA preprocessing path: load the fused kernels from a cubin with pycuda and launch them.

The kernels (``preprocess.cu``) take raw stored values and write the model input
directly: rescale, resample (bilinear per slice -> NCHW, or trilinear -> NCDHW,
``align_corners=False``), window, normalise and bottom/right padding in one pass,
fp32 or fp16. This module imports without pycuda; :class:`CudaPreprocessor` imports
``pycuda.driver`` when it is constructed and raises :class:`CudaUnavailable` if it cannot.

The caller owns the CUDA context (``import pycuda.autoinit``, or a context it pushed)
and the output buffer; the preprocessor owns a device scratch buffer for the stored values.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from engine.kernels.build import build_cubin
from engine.kernels.plan import Intensity, SlicePlan

INPUT_CODES = {np.dtype(np.uint8): "u8", np.dtype(np.int16): "i16", np.dtype(np.uint16): "u16"}
OUTPUT_CODES = {np.dtype(np.float32): "f32", np.dtype(np.float16): "f16"}
# struct-module codes of the kernel parameters, as pycuda's Function.prepare takes them.
SIGNATURE_2D = "PP" + "i" * 7 + "f" * 7
SIGNATURE_3D = "PP" + "i" * 9 + "f" * 7
DEFAULT_BLOCK = 256
BLOCKS_PER_SM = 8


class CudaUnavailable(RuntimeError):
    """pycuda is not installed or no CUDA device/context can be used."""


def kernel_name(ndim: int, stored: np.dtype, out: np.dtype) -> str:
    """The entry point for ``ndim`` (2: per-slice bilinear, 3: trilinear) and the two dtypes."""
    if ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 or 3, got {ndim}")
    stored, out = np.dtype(stored), np.dtype(out)
    if stored not in INPUT_CODES:
        raise ValueError(f"stored dtype {stored} not supported; use one of {sorted(map(str, INPUT_CODES))}")
    if out not in OUTPUT_CODES:
        raise ValueError(f"output dtype {out} not supported; use one of {sorted(map(str, OUTPUT_CODES))}")
    return f"ss_preprocess{ndim}d_{INPUT_CODES[stored]}_{OUTPUT_CODES[out]}"


def padded_shape(size: tuple[int, ...], multiple: int) -> tuple[int, ...]:
    """``size`` rounded up to a multiple of ``multiple`` on every axis."""
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    return tuple(int(n) + (-int(n)) % multiple for n in size)


def device_pointer(buffer: Any) -> int:
    """The device address of ``buffer``: an int, a torch CUDA tensor, a pycuda GPUArray or DeviceAllocation."""
    if isinstance(buffer, int):
        return buffer
    if hasattr(buffer, "data_ptr"):
        return int(buffer.data_ptr())
    if hasattr(buffer, "gpudata"):
        return int(buffer.gpudata)
    return int(buffer)


def _import_driver() -> ModuleType:
    try:
        return importlib.import_module("pycuda.driver")
    except ImportError as error:
        raise CudaUnavailable(f"pycuda is not importable ({error}); install the [gpu] extra") from error


class CudaPreprocessor:
    """Launches the fused preprocessing kernels of one cubin in the current CUDA context.

    Its scratch buffer is reused by every call, so use one preprocessor per stream.
    """

    def __init__(self, cubin: Path | None = None, *, block: int = DEFAULT_BLOCK) -> None:
        """Load ``cubin`` (default: build one for the current device's architecture)."""
        self._driver = _import_driver()
        device = self._current_device()
        if cubin is None:
            major, minor = device.compute_capability()
            cubin = build_cubin(f"sm_{major}{minor}").path
        self._module = self._driver.module_from_file(str(cubin))
        self._functions: dict[str, Any] = {}
        self._block = int(block)
        sm_count = device.get_attribute(self._driver.device_attribute.MULTIPROCESSOR_COUNT)
        self._max_blocks = max(1, int(sm_count) * BLOCKS_PER_SM)
        self._scratch: Any = None
        self._scratch_bytes = 0

    def _current_device(self) -> Any:
        try:
            return self._driver.Context.get_device()
        except self._driver.Error as error:
            raise CudaUnavailable(f"no current CUDA context ({error}); import pycuda.autoinit or push one") from error

    def _function(self, name: str, signature: str) -> Any:
        """The prepared kernel ``name`` (looked up once)."""
        if name not in self._functions:
            function = self._module.get_function(name)
            function.prepare(signature)
            self._functions[name] = function
        return self._functions[name]

    def _grid(self, total: int) -> tuple[int, int]:
        return (max(1, min(-(-total // self._block), self._max_blocks)), 1)

    def upload(self, stored: np.ndarray, stream: Any = None) -> int:
        """Copy ``stored`` into the scratch buffer (grown as needed) on ``stream``; return its address.

        Pass page-locked memory for the copy to overlap with host work; pageable
        arrays are copied synchronously by the driver.
        """
        stored = np.ascontiguousarray(stored)
        if stored.nbytes > self._scratch_bytes:
            self._scratch = self._driver.mem_alloc(stored.nbytes)
            self._scratch_bytes = stored.nbytes
        self._driver.memcpy_htod_async(self._scratch, stored, stream)
        return int(self._scratch)

    def slices(self, stored: np.ndarray, dst: Any, size: tuple[int, int], intensity: Intensity, *,
               multiple: int = 1, out_dtype: np.dtype = np.dtype(np.float32), stream: Any = None) -> tuple[int, ...]:
        """Stored (S, H, W) values to (S, 1, H', W') in ``dst``; (H', W') is ``size`` padded to ``multiple``.

        ``dst`` must hold the returned shape in ``out_dtype``. Launches on ``stream``
        and returns without waiting.
        """
        if stored.ndim != 3:
            raise ValueError(f"expected stored (S, H, W), got shape {stored.shape}")
        pad_h, pad_w = padded_shape(size, multiple)
        shape = (int(stored.shape[0]), 1, pad_h, pad_w)
        function = self._function(kernel_name(2, stored.dtype, out_dtype), SIGNATURE_2D)
        src = self.upload(stored, stream)
        dims = (*stored.shape, int(size[0]), int(size[1]), pad_h, pad_w)
        total = int(np.prod(shape))
        function.prepared_async_call(self._grid(total), (self._block, 1, 1), stream, src, device_pointer(dst),
                                     *map(int, dims), *intensity.kernel_args())
        return shape

    def volume(self, stored: np.ndarray, dst: Any, size: tuple[int, int, int], intensity: Intensity, *,
               multiple: int = 1, out_dtype: np.dtype = np.dtype(np.float32), stream: Any = None) -> tuple[int, ...]:
        """Stored (D, H, W) values to (1, 1, D', H', W') in ``dst``, trilinear to ``size`` padded to ``multiple``.

        ``dst`` must hold the returned shape in ``out_dtype``. Launches on ``stream``
        and returns without waiting.
        """
        if stored.ndim != 3:
            raise ValueError(f"expected stored (D, H, W), got shape {stored.shape}")
        padded = padded_shape(size, multiple)
        shape = (1, 1, *padded)
        function = self._function(kernel_name(3, stored.dtype, out_dtype), SIGNATURE_3D)
        src = self.upload(stored, stream)
        dims = (*stored.shape, *map(int, size), *padded)
        total = int(np.prod(shape))
        function.prepared_async_call(self._grid(total), (self._block, 1, 1), stream, src, device_pointer(dst),
                                     *map(int, dims), *intensity.kernel_args())
        return shape

    def run_slice_plan(self, stored: np.ndarray, plan: SlicePlan, device: Any = "cuda") -> Any:
        """Stored (S, H, W) values to ``plan``'s network input as a torch CUDA tensor (S, C, H', W').

        One kernel launch writes the windowed, resampled, padded slices straight
        into a torch tensor on the device; 2.5D neighbours are then gathered on the
        device. Launched on the default stream, which torch's default stream
        follows, so the network's first kernel runs after this one.
        """
        import torch

        slices = int(stored.shape[0])
        out_dtype = np.dtype(plan.dtype)
        planes = torch.empty((slices, 1, *plan.padded_size()), device=device,
                             dtype=torch.float16 if out_dtype == np.dtype(np.float16) else torch.float32)
        self.slices(stored, planes, plan.size, plan.intensity, multiple=plan.multiple, out_dtype=out_dtype)
        if not plan.context_radius:
            return planes
        from engine.kernels.cpu import context_index

        return planes[:, 0][context_index(slices, plan.context_radius, plan.context_step).to(planes.device)]
