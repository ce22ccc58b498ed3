"""The TensorRT backend: a serialized engine (plan) built from the model's ONNX export, run on torch's CUDA stream.

Written against TensorRT's documented Python API for 10.x and 11.x (name-based
I/O tensors, ``execute_async_v3``, ``build_serialized_network``). Precision lives
in the graph (strong typing, the only mode TensorRT 11 has): FP16 plans are built
from an all-fp16 ONNX export, so no precision builder flag is used. INT8 needs a
quantised (Q/DQ) graph, which ScanStream does not produce; it is refused.

Plans are cached in the model's cache folder under a key of (model fingerprint,
TensorRT version, GPU compute capability, precision, optimisation profile): a
plan is only ever loaded by the TensorRT and GPU generation that built it.

Not executed on the build machines (no GPU, no TensorRT): ``tests/unit/test_tensorrt_backend.py``
checks the key and cache logic everywhere and builds and runs a plan where
TensorRT and CUDA exist (marked ``gpu``).
"""

from __future__ import annotations

import hashlib
import importlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from engine.logs import get_logger
from engine.runtime.artifacts import ModelArtifacts, write_atomically
from engine.runtime.base import Backend, BackendError, BackendUnavailable, Outputs
from engine.runtime.export import INPUT_NAME

log = get_logger(__name__)

PRECISIONS = ("fp16", "fp32")
TORCH_DTYPES = {"fp16": torch.float16, "fp32": torch.float32}
DEFAULT_WORKSPACE_BYTES = 2 << 30


def import_tensorrt() -> ModuleType:
    """The ``tensorrt`` module, or :class:`BackendUnavailable` saying how to get it."""
    try:
        return importlib.import_module("tensorrt")
    except ImportError as error:
        raise BackendUnavailable(f"TensorRT is not importable ({error}); use the GPU image or the [gpu] extra") \
            from error


@dataclass(frozen=True)
class PlanKey:
    """Everything a serialized plan depends on; any change means a different plan file."""

    fingerprint: str
    tensorrt_version: str
    compute_capability: str
    precision: str
    batch: tuple[int, int, int]
    item_min: tuple[int, ...]
    item_opt: tuple[int, ...]
    item_max: tuple[int, ...]

    def digest(self) -> str:
        """SHA-256 of every field, in a stable text form."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()

    def filename(self) -> str:
        """``plan-<16 hex>.engine``: stable, filesystem-safe, unique per key."""
        return f"plan-{self.digest()[:16]}.engine"

    def profile_shapes(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(min, opt, max) full input shapes for the optimisation profile."""
        low, opt, high = self.batch
        return (low, *self.item_min), (opt, *self.item_opt), (high, *self.item_max)


def plan_key(artifacts: ModelArtifacts, tensorrt_version: str, compute_capability: str,
             precision: str = "fp16") -> PlanKey:
    """The key for ``artifacts``' model: batch 1..max_batch (optimum max_batch, the batcher's target),
    item shapes from the spec's declared range with ``input_shape`` as the optimum."""
    spec = artifacts.spec
    if precision not in PRECISIONS:
        raise BackendError(f"TensorRT precision {precision!r} is not supported; use one of {', '.join(PRECISIONS)} "
                           "(INT8 needs a Q/DQ-quantised graph, which ScanStream does not produce)")
    if not spec.input_shape:
        raise BackendError(f"model {spec.name!r} declares no input_shape, so TensorRT has no profile to build")
    low, high = spec.input_bounds()
    return PlanKey(fingerprint=artifacts.fingerprint(), tensorrt_version=tensorrt_version,
                   compute_capability=compute_capability, precision=precision,
                   batch=(1, spec.max_batch, spec.max_batch), item_min=tuple(low), item_opt=tuple(spec.input_shape),
                   item_max=tuple(high))


class PlanCache:
    """Serialized plans in one folder, each with a JSON sidecar describing its key."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def path(self, key: PlanKey) -> Path:
        """Where ``key``'s plan lives."""
        return self.folder / key.filename()

    def load(self, key: PlanKey) -> bytes | None:
        """The plan for ``key``, or None when it was never built here."""
        path = self.path(key)
        return path.read_bytes() if path.exists() else None

    def store(self, key: PlanKey, plan: bytes) -> Path:
        """Write the plan and its sidecar atomically; returns the plan's path."""
        path = self.path(key)
        write_atomically(path, lambda target: target.write_bytes(plan))
        sidecar = path.with_suffix(".json")
        write_atomically(sidecar, lambda target: target.write_text(json.dumps(asdict(key), indent=2)))
        return path

    def entries(self) -> list[dict[str, Any]]:
        """The keys of every plan kept here (from the sidecars)."""
        return [json.loads(p.read_text()) for p in sorted(self.folder.glob("plan-*.json"))]


def _network_flags(trt: ModuleType) -> int:
    """Strongly typed where the flag exists (10.x); TensorRT 11 networks are always strongly typed."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 1 << int(flag) if flag is not None else 0


def build_plan(trt: ModuleType, onnx_path: Path, key: PlanKey, *, model: str,
               workspace_bytes: int = DEFAULT_WORKSPACE_BYTES) -> bytes:
    """Parse ``onnx_path``, add one optimisation profile for ``key`` and build a serialized plan."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendError(f"model {model!r}: TensorRT could not parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    profile = builder.create_optimization_profile()
    low, opt, high = key.profile_shapes()
    profile.set_shape(INPUT_NAME, low, opt, high)
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendError(f"model {model!r}: TensorRT failed to build a {key.precision} plan "
                           f"(profile {low} / {opt} / {high}); see the TensorRT log above")
    return bytes(serialized)


def torch_dtype(numpy_type: Any) -> torch.dtype:
    """The torch dtype of a numpy type (as ``tensorrt.nptype`` returns for a tensor's data type)."""
    return torch.from_numpy(np.empty(0, dtype=numpy_type)).dtype


def _compute_capability() -> str:
    if not torch.cuda.is_available():
        raise BackendUnavailable("TensorRT needs a CUDA device and torch sees none")
    major, minor = torch.cuda.get_device_capability()
    return f"sm_{major}{minor}"


def ensure_plan(artifacts: ModelArtifacts, precision: str = "fp16") -> tuple[Path, PlanKey, bool]:
    """The plan file for this model on this GPU and TensorRT, built if missing: (path, key, built now)."""
    trt = import_tensorrt()
    key = plan_key(artifacts, str(trt.__version__), _compute_capability(), precision)
    cache = PlanCache(artifacts.folder())
    if cache.load(key) is not None:
        return cache.path(key), key, False
    log.info("tensorrt.building", model=artifacts.spec.name, precision=precision, key=key.filename())
    plan = build_plan(trt, artifacts.onnx_path(precision), key, model=artifacts.spec.name)
    return cache.store(key, plan), key, True


def build_only(artifacts: ModelArtifacts, precision: str = "fp16") -> Path:
    """Build (or find) the plan ahead of time for ``scanstream models build``; returns its path."""
    path, _, _ = ensure_plan(artifacts, precision)
    return path


class TensorRTBackend(Backend):
    """Runs a TensorRT plan; inputs already on the GPU (the CUDA preprocessing output) are used in place."""

    name = "tensorrt"

    def __init__(self, precision: str = "fp16") -> None:
        super().__init__("cuda")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self._trt = import_tensorrt()
        _compute_capability()
        self._precision = precision
        self._engine: Any = None
        self._context: Any = None
        self._inputs: list[str] = []
        self._outputs: list[tuple[str, torch.dtype]] = []

    def describe(self) -> str:
        """Backend, device and precision."""
        return f"{self.name}:cuda:{self._precision}"

    def initialize(self, artifacts: ModelArtifacts) -> None:
        """Load the cached plan (building it first if needed), deserialize it and make an execution context."""
        self._bind(artifacts)
        path, _, _ = ensure_plan(artifacts, self._precision)
        runtime = self._trt.Runtime(self._trt.Logger(self._trt.Logger.WARNING))
        self._engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self._engine is None:
            raise BackendError(f"TensorRT could not deserialize {path.name} for model {artifacts.spec.name!r}")
        self._context = self._engine.create_execution_context()
        self._inputs, self._outputs = [], []
        for index in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(index)
            dtype = torch_dtype(self._trt.nptype(self._engine.get_tensor_dtype(name)))
            if self._engine.get_tensor_mode(name) == self._trt.TensorIOMode.INPUT:
                self._inputs.append(name)
            else:
                self._outputs.append((name, dtype))
        if self._inputs != [INPUT_NAME]:
            raise BackendError(f"plan for {artifacts.spec.name!r} has inputs {self._inputs}, expected [{INPUT_NAME!r}]")

    def _run(self, batch: torch.Tensor) -> Outputs:
        """Bind input and outputs by name and enqueue on torch's current stream; outputs stay on the GPU."""
        if self._context is None:
            raise BackendError("TensorRTBackend used before initialize")
        inputs = batch.to("cuda", TORCH_DTYPES[self._precision], non_blocking=True).contiguous()
        if not self._context.set_input_shape(INPUT_NAME, tuple(inputs.shape)):
            raise BackendError(f"TensorRT refused input shape {tuple(inputs.shape)}")
        self._context.set_tensor_address(INPUT_NAME, inputs.data_ptr())
        outputs = []
        for name, dtype in self._outputs:
            output = torch.empty(tuple(self._context.get_tensor_shape(name)), dtype=dtype, device="cuda")
            self._context.set_tensor_address(name, output.data_ptr())
            outputs.append(output)
        stream = torch.cuda.current_stream()
        if not self._context.execute_async_v3(stream.cuda_stream):
            raise BackendError("TensorRT execute_async_v3 failed")
        return tuple(o.float() for o in outputs)

    def finalize(self) -> None:
        """Drop the context and engine."""
        self._context = None
        self._engine = None
