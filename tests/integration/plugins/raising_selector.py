"""A test plugin whose selector raises on every series (a plugin bug), beside the built-in models.

Loaded by ``tests/faults/test_selector_isolation.py``: the other models must still
run on the series and the engine must start again with that series complete.
"""

from __future__ import annotations

import torch

from engine import hookimpl
from engine.api import ModelResult, ModelSpec, SeriesInfo, Volume


class _Unused:
    """Never runs: the selector takes no series."""

    def preprocess(self, volume: Volume) -> torch.Tensor:
        return torch.zeros(1)

    def postprocess(self, output: torch.Tensor, volume: Volume) -> ModelResult:
        return ModelResult(summary="")


def _raises(series: SeriesInfo) -> bool:
    """A selector with a bug: it reads an attribute SeriesInfo does not have."""
    return series.no_such_field == "CT"  # type: ignore[attr-defined]


@hookimpl
def scanstream_register_models(registry) -> None:
    registry.add(ModelSpec(name="raising-selector", version="1", description="its selector raises (tests only)",
                           selector=_raises, load_network=lambda: torch.nn.Identity(), handler=_Unused()))
