"""The TensorRT backend: a serialized engine (plan) built from the model's ONNX export, run on a CUDA stream.

Written against TensorRT's documented Python API for 10.x, and kept to the part of
it that 11.x still has (name-based I/O tensors, ``execute_async_v3``,
``build_serialized_network``). Precision lives in the graph: networks are created
strongly typed and FP16 plans are built from the all-fp16 ONNX export, so no FP16
builder flag is used (weak typing is deprecated since TensorRT 10.12 and
``BuilderFlag.FP16`` is gone in 11.x). FP32 plans clear ``BuilderFlag.TF32`` so
"fp32" means IEEE fp32 arithmetic. INT8 needs a quantised (Q/DQ) graph or a
calibrator; ScanStream has neither, so INT8 is refused rather than faked.

Plans are cached in the model's cache folder under a key of (model fingerprint,
TensorRT version, GPU compute capability and name, precision, optimisation
profile, build recipe): a plan is only ever loaded by the TensorRT and GPU that
built it, and a plan that will not deserialize anyway is rebuilt once.

Not executed on the build machines (no GPU, no TensorRT): ``tests/unit/test_tensorrt_backend.py``
checks the key and cache logic everywhere, the calls into TensorRT against a
stand-in with only the documented names, and builds and runs a real plan where
TensorRT and CUDA exist (marked ``gpu``).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from engine.logs import get_logger
from engine.runtime.artifacts import ModelArtifacts, write_atomically
from engine.runtime.base import Backend, Outputs
from engine.runtime.errors import BackendError, BackendUnavailable
from engine.runtime.export import INPUT_NAME

log = get_logger(__name__)

PRECISIONS = ("fp16", "fp32")
DEFAULT_WORKSPACE_BYTES = 2 << 30
# Bump when build_plan changes how plans are built (flags, profile), so plans built the old way are not reused.
PLAN_RECIPE = 2
# IExecutionContext.setTensorAddress: "The pointer must have at least 256-byte alignment."
ADDRESS_ALIGNMENT = 256


def import_tensorrt() -> ModuleType:
    """The ``tensorrt`` module, or :class:`BackendUnavailable` saying how to get it."""
    try:
        return importlib.import_module("tensorrt")
    except (ImportError, OSError) as error:  # OSError: the wheel is there but a TensorRT/CUDA library is not
        raise BackendUnavailable(f"TensorRT is not importable ({error}); use the GPU image or the [gpu] extra") \
            from error


def check_precision(precision: str) -> str:
    """``precision`` when TensorRT plans can be built in it; :class:`BackendError` explaining why not otherwise."""
    if precision not in PRECISIONS:
        raise BackendError(f"TensorRT precision {precision!r} is not supported; use one of {', '.join(PRECISIONS)} "
                           "(INT8 needs a Q/DQ-quantised graph or a calibrator, which ScanStream does not produce)")
    return precision


def cuda_device() -> tuple[str, str]:
    """(compute capability as ``sm_XY``, device name) of the current CUDA device; plans are specific to both."""
    if not torch.cuda.is_available():
        raise BackendUnavailable("TensorRT needs a CUDA device and torch sees none")
    major, minor = torch.cuda.get_device_capability()
    return f"sm_{major}{minor}", str(torch.cuda.get_device_name())


@dataclass(frozen=True)
class PlanKey:
    """Everything a serialized plan depends on; any change means a different plan file.

    ``model`` is redundant with ``fingerprint`` (which hashes the name too) and is
    kept so the sidecar says whose plan it is.
    """

    model: str
    fingerprint: str
    tensorrt_version: str
    compute_capability: str
    device_name: str
    precision: str
    batch: tuple[int, int, int]
    item_min: tuple[int, ...]
    item_opt: tuple[int, ...]
    item_max: tuple[int, ...]
    recipe: int = PLAN_RECIPE

    def describe(self) -> dict[str, Any]:
        """The fields as JSON-ready values (tuples as lists): the sidecar's content and the digest's input."""
        return json.loads(json.dumps(asdict(self)))

    def digest(self) -> str:
        """SHA-256 of every field, in a stable text form."""
        return hashlib.sha256(json.dumps(self.describe(), sort_keys=True).encode()).hexdigest()

    def filename(self) -> str:
        """``plan-<16 hex>.engine``: stable, filesystem-safe, different for every key."""
        return f"plan-{self.digest()[:16]}.engine"

    def profile_shapes(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(min, opt, max) full input shapes, batch axis first, for the optimisation profile."""
        low, opt, high = self.batch
        return (low, *self.item_min), (opt, *self.item_opt), (high, *self.item_max)


def plan_key(artifacts: ModelArtifacts, tensorrt_version: str, compute_capability: str, precision: str = "fp16",
             *, device_name: str = "") -> PlanKey:
    """The key for ``artifacts``' model on one TensorRT version and GPU.

    Batch 1..``max_batch`` with ``max_batch`` as the optimum: under load the
    batcher fills micro-batches to ``max_batch``, and that is where speed matters.
    Item shapes run over the spec's declared range with ``input_shape`` as the optimum.
    """
    spec = artifacts.spec
    check_precision(precision)
    if not spec.input_shape:
        raise BackendError(f"model {spec.name!r} declares no input_shape, so TensorRT has no profile to build")
    low, high = spec.input_bounds()
    return PlanKey(model=spec.name, fingerprint=artifacts.fingerprint(), tensorrt_version=str(tensorrt_version),
                   compute_capability=compute_capability, device_name=device_name, precision=precision,
                   batch=(1, spec.max_batch, spec.max_batch), item_min=tuple(low), item_opt=tuple(spec.input_shape),
                   item_max=tuple(high))


class PlanCache:
    """Serialized plans in one folder, each beside a JSON sidecar describing its key."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def path(self, key: PlanKey) -> Path:
        """Where ``key``'s plan lives."""
        return self.folder / key.filename()

    def sidecar(self, key: PlanKey) -> Path:
        """Where ``key``'s description lives (``plan-<16 hex>.json``)."""
        return self.path(key).with_suffix(".json")

    def load(self, key: PlanKey) -> bytes | None:
        """The plan for ``key``, or None when it was never built here."""
        try:
            return self.path(key).read_bytes()
        except FileNotFoundError:
            return None

    def store(self, key: PlanKey, plan: bytes) -> Path:
        """Write the plan, then its sidecar, each atomically; returns the plan's path."""
        path = write_atomically(self.path(key), lambda target: target.write_bytes(plan))
        write_atomically(self.sidecar(key),
                         lambda target: target.write_text(json.dumps(key.describe(), indent=2, sort_keys=True)))
        return path

    def entries(self) -> list[dict[str, Any]]:
        """The key of every plan kept here, read from the sidecars (for ``scanstream models build``)."""
        found = []
        for sidecar in sorted(self.folder.glob("plan-*.json")):
            if sidecar.with_suffix(".engine").exists():
                found.append(json.loads(sidecar.read_text()))
        return found


def _network_flags(trt: ModuleType) -> int:
    """Strongly typed (the flag exists in 10.x; 11.x networks are always strongly typed and ignore or lack it)."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 1 << int(flag) if flag is not None else 0


def build_plan(onnx_path: Path, key: PlanKey, *, workspace_bytes: int = DEFAULT_WORKSPACE_BYTES) -> bytes:
    """Parse ``onnx_path`` into a strongly typed network, add one optimisation profile for ``key`` and build a plan.

    Precision comes from the ONNX graph (fp16 or fp32 tensors), so ``onnx_path``
    must be the export in ``key.precision``. Raises :class:`BackendError` naming
    the model when parsing or building fails.
    """
    trt = import_tensorrt()
    check_precision(key.precision)
    onnx_path = Path(onnx_path)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, logger)  # owns the weights: keep it alive until the build is done
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)) or "no parser errors reported"
        raise BackendError(f"model {key.model!r}: TensorRT could not parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    if key.precision == "fp32":
        config.clear_flag(trt.BuilderFlag.TF32)  # TF32 is on by default; fp32 plans keep fp32 products
    profile = builder.create_optimization_profile()
    low, opt, high = key.profile_shapes()
    profile.set_shape(INPUT_NAME, low, opt, high)
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendError(f"model {key.model!r}: TensorRT failed to build a {key.precision} plan "
                           f"(profile {low} / {opt} / {high}); see the TensorRT log above")
    return bytes(serialized)


def ensure_plan(artifacts: ModelArtifacts, precision: str = "fp16", *, rebuild: bool = False,
                workspace_bytes: int = DEFAULT_WORKSPACE_BYTES) -> tuple[Path, PlanKey, bool]:
    """The plan file for this model on this GPU and TensorRT, built when missing (or ``rebuild``).

    Returns (path, key, whether it was built by this call).
    """
    trt = import_tensorrt()
    capability, device_name = cuda_device()
    key = plan_key(artifacts, str(trt.__version__), capability, precision, device_name=device_name)
    cache = PlanCache(artifacts.folder())
    path = cache.path(key)
    if path.exists() and not rebuild:
        return path, key, False
    log.info("tensorrt.building", model=key.model, precision=precision, plan=key.filename(), device=device_name)
    plan = build_plan(artifacts.onnx_path(precision), key, workspace_bytes=workspace_bytes)
    return cache.store(key, plan), key, True


def build_only(artifacts: ModelArtifacts, precision: str = "fp16") -> Path:
    """Build (or find) the plan ahead of time for ``scanstream models build``; returns its path.

    :func:`ensure_plan` also says whether it was built now or found in the cache.
    """
    path, key, built = ensure_plan(artifacts, precision)
    log.info("tensorrt.plan_ready", model=key.model, plan=path.name, built=built)
    return path


def torch_dtype(numpy_type: Any) -> torch.dtype:
    """The torch dtype of a numpy type (as ``tensorrt.nptype`` returns for a tensor's data type)."""
    return torch.from_numpy(np.empty(0, dtype=numpy_type)).dtype


def bindable(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` when TensorRT can take its address (contiguous, 256-byte aligned), else a contiguous copy.

    Slices along the batch axis (micro-batches, requests cut from a joined
    batch) keep their storage and may start at any offset.
    """
    if tensor.is_contiguous() and tensor.data_ptr() % ADDRESS_ALIGNMENT == 0:
        return tensor
    return tensor.clone(memory_format=torch.contiguous_format)


class TensorRTBackend(Backend):
    """Runs a TensorRT plan on its own CUDA stream, ordered after and before the caller's stream.

    Inputs already on the GPU (the CUDA preprocessing output) are used in place
    when their dtype and alignment allow. Outputs stay on the GPU as float32.
    """

    name = "tensorrt"

    def __init__(self, precision: str = "fp16", *, workspace_bytes: int = DEFAULT_WORKSPACE_BYTES) -> None:
        """Check that TensorRT and a CUDA device are here (:class:`BackendUnavailable` otherwise)."""
        super().__init__("cuda")
        self._precision = check_precision(precision)
        self._trt = import_tensorrt()
        cuda_device()
        self._workspace_bytes = int(workspace_bytes)
        self._runtime: Any = None
        self._engine: Any = None
        self._context: Any = None
        self._stream: torch.cuda.Stream | None = None
        self._input_dtype = torch.float32
        self._outputs: list[tuple[str, torch.dtype]] = []
        self._lock = threading.Lock()  # one execution context: one batch at a time

    def describe(self) -> str:
        """Backend, device and precision."""
        return f"{self.name}:cuda:{self._precision}"

    def initialize(self, artifacts: ModelArtifacts) -> None:
        """Load the cached plan (building it if missing, rebuilding it once if unusable) and make a context."""
        self.finalize()
        self._bind(artifacts)
        model = artifacts.spec.name
        path, _, built = ensure_plan(artifacts, self._precision, workspace_bytes=self._workspace_bytes)
        self._runtime = self._trt.Runtime(self._trt.Logger(self._trt.Logger.WARNING))
        engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None and not built:
            log.warning("tensorrt.plan_unusable", model=model, plan=path.name)
            path, _, built = ensure_plan(artifacts, self._precision, rebuild=True,
                                         workspace_bytes=self._workspace_bytes)
            engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise BackendError(f"model {model!r}: TensorRT could not deserialize {path.name}; see the TensorRT log")
        context = engine.create_execution_context()
        if context is None:
            raise BackendError(f"model {model!r}: TensorRT could not create an execution context (GPU memory?)")
        inputs: dict[str, torch.dtype] = {}
        outputs: list[tuple[str, torch.dtype]] = []
        for index in range(engine.num_io_tensors):
            name = engine.get_tensor_name(index)
            trt_dtype = engine.get_tensor_dtype(name)
            try:
                dtype = torch_dtype(self._trt.nptype(trt_dtype))
            except TypeError as error:  # bf16/fp8 and friends have no numpy type
                raise BackendError(f"model {model!r}: tensor {name!r} has data type {trt_dtype}, "
                                   "which this backend cannot bind") from error
            if engine.get_tensor_mode(name) == self._trt.TensorIOMode.INPUT:
                inputs[name] = dtype
            else:
                outputs.append((name, dtype))
        if list(inputs) != [INPUT_NAME]:
            raise BackendError(f"model {model!r}: plan has inputs {list(inputs)}, expected [{INPUT_NAME!r}]")
        self._engine, self._context = engine, context
        self._input_dtype, self._outputs = inputs[INPUT_NAME], outputs
        log.info("tensorrt.ready", model=model, plan=path.name, built=built, input_dtype=str(self._input_dtype),
                 outputs=[name for name, _ in outputs])

    def _set_address(self, name: str, tensor: torch.Tensor) -> None:
        if not self._context.set_tensor_address(name, tensor.data_ptr()):
            raise BackendError(f"TensorRT refused the address of tensor {name!r}")

    def _run(self, batch: torch.Tensor) -> Outputs:
        """Bind input and outputs by name and enqueue; returns float32 CUDA tensors without waiting for them.

        The plan runs on the backend's stream (TensorRT warns that the default
        stream costs extra synchronisation), which first waits for the caller's
        current stream; the caller's stream then waits for the plan, so work
        the caller queues next (postprocessing, the copy to the host) sees the outputs.
        """
        if self._context is None:
            raise BackendError("TensorRTBackend used before initialize")
        with self._lock:
            if self._stream is None:
                self._stream = torch.cuda.Stream()
            caller = torch.cuda.current_stream()
            stream = self._stream
            stream.wait_stream(caller)
            with torch.cuda.stream(stream):
                inputs = bindable(batch.to("cuda", self._input_dtype, non_blocking=True))
                shape = tuple(int(n) for n in inputs.shape)
                if not self._context.set_input_shape(INPUT_NAME, shape):
                    raise BackendError(f"TensorRT refused input shape {shape}")
                self._set_address(INPUT_NAME, inputs)
                outputs = []
                for name, dtype in self._outputs:
                    out_shape = tuple(int(n) for n in self._context.get_tensor_shape(name))
                    if any(n < 0 for n in out_shape):
                        raise BackendError(f"TensorRT left output {name!r} shape unresolved: {out_shape}")
                    output = torch.empty(out_shape, dtype=dtype, device=inputs.device)
                    self._set_address(name, output)
                    outputs.append(output)
                if not self._context.execute_async_v3(stream.cuda_stream):
                    raise BackendError(f"TensorRT execute_async_v3 failed for input shape {shape}")
                results = tuple(o.float() for o in outputs)
            if batch.is_cuda:
                batch.record_stream(stream)  # allocated on the caller's stream, read on ours
            caller.wait_stream(stream)
            for result in results:
                result.record_stream(caller)  # allocated on our stream, read on the caller's
            return results

    def finalize(self) -> None:
        """Drop the context, engine and runtime (in that order); the backend can be initialized again."""
        self._context = None
        self._engine = None
        self._runtime = None
        self._stream = None
        self._outputs = []
