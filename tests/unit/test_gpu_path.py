"""The GPU worker's path: kernel preprocessing into torch tensors, torch on CUDA in fp16, a whole job.

Marked ``gpu``; each skips with the reason on a machine without CUDA, torch
CUDA or pycuda. The CPU suite covers the same math (test_kernel_math.py,
test_slice_plan.py) on every run.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.kernels.cpu import run_slice_plan
from engine.kernels.plan import Intensity, SlicePlan

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def gpu_preprocessor():
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA device here")
    pytest.importorskip("pycuda.driver", reason="pycuda is not installed (the [gpu] extra)")
    from engine.worker.gpu_preprocess import GpuSlicePreprocessor

    return GpuSlicePreprocessor(0)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16])
@pytest.mark.parametrize("out_dtype, atol", [(np.float32, 1e-5), (np.float16, 1e-3)])
def test_kernel_plan_matches_the_cpu_path(gpu_preprocessor, dtype, out_dtype, atol) -> None:
    rng = np.random.default_rng(2)
    stored = rng.integers(0, 250, size=(11, 70, 61)).astype(dtype)
    plan = SlicePlan((90, 100), Intensity.window(-50.0, 150.0).with_rescale(1.0, -20.0), multiple=16,
                     context_radius=1, context_step=2, dtype=np.dtype(out_dtype))
    got = gpu_preprocessor.run(stored, plan)
    assert got.is_cuda and tuple(got.shape) == plan.output_shape(11)
    expected = run_slice_plan(stored, SlicePlan(plan.size, plan.intensity, plan.multiple, 1, 2))
    np.testing.assert_allclose(got.float().cpu().numpy(), expected.numpy(), atol=atol)


def test_torch_cuda_fp16_agrees_with_cpu_fp32_for_the_nodule_model(tmp_path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA device here")
    from engine.runtime.artifacts import ModelArtifacts
    from engine.runtime.torch_backend import TorchBackend
    from tests.unit.test_onnx_backend import builtin_specs

    artifacts = ModelArtifacts(builtin_specs()[0], tmp_path)
    cpu, gpu = TorchBackend("cpu"), TorchBackend("cuda", precision="fp16")
    cpu.initialize(artifacts)
    gpu.initialize(artifacts)
    inputs = artifacts.example_input(4)
    expected = torch.sigmoid(cpu._run(inputs)[0])
    got = torch.sigmoid(gpu._run(inputs)[0].cpu())  # host input: staged through pinned memory
    assert float((got - expected).abs().max()) < 2e-2
    on_device = torch.sigmoid(gpu._run(inputs.cuda())[0].cpu())  # device input used in place
    assert float((on_device - got).abs().max()) < 1e-3


def run_nodule_job(tmp_path, settings):
    """One nodule-seg job over a written phantom series through JobRunner; returns the outcome."""
    from dataclasses import asdict

    from pydicom.uid import CTImageStorage, generate_uid

    from engine.api import SeriesInfo
    from engine.broker.worker_link import JobRequest
    from engine.config import EngineConfig
    from engine.synthetic.ct_phantom import generate_ct_phantom, write_ct_series
    from engine.plugins import load_plugins
    from engine.worker.runner import JobRunner

    files = write_ct_series(generate_ct_phantom(seed=3, slices=24, size=128), tmp_path / "study")
    payload = [memoryview(path.read_bytes()) for path in sorted(files)]
    series = SeriesInfo(generate_uid(), generate_uid(), "CT", CTImageStorage, instance_count=len(payload))
    job = {"model": "nodule-seg", "model_version": "1.0.0", "series": asdict(series)}
    runner = JobRunner(load_plugins(EngineConfig()), settings)
    try:
        return runner.handle(JobRequest("job", 1, job, payload))
    finally:
        runner.close()


def test_a_whole_job_on_a_cuda_worker(tmp_path, gpu_preprocessor) -> None:
    from engine.broker.worker_link import JobDone
    from engine.config import WorkerConfig

    outcome = run_nodule_job(tmp_path, WorkerConfig(device="cuda", backend="torch", model_cache=str(tmp_path / "c")))
    assert isinstance(outcome, JobDone), outcome
    assert outcome.result["backend"] == "torch:cuda:float16" and outcome.result["findings"]
