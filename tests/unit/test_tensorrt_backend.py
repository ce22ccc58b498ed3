"""TensorRT backend: plan keys and cache everywhere; the calls into TensorRT against a strict stand-in; a real plan
where TensorRT and CUDA run.

The stand-in ``tensorrt`` module (:func:`strict_tensorrt`) has only the documented
names the backend may use, with the bindings' parameter names, so a misspelt or
removed API (``BuilderFlag.FP16`` is gone in TensorRT 11) fails here; it records
what it was given.
"""

from __future__ import annotations

import enum
import importlib
import json
import sys
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch

from engine.runtime import tensorrt_backend
from engine.runtime.artifacts import ModelArtifacts
from engine.runtime.base import InferenceRequest
from engine.runtime.errors import BackendError, BackendUnavailable
from engine.runtime.tensorrt_backend import (PLAN_RECIPE, PlanCache, PlanKey, TensorRTBackend, bindable, build_plan,
                                             ensure_plan, plan_key)
from tests.unit.test_selection import tiny_spec

NO_CUDA = not torch.cuda.is_available()


@pytest.fixture
def artifacts(tmp_path) -> ModelArtifacts:
    spec = tiny_spec(input_shape=(1, 32, 32), min_input_shape=(1, 16, 16), max_input_shape=(1, 64, 64),
                     shape_multiple=8)  # tiny_spec: Conv2d -> ReLU -> Conv2d, max_batch 4
    return ModelArtifacts(spec, tmp_path / "cache")


def key_for(artifacts: ModelArtifacts, precision: str = "fp16") -> PlanKey:
    return plan_key(artifacts, "10.8.0.43", "sm_90", precision, device_name="NVIDIA H200")


# --- plan keys -------------------------------------------------------------------------------------------------------

def test_plan_key_profile_comes_from_the_spec(artifacts: ModelArtifacts) -> None:
    key = key_for(artifacts)
    assert key.batch == (1, 4, 4)  # min 1, optimum and max = max_batch
    assert (key.item_min, key.item_opt, key.item_max) == ((1, 16, 16), (1, 32, 32), (1, 64, 64))
    assert key.profile_shapes() == ((1, 1, 16, 16), (4, 1, 32, 32), (4, 1, 64, 64))
    assert key.fingerprint == artifacts.fingerprint() and len(key.fingerprint) == 64
    assert (key.model, key.tensorrt_version, key.compute_capability, key.precision, key.recipe) == \
        ("tiny", "10.8.0.43", "sm_90", "fp16", PLAN_RECIPE)


def test_a_fixed_shape_model_gets_a_fixed_item_profile(tmp_path) -> None:
    key = key_for(ModelArtifacts(tiny_spec(input_shape=(1, 8, 8)), tmp_path))
    assert key.profile_shapes() == ((1, 1, 8, 8), (4, 1, 8, 8), (4, 1, 8, 8))


def test_the_plan_filename_is_stable_and_filesystem_safe(artifacts: ModelArtifacts) -> None:
    name = key_for(artifacts).filename()
    assert name == key_for(artifacts).filename()
    assert name == key_for(ModelArtifacts(artifacts.spec, artifacts.cache_root)).filename()  # reloaded weights
    assert name.startswith("plan-") and name.endswith(".engine") and len(name) == len("plan-") + 16 + len(".engine")
    assert all(c in "0123456789abcdef" for c in name[5:-7])


@pytest.mark.parametrize("change", [
    {"model": "other"}, {"fingerprint": "0" * 64}, {"tensorrt_version": "10.9.0.34"},
    {"compute_capability": "sm_80"}, {"device_name": "NVIDIA H100 PCIe"}, {"precision": "fp32"},
    {"batch": (1, 2, 4)}, {"batch": (1, 4, 8)}, {"item_min": (1, 8, 8)}, {"item_opt": (1, 48, 48)},
    {"item_max": (1, 128, 128)}, {"recipe": PLAN_RECIPE + 1},
])
def test_every_key_field_changes_the_plan_file(artifacts: ModelArtifacts, change: dict) -> None:
    key = key_for(artifacts)
    assert replace(key, **change).filename() != key.filename()


def test_changed_weights_or_spec_change_the_plan_file(artifacts: ModelArtifacts, tmp_path) -> None:
    key = key_for(artifacts)
    wider = ModelArtifacts(replace(artifacts.spec, max_input_shape=(1, 128, 128)), artifacts.cache_root)
    assert key_for(wider).filename() != key.filename()
    assert key_for(ModelArtifacts(replace(artifacts.spec, max_batch=8), artifacts.cache_root)).batch == (1, 8, 8)

    def other_weights() -> torch.nn.Module:
        network = artifacts.spec.load_network()
        with torch.no_grad():
            network[0].bias.add_(1.0)
        return network

    retrained = ModelArtifacts(replace(artifacts.spec, load_network=other_weights), tmp_path / "other")
    assert key_for(retrained).fingerprint != key.fingerprint
    assert key_for(retrained).filename() != key.filename()


def test_int8_and_shapeless_models_are_refused(artifacts: ModelArtifacts, tmp_path) -> None:
    with pytest.raises(BackendError, match="INT8 needs a Q/DQ-quantised graph or a calibrator"):
        key_for(artifacts, "int8")
    with pytest.raises(BackendError, match="declares no input_shape"):
        key_for(ModelArtifacts(tiny_spec(), tmp_path))


# --- plan cache ------------------------------------------------------------------------------------------------------

def test_plan_cache_round_trip_with_sidecar(artifacts: ModelArtifacts, tmp_path) -> None:
    folder = tmp_path / "plans"
    cache = PlanCache(folder)
    key = key_for(artifacts)
    assert cache.load(key) is None and cache.entries() == []
    path = cache.store(key, b"serialized plan")
    assert path == cache.path(key) == folder / key.filename()
    assert cache.load(key) == b"serialized plan"
    assert sorted(p.name for p in folder.iterdir()) == sorted([key.filename(), key.filename()[:-7] + ".json"])
    sidecar = json.loads(cache.sidecar(key).read_text())
    assert sidecar == {"model": "tiny", "fingerprint": artifacts.fingerprint(), "tensorrt_version": "10.8.0.43",
                       "compute_capability": "sm_90", "device_name": "NVIDIA H200", "precision": "fp16",
                       "batch": [1, 4, 4], "item_min": [1, 16, 16], "item_opt": [1, 32, 32],
                       "item_max": [1, 64, 64], "recipe": PLAN_RECIPE}
    assert cache.entries() == [sidecar]
    fp32 = replace(key, precision="fp32")
    cache.store(fp32, b"other plan")
    assert cache.load(key) == b"serialized plan" and cache.load(fp32) == b"other plan"
    assert sorted(e["precision"] for e in cache.entries()) == ["fp16", "fp32"]


def test_plan_cache_writes_atomically(artifacts: ModelArtifacts, tmp_path, monkeypatch) -> None:
    cache = PlanCache(tmp_path / "plans")
    key = key_for(artifacts)
    cache.store(key, b"old plan")

    class Interrupted(Exception):
        pass

    def half_write(self: Path, data: bytes) -> int:
        """A write that stops half-way, like a worker killed while storing a plan."""
        with open(self, "wb") as handle:
            handle.write(data[: len(data) // 2])
        raise Interrupted

    monkeypatch.setattr(Path, "write_bytes", half_write)
    with pytest.raises(Interrupted):
        cache.store(key, b"new plan that never lands")
    monkeypatch.undo()
    assert cache.load(key) == b"old plan"  # the old file is untouched, never half of the new one
    assert [p.name for p in (tmp_path / "plans").iterdir() if p.name.startswith(".")] == []  # no temp files left


# --- without TensorRT ------------------------------------------------------------------------------------------------

def test_without_tensorrt_the_backend_says_so() -> None:
    try:
        importlib.import_module("tensorrt")
    except ImportError:
        with pytest.raises(BackendUnavailable, match="TensorRT is not importable"):
            TensorRTBackend()
    else:
        pytest.skip("TensorRT is installed here")


def test_an_unimportable_tensorrt_is_unavailable_everywhere(artifacts: ModelArtifacts, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import raises ImportError, installed or not
    with pytest.raises(BackendUnavailable, match="TensorRT is not importable.*\\[gpu\\] extra"):
        TensorRTBackend()
    with pytest.raises(BackendUnavailable, match="TensorRT is not importable"):
        ensure_plan(artifacts)


# --- a strict stand-in for the documented TensorRT API ---------------------------------------------------------------

class Recorder(dict):
    """What the stand-in was asked to do."""


def strict_tensorrt(*, parse_ok: bool = True, build_ok: bool = True, version: str = "10.8.0.43",
                    strongly_typed_flag: bool = True, outputs: tuple[tuple[str, str], ...] = (("output", "float16"),),
                    input_name: str = "input", input_dtype: str = "float16",
                    unusable_plans: tuple[bytes, ...] = ()) -> ModuleType:
    """A ``tensorrt`` module with only the names (and parameter names) of the TensorRT 10/11 bindings the backend uses.

    Plans it builds are ``b"PLAN<n>"``; its runtime deserializes those, and returns
    None (as TensorRT does) for anything else or for ``unusable_plans``.
    """
    trt = ModuleType("tensorrt")
    record = Recorder(builds=0, flags_set=[], flags_cleared=[], profiles_added=0, addresses={}, executed=[])
    trt.record = record  # type: ignore[attr-defined]
    trt.__version__ = version  # type: ignore[attr-defined]

    class LogSeverity(enum.IntEnum):
        ERROR = 1
        WARNING = 2
        INFO = 3

    class DataType(enum.Enum):
        FLOAT = "float32"
        HALF = "float16"
        BF16 = "bfloat16"

    def nptype(trt_type: DataType) -> Any:
        mapping = {DataType.FLOAT: np.float32, DataType.HALF: np.float16}
        if trt_type in mapping:
            return mapping[trt_type]
        raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")

    class TensorIOMode(enum.Enum):
        NONE = 0
        INPUT = 1
        OUTPUT = 2

    class MemoryPoolType(enum.Enum):
        WORKSPACE = 0

    class BuilderFlag(enum.Enum):  # 11.x: no FP16/INT8/BF16 precision flags
        TF32 = 6
        REFIT = 4

    members = {"STRONGLY_TYPED": 1} if strongly_typed_flag else {}
    NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", {"PREFER_JIT_PYTHON_PLUGINS": 3,
                                                                                   **members})

    class ILogger:
        Severity = LogSeverity
        ERROR, WARNING, INFO = LogSeverity.ERROR, LogSeverity.WARNING, LogSeverity.INFO

    class Logger(ILogger):
        def __init__(self, min_severity: LogSeverity = LogSeverity.WARNING) -> None:
            record["log_severity"] = min_severity

    class INetworkDefinition:
        pass

    class ParserError:
        def __init__(self, index: int) -> None:
            self.index = index

        def __str__(self) -> str:
            return f"In node {self.index} (parseGraph): UNSUPPORTED_NODE: error {self.index}"

    class OnnxParser:
        def __init__(self, network: INetworkDefinition, logger: ILogger) -> None:
            assert isinstance(network, INetworkDefinition) and isinstance(logger, ILogger)

        def parse(self, model: bytes, path: str | None = None) -> bool:
            record["onnx"] = bytes(model)
            return parse_ok

        @property
        def num_errors(self) -> int:
            return 0 if parse_ok else 2

        def get_error(self, index: int) -> ParserError:
            return ParserError(index)

    class IOptimizationProfile:
        def set_shape(self, input: str, min: Any, opt: Any, max: Any) -> None:  # noqa: A002 (the bindings' names)
            record["profile"] = (input, tuple(min), tuple(opt), tuple(max))

    class IBuilderConfig:
        def set_memory_pool_limit(self, pool: MemoryPoolType, pool_size: int) -> None:
            assert isinstance(pool, MemoryPoolType)
            record["workspace"] = (pool, pool_size)

        def set_flag(self, flag: BuilderFlag) -> None:
            record["flags_set"].append(flag)

        def clear_flag(self, flag: BuilderFlag) -> None:
            record["flags_cleared"].append(flag)

        def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
            assert isinstance(profile, IOptimizationProfile)
            record["profiles_added"] += 1
            return 0

    class Builder:
        def __init__(self, logger: ILogger) -> None:
            assert isinstance(logger, ILogger)

        def create_network(self, flags: int = 0) -> INetworkDefinition:
            record["network_flags"] = flags
            return INetworkDefinition()

        def create_builder_config(self) -> IBuilderConfig:
            return IBuilderConfig()

        def create_optimization_profile(self) -> IOptimizationProfile:
            return IOptimizationProfile()

        def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig) -> Any:
            assert isinstance(network, INetworkDefinition) and isinstance(config, IBuilderConfig)
            if not build_ok:
                return None
            record["builds"] += 1
            return memoryview(b"PLAN%d" % record["builds"])  # IHostMemory: a buffer

    io = [(input_name, TensorIOMode.INPUT, DataType(input_dtype))]
    io += [(name, TensorIOMode.OUTPUT, DataType(dtype)) for name, dtype in outputs]

    class IExecutionContext:
        def __init__(self) -> None:
            self.shape: tuple[int, ...] | None = None

        def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
            assert name == input_name
            self.shape = tuple(shape)
            record["input_shape"] = self.shape
            return True

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            assert name in [n for n, _, _ in io] and self.shape is not None
            return self.shape

        def set_tensor_address(self, name: str, memory: int) -> bool:
            assert isinstance(memory, int)
            record["addresses"][name] = memory
            return True

        def execute_async_v3(self, stream_handle: int) -> bool:
            record["executed"].append(stream_handle)
            return True

    class ICudaEngine:
        @property
        def num_io_tensors(self) -> int:
            return len(io)

        def get_tensor_name(self, index: int) -> str:
            return io[index][0]

        def get_tensor_mode(self, name: str) -> TensorIOMode:
            return {n: mode for n, mode, _ in io}[name]

        def get_tensor_dtype(self, name: str) -> DataType:
            return {n: dtype for n, _, dtype in io}[name]

        def create_execution_context(self) -> IExecutionContext:
            return IExecutionContext()

    class Runtime:
        def __init__(self, logger: ILogger) -> None:
            assert isinstance(logger, ILogger)

        def deserialize_cuda_engine(self, serialized_engine: bytes) -> ICudaEngine | None:
            record.setdefault("deserialized", []).append(bytes(serialized_engine))
            if not bytes(serialized_engine).startswith(b"PLAN") or bytes(serialized_engine) in unusable_plans:
                return None
            return ICudaEngine()

    for name, value in dict(Logger=Logger, ILogger=ILogger, Builder=Builder, OnnxParser=OnnxParser, Runtime=Runtime,
                            BuilderFlag=BuilderFlag, MemoryPoolType=MemoryPoolType, TensorIOMode=TensorIOMode,
                            NetworkDefinitionCreationFlag=NetworkDefinitionCreationFlag, DataType=DataType,
                            nptype=nptype, float32=DataType.FLOAT, float16=DataType.HALF,
                            bfloat16=DataType.BF16).items():
        setattr(trt, name, value)
    return trt


@pytest.fixture
def onnx_file(tmp_path) -> Path:
    path = tmp_path / "m.onnx"
    path.write_bytes(b"onnx!")
    return path


def install(monkeypatch, trt: ModuleType) -> ModuleType:
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    return trt


def test_fp16_build_is_strongly_typed_with_one_profile_and_no_precision_flag(artifacts, onnx_file, monkeypatch):
    trt = install(monkeypatch, strict_tensorrt())
    key = key_for(artifacts, "fp16")
    assert build_plan(onnx_file, key, workspace_bytes=123) == b"PLAN1"
    record = trt.record
    assert record["onnx"] == b"onnx!"
    assert record["network_flags"] == 1 << 1  # 1 << int(STRONGLY_TYPED): precision comes from the fp16 graph
    assert record["profile"] == ("input", (1, 1, 16, 16), (4, 1, 32, 32), (4, 1, 64, 64))
    assert record["profiles_added"] == 1
    assert record["workspace"] == (trt.MemoryPoolType.WORKSPACE, 123)
    assert record["flags_set"] == [] and record["flags_cleared"] == []  # no FP16 flag (removed in 11.x), TF32 kept
    assert record["log_severity"] == trt.Logger.WARNING


def test_fp32_build_clears_tf32(artifacts, onnx_file, monkeypatch):
    trt = install(monkeypatch, strict_tensorrt())
    build_plan(onnx_file, key_for(artifacts, "fp32"))
    assert trt.record["flags_cleared"] == [trt.BuilderFlag.TF32] and trt.record["flags_set"] == []
    assert trt.record["workspace"][1] == tensorrt_backend.DEFAULT_WORKSPACE_BYTES


def test_tensorrt_11_networks_need_no_flag(artifacts, onnx_file, monkeypatch) -> None:
    trt = install(monkeypatch, strict_tensorrt(strongly_typed_flag=False, version="11.1.0.0"))
    build_plan(onnx_file, key_for(artifacts))
    assert trt.record["network_flags"] == 0


def test_parse_and_build_failures_name_the_model(artifacts, onnx_file, monkeypatch) -> None:
    key = key_for(artifacts)
    install(monkeypatch, strict_tensorrt(parse_ok=False))
    with pytest.raises(BackendError, match=r"model 'tiny': TensorRT could not parse m.onnx: In node 0 .*error 0; "
                                           r"In node 1 .*error 1"):
        build_plan(onnx_file, key)
    install(monkeypatch, strict_tensorrt(build_ok=False))
    with pytest.raises(BackendError, match=r"model 'tiny': TensorRT failed to build a fp16 plan \(profile "
                                           r"\(1, 1, 16, 16\) / \(4, 1, 32, 32\) / \(4, 1, 64, 64\)\)"):
        build_plan(onnx_file, key)
    with pytest.raises(BackendError, match="INT8"):
        build_plan(onnx_file, replace(key, precision="int8"))


@pytest.fixture
def fake_gpu(artifacts, onnx_file, monkeypatch) -> list[str]:
    """A CUDA device as far as the plan key is concerned; the ONNX export requested, per precision."""
    monkeypatch.setattr(tensorrt_backend, "cuda_device", lambda: ("sm_90", "NVIDIA H200"))
    exported: list[str] = []

    def onnx_path(precision: str = "fp32") -> Path:
        exported.append(precision)
        return onnx_file

    monkeypatch.setattr(artifacts, "onnx_path", onnx_path)
    return exported


def test_a_plan_is_built_once_then_found_in_the_cache(artifacts, fake_gpu, monkeypatch) -> None:
    trt = install(monkeypatch, strict_tensorrt())
    path, key, built = ensure_plan(artifacts, "fp16")
    assert built and fake_gpu == ["fp16"] and path.read_bytes() == b"PLAN1"
    assert path.parent == artifacts.folder() and path.name == key.filename()
    assert (key.tensorrt_version, key.compute_capability, key.device_name) == ("10.8.0.43", "sm_90", "NVIDIA H200")
    assert PlanCache(artifacts.folder()).entries()[0]["fingerprint"] == artifacts.fingerprint()
    again, _, built = ensure_plan(artifacts, "fp16")
    assert again == path and not built and trt.record["builds"] == 1
    assert tensorrt_backend.build_only(artifacts, "fp16") == path and trt.record["builds"] == 1
    fp32, _, built = ensure_plan(artifacts, "fp32")
    assert built and fp32 != path and fake_gpu == ["fp16", "fp32"]
    newer = install(monkeypatch, strict_tensorrt(version="10.9.0.34"))
    upgraded, _, built = ensure_plan(artifacts, "fp16")
    assert built and upgraded != path and newer.record["builds"] == 1  # a new TensorRT never loads an old plan


def test_initialize_binds_tensors_by_name_with_the_engine_dtypes(artifacts, fake_gpu, monkeypatch) -> None:
    trt = install(monkeypatch, strict_tensorrt(outputs=(("output", "float16"), ("output_1", "float32"))))
    backend = TensorRTBackend("fp16")
    backend.initialize(artifacts)
    assert trt.record["deserialized"] == [b"PLAN1"]
    assert backend._input_dtype == torch.float16
    assert backend._outputs == [("output", torch.float16), ("output_1", torch.float32)]
    assert (backend.max_batch, backend.input_bounds, backend.shape_multiple) == (4, ((1, 16, 16), (1, 64, 64)), 8)
    assert backend.describe() == "tensorrt:cuda:fp16"
    backend.finalize()
    assert backend._context is None and backend._engine is None
    with pytest.raises(BackendError, match="before initialize"):
        backend._run(torch.zeros(1, 1, 32, 32))
    TensorRTBackend("fp16").initialize(artifacts)
    assert trt.record["builds"] == 1  # the second worker found the plan


def test_an_unusable_cached_plan_is_rebuilt_once(artifacts, fake_gpu, monkeypatch) -> None:
    install(monkeypatch, strict_tensorrt())
    path, _, _ = ensure_plan(artifacts)
    path.write_bytes(b"not a plan")  # e.g. a driver update left a plan TensorRT refuses
    trt = install(monkeypatch, strict_tensorrt())
    TensorRTBackend().initialize(artifacts)
    assert trt.record["deserialized"] == [b"not a plan", b"PLAN1"] and path.read_bytes() == b"PLAN1"
    install(monkeypatch, strict_tensorrt(unusable_plans=(b"PLAN1",)))
    with pytest.raises(BackendError, match="model 'tiny': TensorRT could not deserialize plan-"):
        TensorRTBackend().initialize(artifacts)  # rebuilt plan still refused: give up, no loop


@pytest.mark.parametrize("options, message", [
    ({"input_name": "x"}, r"plan has inputs \['x'\], expected \['input'\]"),
    ({"outputs": (("output", "bfloat16"),)}, "tensor 'output' has data type .*BF16.* cannot bind"),
])
def test_plans_the_backend_cannot_bind_are_refused(artifacts, fake_gpu, monkeypatch, options, message) -> None:
    install(monkeypatch, strict_tensorrt(**options))
    with pytest.raises(BackendError, match=message):
        TensorRTBackend().initialize(artifacts)


def test_int8_backend_is_refused_with_the_reason(monkeypatch) -> None:
    install(monkeypatch, strict_tensorrt())
    with pytest.raises(BackendError, match="INT8 needs a Q/DQ-quantised graph"):
        TensorRTBackend("int8")


@pytest.mark.skipif(not NO_CUDA, reason="checks the CPU-only case")
def test_tensorrt_without_cuda_is_unavailable(monkeypatch) -> None:
    install(monkeypatch, strict_tensorrt())
    with pytest.raises(BackendUnavailable, match="CUDA device"):
        TensorRTBackend()


def test_misaligned_or_strided_tensors_are_copied_before_binding() -> None:
    base = torch.arange(4 * 1000, dtype=torch.float32).reshape(4, 1000)
    aligned = torch.empty(0)
    for candidate in (base, base[1:], base[2:]):
        if candidate.data_ptr() % tensorrt_backend.ADDRESS_ALIGNMENT == 0:
            aligned = candidate
            break
    if aligned.numel():
        assert bindable(aligned) is aligned
    shifted = base.reshape(-1)[1:1001]  # 4 bytes past an allocation: never 256-byte aligned
    assert shifted.data_ptr() % tensorrt_backend.ADDRESS_ALIGNMENT != 0
    copy = bindable(shifted)
    assert copy.data_ptr() != shifted.data_ptr() and torch.equal(copy, shifted) and copy.is_contiguous()
    strided = base.t()
    assert bindable(strided).is_contiguous() and torch.equal(bindable(strided), strided)


@pytest.mark.skipif(NO_CUDA, reason="binding torch tensors needs a CUDA device")
def test_run_binds_every_tensor_and_enqueues_on_a_side_stream(artifacts, fake_gpu, monkeypatch) -> None:
    trt = install(monkeypatch, strict_tensorrt(outputs=(("output", "float16"), ("output_1", "float32"))))
    backend = TensorRTBackend("fp16")
    backend.initialize(artifacts)
    batch = torch.rand(3, 1, 24, 40)
    outputs = backend._run(batch)
    record = trt.record
    assert record["input_shape"] == (3, 1, 24, 40)
    assert set(record["addresses"]) == {"input", "output", "output_1"}
    assert all(address % 256 == 0 for address in record["addresses"].values())
    assert len(record["executed"]) == 1 and record["executed"][0] != 0  # not the default stream
    assert [(o.dtype, o.device.type, tuple(o.shape)) for o in outputs] == [(torch.float32, "cuda", (3, 1, 24, 40))] * 2
    sliced = torch.rand(9, 1, 16, 16, device="cuda")[1:5]  # a micro-batch cut from a larger batch
    backend._run(sliced.half())
    assert record["input_shape"] == (4, 1, 16, 16) and record["addresses"]["input"] % 256 == 0


# --- a real plan -----------------------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("precision, tolerance", [("fp32", 1e-4), ("fp16", 2e-2)])
def test_a_real_plan_matches_torch(artifacts: ModelArtifacts, precision: str, tolerance: float) -> None:
    pytest.importorskip("tensorrt", reason="TensorRT is not installed here")
    if NO_CUDA:
        pytest.skip("no CUDA device")
    backend = TensorRTBackend(precision)
    backend.initialize(artifacts)
    _, key, built = ensure_plan(artifacts, precision)
    assert not built and key.precision == precision  # initialize stored it
    network = artifacts.network()
    small, large = artifacts.example_input(3), torch.rand(5, 1, 48, 64, generator=torch.Generator().manual_seed(1))
    responses = backend.execute([InferenceRequest("small", small), InferenceRequest("large", large.cuda())])
    for response, inputs in zip(responses, (small, large)):
        assert response.ok, response.error
        got = response.output()
        assert got.dtype == torch.float32 and got.is_cuda
        with torch.inference_mode():
            expected = network(inputs)
        assert got.shape == expected.shape
        assert float((got.cpu() - expected).abs().max()) <= tolerance
    backend.finalize()
