"""GPU measurements for one H200 session: kernel GB/s vs device copy, torch CUDA fp16 vs fp32, one job's latency.

Run by ``benchmarks/gpu/run.sh``; prints a table per part and writes
``$OUT/gpu_checks.json`` (or ``benchmarks/results/``). TensorRT is not installed
on the lent GPU machines, so no TensorRT figure is measured or claimed here.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.backends import builtin_registry
from benchmarks.common import machine, print_table
from engine.kernels.cuda import SIGNATURE_2D, kernel_name
from engine.kernels.plan import Intensity, SlicePlan
from engine.runtime.artifacts import ModelArtifacts
from engine.runtime.selection import make_backend


def cuda_seconds(run, repeats: int = 10) -> float:
    """Mean seconds per call measured with CUDA events after a warm-up."""
    run()
    torch.cuda.synchronize()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        run()
    stop.record()
    torch.cuda.synchronize()
    return start.elapsed_time(stop) / 1000.0 / repeats


def kernel_bandwidth() -> dict:
    """Fused preprocessing kernel GB/s (raw bytes read + output bytes written) vs a device-to-device copy."""
    try:
        from engine.worker.gpu_preprocess import GpuSlicePreprocessor
    except ImportError as error:
        return {"skipped": f"pycuda missing: {error}"}
    stored = np.random.default_rng(0).integers(0, 2000, size=(200, 512, 512)).astype(np.int16)
    results = {}
    preprocessor = GpuSlicePreprocessor(0)
    for dtype in (np.float32, np.float16):
        plan = SlicePlan((512, 512), Intensity.window(-1000.0, 400.0).with_rescale(1.0, -1024.0),
                         dtype=np.dtype(dtype))
        out_bytes = stored.size * np.dtype(dtype).itemsize
        pre, _ = preprocessor._thread_state()
        preprocessor._context.push()
        try:
            target = torch.empty(plan.output_shape(200), device="cuda",
                                 dtype=torch.float16 if dtype == np.float16 else torch.float32)
            with_upload = cuda_seconds(lambda: pre.slices(stored, target, plan.size, plan.intensity,
                                                          out_dtype=np.dtype(dtype)), repeats=3)
            # Kernel only: launch again on the values already uploaded to the scratch buffer.
            function = pre._function(kernel_name(2, stored.dtype, dtype), SIGNATURE_2D)
            dims = (*stored.shape, 512, 512, 512, 512)
            total = int(np.prod(plan.output_shape(200)))
            kernel = cuda_seconds(lambda: function.prepared_async_call(
                pre._grid(total), (pre._block, 1, 1), None, int(pre._scratch), target.data_ptr(), *dims,
                *plan.intensity.kernel_args()))
        finally:
            preprocessor._context.pop()
        name = np.dtype(dtype).name
        results[f"kernel_{name}_gb_s"] = (stored.nbytes + out_bytes) / 1e9 / kernel  # bytes read + written
        results[f"kernel_{name}_raw_input_gb_s"] = stored.nbytes / 1e9 / kernel
        results[f"upload_and_kernel_{name}_raw_input_gb_s"] = stored.nbytes / 1e9 / with_upload
    source = torch.empty(200 * 512 * 512 * 4, dtype=torch.uint8, device="cuda")
    target = torch.empty_like(source)
    copy = cuda_seconds(lambda: target.copy_(source))
    results["device_copy_gb_s"] = 2 * source.numel() / 1e9 / copy  # read + write
    results["kernel_float32_vs_copy"] = results["kernel_float32_gb_s"] / results["device_copy_gb_s"]
    return results


def fp16_vs_fp32() -> dict:
    """Images/s of each built-in model on torch CUDA, fp32 and fp16, at its max batch."""
    figures = {}
    with tempfile.TemporaryDirectory() as cache:
        for spec in builtin_registry().all():
            artifacts = ModelArtifacts(spec, Path(cache))
            inputs = artifacts.example_input(spec.max_batch).cuda()
            per_model = {}
            for precision in ("fp32", "fp16"):
                backend = make_backend("torch", "cuda", precision=precision)
                backend.initialize(artifacts)
                per_model[precision] = spec.max_batch / cuda_seconds(lambda: backend._run(inputs))
            per_model["ratio_fp16_over_fp32"] = per_model["fp16"] / per_model["fp32"]
            figures[spec.name] = per_model
    return figures


def one_study_latency() -> dict:
    """Seconds for one 48-slice phantom study through JobRunner on CUDA (decode included), median of 5."""
    from tests.unit.test_gpu_path import run_nodule_job
    from engine.config import WorkerConfig

    timings = []
    with tempfile.TemporaryDirectory() as folder:
        for attempt in range(6):
            start = time.perf_counter()
            outcome = run_nodule_job(Path(folder) / str(attempt),
                                     WorkerConfig(device="cuda", backend="torch", model_cache=folder))
            if attempt:
                timings.append(time.perf_counter() - start)
            stages = outcome.result.get("timings_s", {})
    return {"median_s": float(np.median(timings)), "last_stages_s": stages}


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to measure")
        return 1
    print("TensorRT is not installed on this machine: no TensorRT figures are measured or claimed.")
    result = {"machine": machine(), "gpu": torch.cuda.get_device_name(0), "kernel": kernel_bandwidth(),
              "torch_cuda": fp16_vs_fp32(), "one_study": one_study_latency()}
    print_table(["measure", "value"], [[k, v] for k, v in result["kernel"].items()])
    print_table(["model", "fp32 img/s", "fp16 img/s", "fp16/fp32"],
                [[m, v["fp32"], v["fp16"], v["ratio_fp16_over_fp32"]] for m, v in result["torch_cuda"].items()])
    print(f"one study end to end in the runner: {result['one_study']['median_s']:.3f} s (median)")
    out = Path(os.environ.get("OUT") or "benchmarks/results")
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_checks.json").write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
