"""The CUDA kernels' per-element math (preprocess_math.cuh), host-compiled with g++, against the torch path.

The harness runs the header's element functions, the same ones the kernels run, over
every output element. Its output must match the torch reference (rescale in fp32,
``F.interpolate(..., align_corners=False)`` without antialiasing,
:func:`engine.kernels.cpu.window_normalise`, zero padding) to within
``rtol=1e-5, atol=1e-6`` on values in [0, 1] (the float32 rounding of a few blends).
"""

from __future__ import annotations

import ctypes
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.kernels.build import build_harness
from engine.kernels.cpu import window_normalise
from engine.kernels.cuda import INPUT_CODES, Intensity, padded_shape
from plugins.nodule_seg.handler import LUNG_WINDOW_HU, preprocess_volume
from plugins.nodule_seg.network import DEPTH_MULTIPLE

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not installed; the host harness needs it")

RTOL = 1e-5
ATOL = 1e-6
_INTS_2D = [ctypes.c_int] * 7
_INTS_3D = [ctypes.c_int] * 9
_FLOATS = [ctypes.c_float] * 7


class HostKernels:
    """ctypes binding of the harness library: the kernels' math run on the host into fp32 arrays."""

    def __init__(self, library: Path) -> None:
        self._lib = ctypes.CDLL(str(library))
        for code in INPUT_CODES.values():
            for ndim, ints in ((2, _INTS_2D), (3, _INTS_3D)):
                function = getattr(self._lib, f"ss_host_preprocess{ndim}d_{code}")
                function.argtypes = [ctypes.c_void_p, ctypes.c_void_p, *ints, *_FLOATS]
                function.restype = None

    def slices(self, stored: np.ndarray, size: tuple[int, int], intensity: Intensity,
               multiple: int = 1) -> np.ndarray:
        """Stored (S, H, W) to (S, 1, H', W') fp32, as ``ss_preprocess2d_*`` computes it."""
        stored = np.ascontiguousarray(stored)
        padded = padded_shape(size, multiple)
        out = np.full((stored.shape[0], 1, *padded), np.nan, dtype=np.float32)
        function = getattr(self._lib, f"ss_host_preprocess2d_{INPUT_CODES[stored.dtype]}")
        function(stored.ctypes.data, out.ctypes.data, *stored.shape, *size, *padded, *intensity.kernel_args())
        return out

    def volume(self, stored: np.ndarray, size: tuple[int, int, int], intensity: Intensity,
               multiple: int = 1) -> np.ndarray:
        """Stored (D, H, W) to (1, 1, D', H', W') fp32, as ``ss_preprocess3d_*`` computes it."""
        stored = np.ascontiguousarray(stored)
        padded = padded_shape(size, multiple)
        out = np.full((1, 1, *padded), np.nan, dtype=np.float32)
        function = getattr(self._lib, f"ss_host_preprocess3d_{INPUT_CODES[stored.dtype]}")
        function(stored.ctypes.data, out.ctypes.data, *stored.shape, *size, *padded, *intensity.kernel_args())
        return out


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> HostKernels:
    return HostKernels(build_harness(cache_dir=tmp_path_factory.mktemp("kernel-cache")))


def random_stored(dtype: np.dtype, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Stored values spread over the whole range of ``dtype``."""
    info = np.iinfo(dtype)
    return np.random.default_rng(seed).integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype)


def stored_around_window(dtype: np.dtype, shape: tuple[int, ...], p: Intensity, seed: int) -> np.ndarray:
    """Stored values whose physical values cover the window plus a quarter of its width on each side.

    Most outputs then fall inside the window, where an error in the blend shows, and
    some are clipped on each side.
    """
    margin = 0.25 * (p.high - p.low)
    bounds = sorted(((p.low - margin - p.intercept) / p.slope, (p.high + margin - p.intercept) / p.slope))
    info = np.iinfo(dtype)
    lo, hi = max(info.min, int(np.floor(bounds[0]))), min(info.max, int(np.ceil(bounds[1])))
    return np.random.default_rng(seed).integers(lo, hi, size=shape, endpoint=True, dtype=dtype)


def reference(stored: np.ndarray, size: tuple[int, ...], p: Intensity, multiple: int = 1) -> torch.Tensor:
    """The torch path: rescale, interpolate (align_corners=False), clip, normalise, pad with ``p.pad_value``."""
    hu = torch.from_numpy(stored.astype(np.float32)) * p.slope + p.intercept
    batch = hu[:, None] if len(size) == 2 else hu[None, None]
    mode = "bilinear" if len(size) == 2 else "trilinear"
    resampled = F.interpolate(batch, size=size, mode=mode, align_corners=False)
    if p.offset == p.low and np.isclose(p.scale, 1.0 / (p.high - p.low)):
        normalised = window_normalise(resampled, p.low, p.high)
    else:
        normalised = (resampled.clamp(p.low, p.high) - p.offset) * p.scale
    pads: list[int] = []
    for n, target in zip(reversed(size), reversed(padded_shape(size, multiple))):
        pads += [0, target - n]
    return F.pad(normalised, pads, value=p.pad_value)


def assert_matches(actual: np.ndarray, expected: torch.Tensor) -> None:
    assert actual.shape == tuple(expected.shape)
    assert np.isfinite(actual).all(), "some output elements were never written"
    np.testing.assert_allclose(actual, expected.numpy(), rtol=RTOL, atol=ATOL)


CASES_2D = [
    # dtype, slope, intercept, window, (S, H, W), out size
    (np.uint16, 1.0, -1024.0, (-1000.0, 400.0), (3, 37, 29), (64, 51)),   # CT stored as uint16, upsampled
    (np.uint16, 0.5, -1024.0, (-1000.0, 400.0), (2, 40, 48), (23, 31)),   # downsampled, non-integer ratio
    (np.int16, 1.0, 0.0, (-160.0, 240.0), (2, 33, 35), (33, 70)),         # one axis kept, the other doubled
    (np.int16, 2.5, -3.0, (-30000.0, 30000.0), (1, 16, 16), (5, 9)),
    (np.uint8, 4.0, -500.0, (-200.0, 300.0), (4, 12, 20), (30, 7)),
]


@pytest.mark.parametrize("dtype, slope, intercept, window, shape, size", CASES_2D)
def test_bilinear_slices_match_torch(host: HostKernels, dtype: type, slope: float, intercept: float,
                                     window: tuple[float, float], shape: tuple[int, int, int],
                                     size: tuple[int, int]) -> None:
    p = Intensity.window(*window, slope=slope, intercept=intercept)
    stored = stored_around_window(np.dtype(dtype), shape, p, seed=sum(shape))
    out = host.slices(stored, size, p)
    assert_matches(out, reference(stored, size, p))
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert float(((out > 0.0) & (out < 1.0)).mean()) > 0.5


def test_same_size_is_rescale_and_window_exactly(host: HostKernels) -> None:
    stored = random_stored(np.dtype(np.int16), (2, 9, 13), seed=5)
    p = Intensity.window(-1000.0, 400.0, slope=1.0, intercept=-1024.0)
    expected = window_normalise(stored.astype(np.float32) - 1024.0, -1000.0, 400.0)[:, None]
    np.testing.assert_array_equal(host.slices(stored, (9, 13), p), expected.numpy())


def test_padding_takes_pad_value_and_zscore(host: HostKernels) -> None:
    stored = random_stored(np.dtype(np.uint16), (2, 21, 18), seed=11)
    p = Intensity.zscore(-1000.0, 1000.0, mean=-200.0, std=350.0, intercept=-32768.0, pad_value=-7.5)
    out = host.slices(stored, (25, 19), p, multiple=16)
    assert out.shape == (2, 1, 32, 32)
    assert (out[..., 25:, :] == -7.5).all() and (out[..., :, 19:] == -7.5).all()
    assert_matches(out, reference(stored, (25, 19), p, multiple=16))


def test_matches_nodule_handler_preprocess(host: HostKernels) -> None:
    stored = random_stored(np.dtype(np.uint16), (3, 40, 36), seed=3)
    hu = stored.astype(np.float32) - 1024.0
    p = Intensity.window(*LUNG_WINDOW_HU, intercept=-1024.0)
    out = host.slices(stored, (40, 36), p, multiple=DEPTH_MULTIPLE)
    assert_matches(out, preprocess_volume(hu))


@pytest.mark.parametrize("dtype, shape, size", [
    (np.uint16, (5, 12, 10), (9, 20, 17)),
    (np.int16, (8, 16, 14), (3, 11, 14)),
    (np.uint8, (4, 6, 6), (4, 13, 5)),
])
def test_trilinear_volume_matches_torch(host: HostKernels, dtype: type, shape: tuple[int, int, int],
                                        size: tuple[int, int, int]) -> None:
    p = Intensity.window(-500.0, 500.0, slope=0.75, intercept=-100.0)
    stored = stored_around_window(np.dtype(dtype), shape, p, seed=shape[0])
    out = host.volume(stored, size, p, multiple=4)
    interior = out[0, 0, :size[0], :size[1], :size[2]]
    assert float(((interior > 0.0) & (interior < 1.0)).mean()) > 0.5
    assert_matches(out, reference(stored, size, p, multiple=4))


def test_window_rejects_empty_range() -> None:
    with pytest.raises(ValueError, match="must exceed"):
        Intensity.window(400.0, 400.0)
    with pytest.raises(ValueError, match="std"):
        Intensity.zscore(0.0, 1.0, mean=0.0, std=0.0)
