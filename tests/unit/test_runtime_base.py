"""The backend interface: per-request validation, grouping by shape, micro-batches, per-request errors."""

from __future__ import annotations

import pytest
import torch

from engine.api import ModelSpec
from engine.runtime.artifacts import ModelArtifacts
from engine.runtime.base import Backend, InferenceRequest, Outputs
from engine.runtime.errors import BackendError


class Doubler(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2


class RecordingBackend(Backend):
    """Runs the network eagerly and records every batch it was given."""

    name = "recording"

    def __init__(self, fail_when_items: int | None = None) -> None:
        super().__init__("cpu")
        self.batches: list[tuple[int, ...]] = []
        self._fail_when_items = fail_when_items
        self._network: torch.nn.Module | None = None

    def initialize(self, artifacts: ModelArtifacts) -> None:
        self._bind(artifacts)
        self._network = artifacts.network()

    def _run(self, batch: torch.Tensor) -> Outputs:
        self.batches.append(tuple(batch.shape))
        if self._fail_when_items is not None and batch.shape[0] == self._fail_when_items:
            raise BackendError("device fell over")
        return (self._network(batch), batch.sum(dim=tuple(range(1, batch.ndim))))

    def finalize(self) -> None:
        self._network = None


def spec(**shape) -> ModelSpec:
    class Handler:
        def preprocess(self, volume):
            return volume

        def postprocess(self, output, volume):
            return output

    return ModelSpec(name="doubler", version="1", description="", selector=lambda s: True, load_network=Doubler,
                     handler=Handler(), max_batch=4, **shape)


def backend_for(model: ModelSpec, tmp_path, **kwargs) -> RecordingBackend:
    backend = RecordingBackend(**kwargs)
    backend.initialize(ModelArtifacts(model, tmp_path))
    return backend


def test_requests_of_one_shape_share_micro_batches_and_get_their_own_rows(tmp_path) -> None:
    backend = backend_for(spec(), tmp_path)
    a, b = torch.arange(6.0).reshape(3, 1, 2), torch.arange(6.0, 18.0).reshape(6, 1, 2)
    responses = backend.execute([InferenceRequest("a", a), InferenceRequest("b", b)])
    assert backend.batches == [(4, 1, 2), (4, 1, 2), (1, 1, 2)]  # 9 items in micro-batches of max_batch 4
    assert [r.key for r in responses] == ["a", "b"]
    assert torch.equal(responses[0].output()[0], a * 2) and torch.equal(responses[1].output()[0], b * 2)
    assert torch.equal(responses[1].outputs[1], b.sum(dim=(1, 2)))  # second network output split the same way


def test_requests_of_different_shapes_run_in_separate_batches(tmp_path) -> None:
    backend = backend_for(spec(), tmp_path)
    responses = backend.execute([InferenceRequest(1, torch.ones(2, 1, 3)), InferenceRequest(2, torch.ones(2, 1, 5))])
    assert sorted(backend.batches) == [(2, 1, 3), (2, 1, 5)]
    assert all(r.ok for r in responses)


def test_a_bad_request_gets_an_error_and_the_others_still_run(tmp_path) -> None:
    backend = backend_for(spec(input_shape=(1, 8, 8), min_input_shape=(1, 8, 8), max_input_shape=(1, 32, 32),
                               shape_multiple=8), tmp_path)
    good = torch.zeros(2, 1, 16, 16)
    responses = backend.execute([
        InferenceRequest("ints", torch.zeros(2, 1, 8, 8, dtype=torch.int16)),
        InferenceRequest("too-big", torch.zeros(1, 1, 64, 64)),
        InferenceRequest("not-multiple", torch.zeros(1, 1, 12, 16)),
        InferenceRequest("wrong-rank", torch.zeros(1, 8, 8)),
        InferenceRequest("good", good),
    ])
    errors = {r.key: r.error for r in responses}
    assert "floating point" in errors["ints"]
    assert "outside the model's input range" in errors["too-big"]
    assert "multiples of 8" in errors["not-multiple"]
    assert "outside" in errors["wrong-rank"]
    assert errors["good"] is None and torch.equal(responses[-1].output()[0], good)
    with pytest.raises(BackendError):
        responses[0].output()


def test_a_failing_batch_fails_only_its_group(tmp_path) -> None:
    backend = backend_for(spec(), tmp_path, fail_when_items=3)
    responses = backend.execute([InferenceRequest("small", torch.ones(3, 1, 2)),
                                 InferenceRequest("other-shape", torch.ones(2, 1, 4))])
    assert "device fell over" in responses[0].error and "recording failed on a batch of 3" in responses[0].error
    assert responses[1].ok


def test_spec_rejects_inconsistent_shapes() -> None:
    from engine.api import PluginError

    with pytest.raises(PluginError, match="input_shape must be 3 or 4"):
        spec(input_shape=(1, 8)).check()
    with pytest.raises(PluginError, match="need input_shape"):
        spec(max_input_shape=(1, 8, 8)).check()
    with pytest.raises(PluginError, match="min_input_shape <= input_shape <= max_input_shape"):
        spec(input_shape=(1, 64, 64), max_input_shape=(1, 32, 32)).check()
