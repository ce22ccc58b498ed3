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
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from engine.kernels.build import build_cubin

INPUT_CODES = {np.dtype(np.uint8): "u8", np.dtype(np.int16): "i16", np.dtype(np.uint16): "u16"}
OUTPUT_CODES = {np.dtype(np.float32): "f32", np.dtype(np.float16): "f16"}
# struct-module codes of the kernel parameters, as pycuda's Function.prepare takes them.
SIGNATURE_2D = "PP" + "i" * 7 + "f" * 7
SIGNATURE_3D = "PP" + "i" * 9 + "f" * 7
DEFAULT_BLOCK = 256
BLOCKS_PER_SM = 8


class CudaUnavailable(RuntimeError):
    """pycuda is not installed or no CUDA device/context can be used."""


@dataclass(frozen=True)
class Intensity:
    """Rescale, window and normalise parameters: ``(clamp(v * slope + intercept, low, high) - offset) * scale``."""

    low: float
    high: float
    offset: float
    scale: float
    slope: float = 1.0
    intercept: float = 0.0
    pad_value: float = 0.0

    @classmethod
    def window(cls, low: float, high: float, slope: float = 1.0, intercept: float = 0.0,
               pad_value: float = 0.0) -> "Intensity":
        """Window [low, high] mapped onto [0, 1], as :func:`engine.kernels.cpu.window_normalise`."""
        if not high > low:
            raise ValueError(f"window high ({high}) must exceed low ({low})")
        return cls(low, high, low, 1.0 / (high - low), slope, intercept, pad_value)

    @classmethod
    def zscore(cls, low: float, high: float, mean: float, std: float, slope: float = 1.0,
               intercept: float = 0.0, pad_value: float = 0.0) -> "Intensity":
        """Clip to [low, high], then ``(x - mean) / std``."""
        if not high > low:
            raise ValueError(f"window high ({high}) must exceed low ({low})")
        if not std > 0:
            raise ValueError(f"std must be positive, got {std}")
        return cls(low, high, mean, 1.0 / std, slope, intercept, pad_value)

    def kernel_args(self) -> tuple[float, ...]:
        """The trailing float parameters of every kernel, in order."""
        return (self.slope, self.intercept, self.low, self.high, self.offset, self.scale, self.pad_value)


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
