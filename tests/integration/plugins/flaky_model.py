"""A test plugin: a model that fails while a flag file exists and succeeds once it is gone.

Loaded by the console's browser tests (``[plugins] modules = ["flaky_model"]``)
with ``FLAKY_MODEL_FLAG`` naming the file: a job run while it exists fails
(retryably, so with ``broker.max_attempts = 1`` it is dead-lettered); after the
file is removed, Requeue makes the job run again and succeed, filing a
``result.json`` and a preview.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from engine import hookimpl
from engine.api import Finding, ModelResult, ModelSpec, SeriesInfo, Volume


class FlakyHandler:
    """Passes a few pixels through; the result names the slice count, or the job fails while the flag is up."""

    def preprocess(self, volume: Volume) -> torch.Tensor:
        return torch.from_numpy(volume.voxels[:, None, :8, :8].copy())

    def postprocess(self, output: torch.Tensor, volume: Volume) -> ModelResult:
        if Path(os.environ.get("FLAKY_MODEL_FLAG", "")).is_file():
            raise RuntimeError("flaky-test fails while its flag file exists")
        return ModelResult(summary=f"flaky test model: {output.shape[0]} slices",
                           findings=[Finding(label="slices", probability=1.0)])


def _takes(series: SeriesInfo) -> bool:
    """Any CT series."""
    return series.modality == "CT"


@hookimpl
def scanstream_register_models(registry) -> None:
    registry.add(ModelSpec(
        name="flaky-test", version="1", description="fails while a flag file exists (tests only)",
        selector=_takes, load_network=lambda: torch.nn.Identity(), handler=FlakyHandler(),
        outputs=("result_json", "preview"),
    ))
