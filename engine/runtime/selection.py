"""Which backend runs a model on this worker, and why.

Rules, in order:

1. ``worker.backend`` names one (``torch``, ``onnxruntime``, ``tensorrt``): that one,
   or start-up fails saying why it is unavailable.
2. A model given as an ONNX file: ``tensorrt`` on a CUDA worker that has it, else
   ``onnxruntime``. A model without ``input_shape`` cannot be exported: ``torch``.
3. On a CUDA worker: ``tensorrt`` when TensorRT is importable, else ``torch`` on CUDA.
4. On a CPU worker: ``torch`` and ``onnxruntime`` are both timed on the model's
   example input and the faster one wins. The measurement is kept in the model's
   cache folder keyed by this host's CPU count, thread setting and runtime
   versions, so it is taken once (``scanstream models build`` takes it ahead of time).
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from engine.logs import get_logger
from engine.runtime.artifacts import ModelArtifacts, write_atomically
from engine.runtime.base import Backend
from engine.runtime.errors import BackendError, BackendUnavailable
from engine.runtime.export import ExportError

log = get_logger(__name__)

BACKEND_NAMES = ("torch", "onnxruntime", "tensorrt")
PROBE_BATCH = 4
PROBE_REPEATS = 3


@dataclass(frozen=True)
class BackendChoice:
    """The backend picked for one model, the device, why, and the throughputs measured (items/s), if any."""

    backend: str
    device: str
    reason: str
    measured: dict[str, float] = field(default_factory=dict)


def make_backend(name: str, device: str, *, threads: int = 0, precision: str = "fp32", channels_last: bool = False,
                 compile: bool = False, spin_wait: bool = False) -> Backend:
    """A fresh, uninitialised backend ``name`` for ``device``; :class:`BackendUnavailable` if it cannot run here.

    ``channels_last`` and ``compile`` apply to the torch backend only, ``spin_wait`` to ONNX Runtime only.
    """
    if name == "torch":
        from engine.runtime.torch_backend import TorchBackend

        return TorchBackend(device, threads=threads, precision=precision if device.startswith("cuda") else "fp32",
                            channels_last=channels_last, compile=compile)
    if name == "onnxruntime":
        from engine.runtime.onnx_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(device, threads=threads, spin_wait=spin_wait)
    if name == "tensorrt":
        from engine.runtime.tensorrt_backend import TensorRTBackend

        return TensorRTBackend(precision=precision)
    raise ValueError(f"unknown backend {name!r}; expected one of {', '.join(BACKEND_NAMES)}")


def tensorrt_importable() -> bool:
    """True when the ``tensorrt`` Python package can be imported (checked without importing it)."""
    return importlib.util.find_spec("tensorrt") is not None


def host_key(threads: int) -> str:
    """What a CPU timing depends on: CPU count, thread setting, machine type and runtime versions."""
    try:
        import onnxruntime

        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = "none"
    return (f"cpus{os.cpu_count()}-threads{threads or torch.get_num_threads()}-{platform.machine()}"
            f"-torch{torch.__version__}-ort{ort_version}")


def measure_items_per_second(backend: Backend, artifacts: ModelArtifacts, batch: int = PROBE_BATCH,
                             repeats: int = PROBE_REPEATS) -> float:
    """Best-of-``repeats`` throughput of an initialised ``backend`` on the model's example input, items/s."""
    example = artifacts.example_input(min(batch, artifacts.spec.max_batch))
    backend._run(example)  # warm-up: allocators, lazy initialisation, kernel selection
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        backend._run(example)
        best = min(best, time.perf_counter() - start)
    return int(example.shape[0]) / best


def _probe_path(artifacts: ModelArtifacts, threads: int) -> Path:
    return artifacts.folder() / f"cpu-choice-{host_key(threads)}.json"


def probe_cpu(artifacts: ModelArtifacts, threads: int = 0, *, refresh: bool = False) -> BackendChoice:
    """Time torch and ONNX Runtime on the CPU for this model (or read the kept timing) and pick the faster."""
    path = _probe_path(artifacts, threads)
    if path.exists() and not refresh:
        record = json.loads(path.read_text())
        return BackendChoice(record["backend"], "cpu", record["reason"] + f" (kept in {path.name})",
                             record["measured"])
    measured: dict[str, float] = {}
    problems: list[str] = []
    for name in ("torch", "onnxruntime"):
        try:
            backend = make_backend(name, "cpu", threads=threads)
            backend.initialize(artifacts)
            measured[name] = round(measure_items_per_second(backend, artifacts), 2)
            backend.finalize()
        except (BackendError, ExportError) as error:
            problems.append(f"{name}: {error}")
    if not measured:
        raise BackendUnavailable(f"model {artifacts.spec.name!r}: no CPU backend works: {'; '.join(problems)}")
    best = max(measured, key=measured.__getitem__)
    batch = min(PROBE_BATCH, artifacts.spec.max_batch)
    reason = ("fastest on this CPU: " + ", ".join(f"{n} {v:.1f} items/s" for n, v in measured.items())
              + f" at batch {batch}, measured {time.strftime('%Y-%m-%d')}")
    if problems:
        reason += "; unavailable: " + "; ".join(problems)
    choice = BackendChoice(best, "cpu", reason, measured)
    write_atomically(path, lambda target: target.write_text(json.dumps(asdict(choice), indent=2)))
    return choice


def choose_backend(artifacts: ModelArtifacts, requested: str = "auto", device: str = "cpu",
                   threads: int = 0) -> BackendChoice:
    """Apply the rules in this module's docstring for one model."""
    if requested != "auto":
        if requested not in BACKEND_NAMES:
            raise ValueError(f"worker.backend: expected auto or one of {', '.join(BACKEND_NAMES)}, got {requested!r}")
        return BackendChoice(requested, "cuda" if requested == "tensorrt" else device,
                             "named by worker.backend in the configuration")
    if artifacts.spec.onnx_file:
        if device.startswith("cuda") and tensorrt_importable():
            return BackendChoice("tensorrt", device, "an ONNX file on a CUDA worker with TensorRT installed")
        return BackendChoice("onnxruntime", device, "an ONNX file: ONNX Runtime runs it")
    if not artifacts.spec.input_shape:
        return BackendChoice("torch", device, "the model declares no input_shape, so it has no ONNX export")
    if device.startswith("cuda"):
        if tensorrt_importable():
            return BackendChoice("tensorrt", device, "CUDA worker with TensorRT installed")
        return BackendChoice("torch", device, "CUDA worker without TensorRT: torch on CUDA")
    return probe_cpu(artifacts, threads)
