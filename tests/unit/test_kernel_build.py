"""Building the CUDA preprocessing kernels: nvcc cubins, the ptxas resource report, the build cache, and the GPU run."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.kernels import build
from engine.kernels.build import (CUDA_SOURCE, DEFAULT_ARCHES, MATH_HEADER, KernelBuildError, KernelResources,
                                  build_cubin, parse_ptxas_report)
from engine.kernels.cpu import window_normalise
from engine.kernels.cuda import INPUT_CODES, OUTPUT_CODES, Intensity, kernel_name

needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc (CUDA toolkit) is not installed")
ALL_KERNELS = sorted(kernel_name(ndim, stored, out)
                     for ndim in (2, 3) for stored in INPUT_CODES for out in OUTPUT_CODES)

PTXAS_SAMPLE = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'ss_preprocess3d_u16_f16' for 'sm_80'
ptxas info    : Function properties for ss_preprocess3d_u16_f16
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 32 registers, used 0 barriers, 432 bytes cmem[0]
ptxas info    : Compile time = 58.213 ms
ptxas info    : Compiling entry function 'ss_preprocess2d_u8_f32' for 'sm_90'
ptxas info    : Function properties for ss_preprocess2d_u8_f32
    16 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 255 registers, used 0 barriers
"""


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cubin-cache")


def test_parse_ptxas_report_attributes_lines_to_their_kernel() -> None:
    assert parse_ptxas_report(PTXAS_SAMPLE) == {
        "ss_preprocess2d_u8_f32": KernelResources(registers=255, stack_frame_bytes=16, spill_store_bytes=8,
                                                  spill_load_bytes=4),
        "ss_preprocess3d_u16_f16": KernelResources(registers=32, stack_frame_bytes=0, spill_store_bytes=0,
                                                   spill_load_bytes=0),
    }


def test_missing_nvcc_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SCANSTREAM_NVCC", "nvcc-that-does-not-exist")
    with pytest.raises(KernelBuildError, match="nvcc not found.*SCANSTREAM_NVCC"):
        build_cubin("sm_80", cache_dir=tmp_path)


def test_arch_must_be_an_sm_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="sm_80"):
        build_cubin("compute_80", cache_dir=tmp_path)


@needs_nvcc
@pytest.mark.parametrize("arch", DEFAULT_ARCHES)
def test_cubin_compiles_without_spills_and_is_cached(arch: str, cache_dir: Path) -> None:
    first = build_cubin(arch, cache_dir=cache_dir)
    assert first.path.read_bytes()[:4] == b"\x7fELF"
    assert sorted(first.resources) == ALL_KERNELS
    for name, resources in first.resources.items():
        assert 0 < resources.registers <= 255, name
        assert resources.spill_store_bytes == resources.spill_load_bytes == 0, f"{name} spills: {resources}"
    again = build_cubin(arch, cache_dir=cache_dir)
    assert again.cached and again.path == first.path and again.resources == first.resources


@needs_nvcc
def test_cache_key_follows_source_and_header(tmp_path: Path) -> None:
    source, header = tmp_path / CUDA_SOURCE.name, tmp_path / MATH_HEADER.name
    shutil.copy(CUDA_SOURCE, source)
    shutil.copy(MATH_HEADER, header)
    cache = tmp_path / "cache"
    original = build_cubin("sm_80", cache_dir=cache, source=source, header=header)
    source.write_text(source.read_text() + "\n// edited\n")
    edited_source = build_cubin("sm_80", cache_dir=cache, source=source, header=header)
    header.write_text(header.read_text() + "\n// edited\n")
    edited_header = build_cubin("sm_80", cache_dir=cache, source=source, header=header)
    assert len({original.key, edited_source.key, edited_header.key}) == 3
    assert not edited_source.cached and not edited_header.cached
    assert build_cubin("sm_90", cache_dir=cache, source=source, header=header).key != edited_header.key


@needs_nvcc
def test_compile_error_shows_nvcc_output(tmp_path: Path) -> None:
    broken = tmp_path / "broken.cu"
    broken.write_text('extern "C" __global__ void k(float* x) { x[0] = undefined_name; }\n')
    with pytest.raises(KernelBuildError, match="undefined_name"):
        build_cubin("sm_80", cache_dir=tmp_path, source=broken)


def test_harness_build_reports_missing_compiler(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SCANSTREAM_CXX", "g++-that-does-not-exist")
    with pytest.raises(KernelBuildError, match="g\\+\\+ not found"):
        build.build_harness(cache_dir=tmp_path)


@pytest.fixture
def cuda_context() -> Iterator[Any]:
    driver = pytest.importorskip("pycuda.driver", reason="pycuda is not installed (the [gpu] extra)")
    driver.init()
    if driver.Device.count() == 0:
        pytest.skip("no CUDA device")
    context = driver.Device(0).make_context()
    try:
        yield driver
    finally:
        context.pop()


def _torch_reference(stored: np.ndarray, size: tuple[int, ...], p: Intensity) -> torch.Tensor:
    hu = torch.from_numpy(stored.astype(np.float32)) * p.slope + p.intercept
    batch = hu[:, None] if len(size) == 2 else hu[None, None]
    mode = "bilinear" if len(size) == 2 else "trilinear"
    return window_normalise(F.interpolate(batch, size=size, mode=mode, align_corners=False), p.low, p.high)


@pytest.mark.gpu
@pytest.mark.parametrize("out_dtype, atol", [(np.float32, 1e-5), (np.float16, 1e-3)])
def test_cuda_kernels_match_cpu_reference(cuda_context: Any, cache_dir: Path, out_dtype: type,
                                          atol: float) -> None:
    from pycuda import gpuarray

    from engine.kernels.cuda import CudaPreprocessor

    driver = cuda_context
    major, minor = driver.Context.get_device().compute_capability()
    preprocessor = CudaPreprocessor(build_cubin(f"sm_{major}{minor}", cache_dir=cache_dir).path)
    rng = np.random.default_rng(7)
    p = Intensity.window(-1000.0, 400.0, intercept=-1024.0)
    stream = driver.Stream()

    slices = rng.integers(0, 1800, size=(4, 70, 61), dtype=np.uint16)
    out2d = gpuarray.empty((4, 1, 96, 112), dtype=out_dtype)
    shape = preprocessor.slices(slices, out2d, (90, 100), p, multiple=16, out_dtype=np.dtype(out_dtype), stream=stream)
    volume = rng.integers(0, 1800, size=(9, 20, 22), dtype=np.uint16)
    out3d = gpuarray.empty((1, 1, 16, 32, 16), dtype=out_dtype)
    preprocessor.volume(volume, out3d, (13, 31, 15), p, multiple=16, out_dtype=np.dtype(out_dtype), stream=stream)
    stream.synchronize()

    assert shape == out2d.shape
    got2d = out2d.get().astype(np.float32)
    np.testing.assert_allclose(got2d[..., :90, :100], _torch_reference(slices, (90, 100), p).numpy(), atol=atol)
    assert (got2d[..., 90:, :] == 0).all() and (got2d[..., 100:] == 0).all()
    got3d = out3d.get().astype(np.float32)
    np.testing.assert_allclose(got3d[..., :13, :31, :15], _torch_reference(volume, (13, 31, 15), p).numpy(),
                               atol=atol)
    assert (got3d[..., 13:, :, :] == 0).all() and (got3d[..., 31:, :] == 0).all()
