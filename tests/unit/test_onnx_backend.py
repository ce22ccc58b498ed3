"""ONNX export and ONNX Runtime parity with torch for every built-in model.

Tolerance: logits within 1e-3 absolute (float32 graphs; measured ~7e-5 for
nodule-seg, the difference is the order of float additions in convolutions)
and the same thresholded mask at 0.5 probability on all but 0.01 % of pixels.
"""

from __future__ import annotations

import pytest
import torch

from engine.api import ModelRegistry, ModelSpec
from engine.runtime.artifacts import ModelArtifacts, network_fingerprint
from engine.runtime.onnx_backend import OnnxRuntimeBackend
from engine.runtime.torch_backend import TorchBackend
from plugins import nodule_seg

LOGIT_TOLERANCE = 1e-3


def builtin_specs() -> list[ModelSpec]:
    registry = ModelRegistry()
    nodule_seg.scanstream_register_models(registry)
    return registry.all()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("model-cache")


@pytest.mark.parametrize("spec", builtin_specs(), ids=lambda s: s.name)
def test_onnx_runtime_matches_torch_at_several_batch_sizes_and_shapes(spec: ModelSpec, cache) -> None:
    artifacts = ModelArtifacts(spec, cache)
    torch_backend, ort_backend = TorchBackend("cpu"), OnnxRuntimeBackend("cpu")
    torch_backend.initialize(artifacts)
    ort_backend.initialize(artifacts)
    low, high = spec.input_bounds()
    shapes = {spec.input_shape, tuple(max(lo, min(hi, n // 2 // spec.shape_multiple * spec.shape_multiple))
                                      for lo, n, hi in zip(low, spec.input_shape, high))}
    generator = torch.Generator().manual_seed(1)
    for item_shape in shapes:
        for batch in (1, 3):
            inputs = torch.rand((batch, *item_shape), generator=generator)
            expected = torch_backend._run(inputs)[0]
            got = ort_backend._run(inputs)[0]
            assert got.shape == expected.shape
            assert float((got - expected).abs().max()) <= LOGIT_TOLERANCE
            disagree = ((got > 0) != (expected > 0)).float().mean()
            assert float(disagree) <= 1e-4
    assert artifacts.onnx_path().parent.name == artifacts.fingerprint()[:16]


def test_export_has_a_dynamic_batch_axis_and_named_tensors(cache) -> None:
    import onnx

    spec = builtin_specs()[0]
    model = onnx.load(str(ModelArtifacts(spec, cache).onnx_path()))
    (graph_input,) = model.graph.input
    assert graph_input.name == "input" and model.graph.output[0].name == "output"
    dims = graph_input.type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].dim_value  # symbolic batch
    assert dims[1].dim_value == spec.input_shape[0]  # channels fixed


def test_fingerprint_follows_the_weights_and_declared_shapes() -> None:
    spec = builtin_specs()[0]
    network = spec.load_network()
    first = network_fingerprint(network, spec)
    assert first == network_fingerprint(spec.load_network(), spec)
    with torch.no_grad():
        next(network.parameters()).add_(1e-3)
    assert network_fingerprint(network, spec) != first
    from dataclasses import replace

    assert network_fingerprint(spec.load_network(), replace(spec, max_input_shape=(3, 512, 512))) != first


@pytest.mark.parametrize("spin_wait", [False, True])
def test_spin_wait_reaches_the_session(spin_wait: bool, cache) -> None:
    backend = OnnxRuntimeBackend("cpu", threads=1, spin_wait=spin_wait)
    backend.initialize(ModelArtifacts(builtin_specs()[0], cache))
    options = backend._session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == ("1" if spin_wait else "0")
