"""TensorRT backend: plan keys and cache everywhere; the build against a strict stand-in; a real plan where TensorRT runs.

The stand-in ``tensorrt`` module exposes only the documented names the backend
may use (a misspelt or removed API fails here), and records what it was given.
"""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from engine.runtime.artifacts import ModelArtifacts
from engine.runtime.base import BackendError, BackendUnavailable
from engine.runtime.tensorrt_backend import PlanCache, TensorRTBackend, build_plan, plan_key
from tests.unit.test_selection import tiny_spec


@pytest.fixture
def artifacts(tmp_path) -> ModelArtifacts:
    spec = tiny_spec(input_shape=(1, 32, 32), min_input_shape=(1, 16, 16), max_input_shape=(1, 64, 64),
                     shape_multiple=8)
    return ModelArtifacts(spec, tmp_path)


def test_plan_key_profile_comes_from_the_spec(artifacts: ModelArtifacts) -> None:
    key = plan_key(artifacts, "10.8.0", "sm_90", "fp16")
    assert key.profile_shapes() == ((1, 1, 16, 16), (4, 1, 32, 32), (4, 1, 64, 64))  # max_batch 4
    assert key.fingerprint == artifacts.fingerprint()
    assert key.filename().startswith("plan-") and key.filename().endswith(".engine")


@pytest.mark.parametrize("change", [
    {"fingerprint": "0" * 64}, {"tensorrt_version": "11.4.0"}, {"compute_capability": "sm_80"},
    {"precision": "fp32"}, {"batch": (1, 8, 8)}, {"item_min": (1, 8, 8)}, {"item_opt": (1, 48, 48)},
    {"item_max": (1, 128, 128)},
])
def test_every_key_field_changes_the_plan_file(artifacts: ModelArtifacts, change: dict) -> None:
    key = plan_key(artifacts, "10.8.0", "sm_90")
    assert plan_key(artifacts, "10.8.0", "sm_90").filename() == key.filename()
    assert replace(key, **change).filename() != key.filename()


def test_int8_and_shapeless_models_are_refused(artifacts: ModelArtifacts, tmp_path) -> None:
    with pytest.raises(BackendError, match="INT8 needs a Q/DQ"):
        plan_key(artifacts, "10.8.0", "sm_90", "int8")
    with pytest.raises(BackendError, match="declares no input_shape"):
        plan_key(ModelArtifacts(tiny_spec(), tmp_path), "10.8.0", "sm_90")


def test_plan_cache_round_trip_with_sidecar(artifacts: ModelArtifacts, tmp_path) -> None:
    cache = PlanCache(tmp_path / "plans")
    key = plan_key(artifacts, "10.8.0", "sm_90")
    assert cache.load(key) is None
    path = cache.store(key, b"serialized plan")
    assert cache.load(key) == b"serialized plan" and path.name == key.filename()
    (entry,) = cache.entries()
    assert entry["precision"] == "fp16" and entry["compute_capability"] == "sm_90"
    assert [p.name for p in (tmp_path / "plans").iterdir() if p.name.startswith(".")] == []  # no temp files left


def test_without_tensorrt_the_backend_says_so() -> None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(BackendUnavailable, match="TensorRT is not importable"):
            TensorRTBackend()
    else:
        pytest.skip("TensorRT is installed here")


class StrictTensorRT:
    """Only the documented TensorRT names the backend uses; records the build."""

    def __init__(self, parse_ok: bool = True, build_ok: bool = True) -> None:
        self.record: dict = {}
        record = self.record

        class Logger:
            WARNING = "warning"

            def __init__(self, severity):
                record["logger"] = severity

        class Profile:
            def set_shape(self, name, low, opt, high):
                record["profile"] = (name, tuple(low), tuple(opt), tuple(high))

        class Config:
            def set_memory_pool_limit(self, pool, size):
                record["workspace"] = (pool, size)

            def add_optimization_profile(self, profile):
                record["profiles_added"] = record.get("profiles_added", 0) + 1

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                record["network_flags"] = flags
                return "network"

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                record["built"] = network
                return b"PLAN" if build_ok else None

        class OnnxParser:
            num_errors = 0 if parse_ok else 2

            def __init__(self, network, logger):
                pass

            def parse(self, data):
                record["onnx_bytes"] = len(data)
                return parse_ok

            def get_error(self, index):
                return f"error {index}"

        self.Logger, self.Builder, self.OnnxParser = Logger, Builder, OnnxParser
        self.NetworkDefinitionCreationFlag = SimpleNamespace(STRONGLY_TYPED=1)
        self.MemoryPoolType = SimpleNamespace(WORKSPACE="workspace")
        self.__version__ = "10.8.0"


def test_build_is_strongly_typed_with_one_profile_and_no_precision_flag(artifacts: ModelArtifacts, tmp_path) -> None:
    trt = StrictTensorRT()
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"onnx!")
    key = plan_key(artifacts, trt.__version__, "sm_90", "fp16")
    assert build_plan(trt, onnx, key, model="tiny", workspace_bytes=123) == b"PLAN"
    assert trt.record["network_flags"] == 1 << 1  # STRONGLY_TYPED: precision comes from the fp16 graph
    assert trt.record["profile"] == ("input", (1, 1, 16, 16), (4, 1, 32, 32), (4, 1, 64, 64))
    assert trt.record["profiles_added"] == 1 and trt.record["workspace"] == ("workspace", 123)
    assert trt.record["onnx_bytes"] == 5


def test_tensorrt_11_networks_need_no_flag(artifacts: ModelArtifacts, tmp_path) -> None:
    trt = StrictTensorRT()
    trt.NetworkDefinitionCreationFlag = SimpleNamespace()  # 11.x: strongly typed always, flag may be gone
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"x")
    build_plan(trt, onnx, plan_key(artifacts, "11.4.0", "sm_90"), model="tiny")
    assert trt.record["network_flags"] == 0


def test_parse_and_build_failures_name_the_model(artifacts: ModelArtifacts, tmp_path) -> None:
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"x")
    key = plan_key(artifacts, "10.8.0", "sm_90")
    with pytest.raises(BackendError, match="model 'tiny': TensorRT could not parse m.onnx: error 0; error 1"):
        build_plan(StrictTensorRT(parse_ok=False), onnx, key, model="tiny")
    with pytest.raises(BackendError, match="model 'tiny': TensorRT failed to build a fp16 plan"):
        build_plan(StrictTensorRT(build_ok=False), onnx, key, model="tiny")


@pytest.mark.gpu
@pytest.mark.parametrize("precision, tolerance", [("fp32", 1e-4), ("fp16", 2e-2)])
def test_a_real_plan_matches_torch(artifacts: ModelArtifacts, precision: str, tolerance: float) -> None:
    pytest.importorskip("tensorrt", reason="TensorRT is not installed here")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    backend = TensorRTBackend(precision)
    backend.initialize(artifacts)
    inputs = artifacts.example_input(3)
    got = backend._run(inputs)[0].cpu()
    with torch.inference_mode():
        expected = artifacts.network()(inputs)
    assert float((got - expected).abs().max()) <= tolerance
