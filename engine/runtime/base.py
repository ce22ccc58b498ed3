"""The one interface every model backend implements: initialize, execute a batch, finalize.

A backend runs one network. :meth:`Backend.execute` takes several requests (the
items of several jobs, gathered by the worker's batcher), checks each against the
model's declared input shape, groups the valid ones by shape, runs each group in
micro-batches of at most ``max_batch`` items and gives every request its own
response: its slice of the outputs, or the reason it failed. One bad request
never fails the others.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from engine.runtime.errors import BackendError

if TYPE_CHECKING:
    from engine.runtime.artifacts import ModelArtifacts

Outputs = tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class InferenceRequest:
    """The items (first axis) of one job for one model call; ``key`` identifies the job."""

    key: Hashable
    inputs: torch.Tensor


@dataclass(frozen=True)
class InferenceResponse:
    """What one request got: ``outputs`` (one tensor per network output, first axis = its items) or ``error``."""

    key: Hashable
    outputs: Outputs | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True when the request has outputs."""
        return self.error is None

    def output(self) -> torch.Tensor | Outputs:
        """The single output tensor (or the tuple for multi-output networks); raises :class:`BackendError` on error."""
        if self.outputs is None:
            raise BackendError(self.error or "no outputs")
        return self.outputs[0] if len(self.outputs) == 1 else self.outputs


class Backend(ABC):
    """A runtime for one network. Subclasses implement :meth:`initialize`, :meth:`_run` and :meth:`finalize`."""

    name: str = "backend"

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self.max_batch = 1
        self.input_bounds: tuple[tuple[int, ...], tuple[int, ...]] | None = None
        self.shape_multiple = 1

    def _bind(self, artifacts: "ModelArtifacts") -> None:
        """Take the limits every backend enforces from the model's spec."""
        spec = artifacts.spec
        self.max_batch = spec.max_batch
        self.input_bounds = spec.input_bounds() if spec.input_shape else None
        self.shape_multiple = spec.shape_multiple

    @abstractmethod
    def initialize(self, artifacts: "ModelArtifacts") -> None:
        """Load or build what the runtime needs from ``artifacts`` (network, ONNX file, engine plan)."""

    @abstractmethod
    def _run(self, batch: torch.Tensor) -> Outputs:
        """Run one batch of at most ``max_batch`` items of one shape; outputs have the batch as first axis."""

    @abstractmethod
    def finalize(self) -> None:
        """Release the runtime's memory; the backend can be initialized again afterwards."""

    def describe(self) -> str:
        """Backend and device, for logs and ``result.json``."""
        return f"{self.name}:{self.device}"

    def check_request(self, inputs: torch.Tensor) -> str | None:
        """Why ``inputs`` cannot run on this model, or None when it can."""
        if not isinstance(inputs, torch.Tensor):
            return f"inputs must be a torch.Tensor, got {type(inputs).__name__}"
        if inputs.ndim < 2 or inputs.shape[0] < 1:
            return f"inputs must be (items, ...) with at least one item, got shape {tuple(inputs.shape)}"
        if not inputs.is_floating_point():
            return f"inputs must be floating point, got {inputs.dtype}"
        if self.input_bounds is not None:
            low, high = self.input_bounds
            item = tuple(int(n) for n in inputs.shape[1:])
            if len(item) != len(low) or not all(lo <= n <= hi for lo, n, hi in zip(low, item, high)):
                return f"item shape {item} outside the model's input range {low}..{high}"
            varying = [n for lo, n, hi in zip(low, item, high) if lo != hi]
            if any(n % self.shape_multiple for n in varying):
                return f"item shape {item}: varying axes must be multiples of {self.shape_multiple}"
        return None

    def execute(self, requests: Sequence[InferenceRequest]) -> list[InferenceResponse]:
        """Run every request, batching those of equal item shape together; one response per request, in order."""
        responses: dict[int, InferenceResponse] = {}
        groups: dict[tuple[tuple[int, ...], torch.dtype], list[int]] = {}
        for index, request in enumerate(requests):
            problem = self.check_request(request.inputs)
            if problem is not None:
                responses[index] = InferenceResponse(request.key, error=problem)
                continue
            groups.setdefault((tuple(request.inputs.shape[1:]), request.inputs.dtype), []).append(index)
        for members in groups.values():
            parts = [requests[i].inputs for i in members]
            try:
                outputs = self._run_all(torch.cat(parts) if len(parts) > 1 else parts[0])
            except (BackendError, RuntimeError, ValueError, MemoryError) as error:
                reason = f"{self.name} failed on a batch of {sum(int(p.shape[0]) for p in parts)}: {error}"
                for i in members:
                    responses[i] = InferenceResponse(requests[i].key, error=reason)
                continue
            start = 0
            for i, part in zip(members, parts):
                stop = start + int(part.shape[0])
                responses[i] = InferenceResponse(requests[i].key, outputs=tuple(o[start:stop] for o in outputs))
                start = stop
        return [responses[i] for i in range(len(requests))]

    def _run_all(self, batch: torch.Tensor) -> Outputs:
        """Run ``batch`` in micro-batches of at most ``max_batch`` and join the outputs along the first axis."""
        chunks = [self._run(batch[start:start + self.max_batch]) for start in range(0, int(batch.shape[0]),
                                                                                        self.max_batch)]
        if len(chunks) == 1:
            return chunks[0]
        return tuple(torch.cat(parts) for parts in zip(*chunks))
