"""Backend selection rules: configured name, no input shape, CUDA, and the measured CPU choice."""

from __future__ import annotations

import json

import pytest
import torch

from engine.api import ModelSpec
from engine.runtime.artifacts import ModelArtifacts
from engine.runtime.errors import BackendUnavailable
from engine.runtime.selection import choose_backend, host_key, make_backend, probe_cpu


class Handler:
    def preprocess(self, volume):
        return volume

    def postprocess(self, output, volume):
        return output


def tiny_network() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 1, 1))


def tiny_spec(**kwargs) -> ModelSpec:
    return ModelSpec(name="tiny", version="1", description="", selector=lambda s: True, load_network=tiny_network,
                     handler=Handler(), max_batch=4, **kwargs)


def test_a_configured_backend_is_used_with_that_reason(tmp_path) -> None:
    choice = choose_backend(ModelArtifacts(tiny_spec(input_shape=(1, 8, 8)), tmp_path), "onnxruntime")
    assert (choice.backend, choice.device) == ("onnxruntime", "cpu")
    assert "worker.backend" in choice.reason


def test_an_unknown_backend_name_is_refused_naming_the_key(tmp_path) -> None:
    with pytest.raises(ValueError, match="worker.backend"):
        choose_backend(ModelArtifacts(tiny_spec(), tmp_path), "tvm")


def test_a_model_without_input_shape_runs_on_torch(tmp_path) -> None:
    choice = choose_backend(ModelArtifacts(tiny_spec(), tmp_path), "auto", "cpu")
    assert choice.backend == "torch" and "input_shape" in choice.reason


def test_cuda_without_tensorrt_uses_torch_on_cuda(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr("engine.runtime.selection.tensorrt_importable", lambda: False)
    choice = choose_backend(ModelArtifacts(tiny_spec(input_shape=(1, 8, 8)), tmp_path), "auto", "cuda")
    assert (choice.backend, choice.device) == ("torch", "cuda") and "without TensorRT" in choice.reason


def test_cuda_with_tensorrt_prefers_tensorrt(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr("engine.runtime.selection.tensorrt_importable", lambda: True)
    choice = choose_backend(ModelArtifacts(tiny_spec(input_shape=(1, 8, 8)), tmp_path), "auto", "cuda")
    assert choice.backend == "tensorrt"


def test_cpu_choice_is_measured_once_and_kept(tmp_path) -> None:
    artifacts = ModelArtifacts(tiny_spec(input_shape=(1, 16, 16)), tmp_path)
    choice = choose_backend(artifacts, "auto", "cpu", threads=1)
    assert set(choice.measured) == {"torch", "onnxruntime"}
    assert choice.backend == max(choice.measured, key=choice.measured.__getitem__)
    kept = artifacts.folder() / f"cpu-choice-{host_key(1)}.json"
    assert json.loads(kept.read_text())["backend"] == choice.backend
    kept.write_text(json.dumps({"backend": "torch", "reason": "edited", "measured": {"torch": 1.0}}))
    again = choose_backend(artifacts, "auto", "cpu", threads=1)
    assert again.backend == "torch" and again.reason.startswith("edited (kept in cpu-choice-")
    assert probe_cpu(artifacts, 1, refresh=True).measured.keys() == {"torch", "onnxruntime"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present: torch and TensorRT on cuda may load here")
def test_backends_this_machine_lacks_say_so() -> None:
    with pytest.raises(BackendUnavailable, match="CUDA"):
        make_backend("torch", "cuda")
    with pytest.raises(BackendUnavailable):
        make_backend("tensorrt", "cuda")


def test_an_unknown_backend_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown backend"):
        make_backend("tvm", "cpu")
