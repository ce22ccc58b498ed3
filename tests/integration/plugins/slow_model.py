"""A test plugin: a model that holds its job for a few seconds, so a test can kill its worker.

Loaded by the fault tests through ``[plugins] modules = ["slow_model"]``.
"""

from __future__ import annotations

import os
import time

import torch

from engine import hookimpl
from engine.api import ModelResult, ModelSpec, SeriesInfo, Volume

HOLD_S = float(os.environ.get("SLOW_MODEL_HOLD_S", "4"))


class SlowHandler:
    """Sleeps in preprocess (standing in for a long inference), then reports the slice count."""

    def preprocess(self, volume: Volume) -> torch.Tensor:
        time.sleep(HOLD_S)
        return torch.from_numpy(volume.voxels[:, None, :4, :4].copy())

    def postprocess(self, output: torch.Tensor, volume: Volume) -> ModelResult:
        return ModelResult(summary=f"slow model: {output.shape[0]} slices", extra={"pid": os.getpid()})


def _takes(series: SeriesInfo) -> bool:
    return series.modality == "CT"


@hookimpl
def scanstream_register_models(registry) -> None:
    registry.add(ModelSpec(
        name="slow-test", version="1", description="holds each job for a few seconds (tests only)",
        selector=_takes, load_network=lambda: torch.nn.Identity(), handler=SlowHandler(),
        outputs=("result_json",),
    ))
