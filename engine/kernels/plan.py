"""What preprocessing a model wants, stated as data so the engine can run it on the CPU or a GPU.

A handler that returns a :class:`SlicePlan` from ``plan(volume)`` lets the worker
choose the path: the fused vectorised torch code (:func:`engine.kernels.cpu.run_slice_plan`)
on a CPU worker, or one fused CUDA kernel launch writing straight into the model's
input buffer (:meth:`engine.kernels.cuda.CudaPreprocessor.run_slice_plan`) on a GPU worker.
Both compute ``(clamp(resample(stored * slope + intercept), low, high) - offset) * scale``,
padded bottom/right with ``pad_value``; the CPU test suite checks they agree.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np


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


    def with_rescale(self, slope: float, intercept: float) -> "Intensity":
        """The same window with a series' rescale slope and intercept."""
        return replace(self, slope=float(slope), intercept=float(intercept))

    def folded(self) -> tuple[float, float, float, float]:
        """(a, b, lo, hi) with output = clamp(stored * a + b, lo, hi) (one multiply-add and a clamp).

        Exact algebra because every step is affine except the clamp and ``scale`` > 0
        moves the clamp bounds monotonically; in float32 it differs from the
        step-by-step form by rounding only.
        """
        if not self.scale > 0:
            raise ValueError(f"scale must be positive to fold the window, got {self.scale}")
        a = self.slope * self.scale
        b = (self.intercept - self.offset) * self.scale
        return a, b, (self.low - self.offset) * self.scale, (self.high - self.offset) * self.scale


@dataclass(frozen=True)
class SlicePlan:
    """Per-slice preprocessing of a (S, H, W) series into (S, C, H', W') network input.

    ``size``: in-plane size after bilinear resampling (``align_corners=False``);
    ``multiple``: pad H' and W' up to a multiple of it; ``context_radius``/``context_step``:
    each slice gets ``2 * radius + 1`` channels, the slices ``step`` apart around it
    (2.5D; radius 0 is plain 2D); ``dtype``: float32 or float16 output.
    """

    size: tuple[int, int]
    intensity: Intensity
    multiple: int = 1
    context_radius: int = 0
    context_step: int = 1
    dtype: np.dtype = np.dtype(np.float32)

    def __post_init__(self) -> None:
        if len(self.size) != 2 or min(self.size) < 1:
            raise ValueError(f"size must be two positive ints, got {self.size}")
        if self.multiple < 1 or self.context_radius < 0 or self.context_step < 1:
            raise ValueError("multiple and context_step must be >= 1, context_radius >= 0")
        if np.dtype(self.dtype) not in (np.dtype(np.float32), np.dtype(np.float16)):
            raise ValueError(f"dtype must be float32 or float16, got {self.dtype}")

    @property
    def channels(self) -> int:
        """Channels per slice: the slice and its neighbours."""
        return 2 * self.context_radius + 1

    def padded_size(self) -> tuple[int, int]:
        """(H', W') after padding to ``multiple``."""
        return tuple(int(n) + (-int(n)) % self.multiple for n in self.size)  # type: ignore[return-value]

    def output_shape(self, slices: int) -> tuple[int, int, int, int]:
        """Shape of the network input for ``slices`` slices."""
        return (slices, self.channels, *self.padded_size())
