"""Built-in plugin: lung-nodule segmentation with a small 2.5D U-Net, output as DICOM SEG and JSON.

Trained on generated phantoms by ``python -m plugins.nodule_seg.train``; the
weights (``weights.pt``, a state dict) are committed next to this file, and
``python -m plugins.nodule_seg.evaluate`` measures them on unseen phantoms.
"""

from __future__ import annotations

from pathlib import Path

import torch

from engine import hookimpl
from engine.api import ModelRegistry, ModelSpec, SeriesInfo
from plugins.nodule_seg.handler import NoduleSegHandler
from plugins.nodule_seg.network import DEPTH_MULTIPLE, IN_CHANNELS, UNet2D

WEIGHTS = Path(__file__).with_name("weights.pt")
MODEL_NAME = "nodule-seg"
MODEL_VERSION = "1.0.0"
MIN_SLICES = 8


def takes_series(series: SeriesInfo) -> bool:
    """CT series of at least :data:`MIN_SLICES` slices (instances, or frames of an enhanced CT); any body part."""
    return series.modality == "CT" and max(series.instance_count, series.frame_count) >= MIN_SLICES


def load_network(weights: Path = WEIGHTS) -> UNet2D:
    """Build the U-Net and load its committed weights (tensors only: ``weights_only=True``)."""
    network = UNet2D()
    network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return network.eval()


@hookimpl
def scanstream_register_models(registry: ModelRegistry) -> None:
    """Register ``nodule-seg``."""
    registry.add(ModelSpec(
        name=MODEL_NAME,
        version=MODEL_VERSION,
        description="lung nodule segmentation: 2.5D U-Net trained on phantom chest CT, nodules as DICOM SEG",
        selector=takes_series,
        load_network=load_network,
        handler=NoduleSegHandler(),
        outputs=("result_json", "seg", "preview"),
        max_batch=16,
        input_shape=(IN_CHANNELS, 256, 256),
        min_input_shape=(IN_CHANNELS, DEPTH_MULTIPLE, DEPTH_MULTIPLE),
        max_input_shape=(IN_CHANNELS, 1024, 1024),
        shape_multiple=DEPTH_MULTIPLE,
    ))
