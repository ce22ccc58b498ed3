"""Plugin: lung-nodule detection with a small single-shot detector (SSD-style), output as boxes per slice.

Slice-wise on 2.5D input, the boxes of consecutive slices grouped into 3D
findings. Trained on generated phantoms by ``python -m plugins.nodule_det.train``;
the weights (``weights.pt``, a state dict) are committed next to this file, and
``python -m plugins.nodule_det.evaluate`` measures them on unseen phantoms.
"""

from __future__ import annotations

from pathlib import Path

import torch

from engine import hookimpl
from engine.api import ModelRegistry, ModelSpec, SeriesInfo
from plugins.nodule_det.handler import NoduleDetHandler
from plugins.nodule_det.network import IN_CHANNELS, SHAPE_MULTIPLE, SingleShotDetector

WEIGHTS = Path(__file__).with_name("weights.pt")
MODEL_NAME = "nodule-det"
MODEL_VERSION = "1.0.0"
MIN_SLICES = 8


def takes_series(series: SeriesInfo) -> bool:
    """CT series of at least :data:`MIN_SLICES` slices (instances, or frames of an enhanced CT); any body part."""
    return series.modality == "CT" and max(series.instance_count, series.frame_count) >= MIN_SLICES


def load_network(weights: Path = WEIGHTS) -> SingleShotDetector:
    """Build the detector and load its committed weights (tensors only: ``weights_only=True``)."""
    network = SingleShotDetector()
    network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return network.eval()


@hookimpl
def scanstream_register_models(registry: ModelRegistry) -> None:
    """Register ``nodule-det``."""
    registry.add(ModelSpec(
        name=MODEL_NAME,
        version=MODEL_VERSION,
        description="lung nodule detection: single-shot detector on 2.5D slices trained on phantom chest CT, "
                    "boxes per slice grouped into 3D findings",
        selector=takes_series,
        load_network=load_network,
        handler=NoduleDetHandler(),
        outputs=("result_json", "sr", "preview"),
        max_batch=16,
        input_shape=(IN_CHANNELS, 256, 256),
        min_input_shape=(IN_CHANNELS, SHAPE_MULTIPLE, SHAPE_MULTIPLE),
        max_input_shape=(IN_CHANNELS, 1024, 1024),
        shape_multiple=SHAPE_MULTIPLE,
    ))
