"""Plugin: low-dose CT noise reduction with a small convolutional denoising autoencoder, output as a derived series.

Trained on generated phantoms (low-dose version in, standard-dose version as
the target) by ``python -m plugins.ct_denoise.train``; the weights
(``weights.pt``, a state dict) are committed next to this file, and
``python -m plugins.ct_denoise.evaluate`` measures them on unseen phantoms.

Only series marked as low dose are taken (:func:`takes_series`): denoising an
ordinary CT would alter a diagnostic series for nothing. The mark is the
SeriesDescription, the one header value a selector sees that scanners use for
it: "low dose", "low-dose", "lowdose" or "LDCT", case-insensitive. The derived
series this model writes is described "ct-denoise <version> derived", so it is
never taken again.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from engine import hookimpl
from engine.api import ModelRegistry, ModelSpec, SeriesInfo
from plugins.ct_denoise.handler import CtDenoiseHandler
from plugins.ct_denoise.network import DEPTH_MULTIPLE, IN_CHANNELS, DenoiseNet

WEIGHTS = Path(__file__).with_name("weights.pt")
MODEL_NAME = "ct-denoise"
MODEL_VERSION = "1.0.0"
MIN_SLICES = 8
LOW_DOSE_RE = re.compile(r"\blow[\s_-]?dose\b|\bldct\b", re.IGNORECASE)


def is_low_dose(description: str) -> bool:
    """Whether a SeriesDescription marks the series as low dose ("Chest LOW DOSE", "low-dose", "LDCT 1mm")."""
    return bool(LOW_DOSE_RE.search(description or ""))


def takes_series(series: SeriesInfo) -> bool:
    """CT series of at least :data:`MIN_SLICES` slices whose description marks them low dose."""
    return (series.modality == "CT" and max(series.instance_count, series.frame_count) >= MIN_SLICES
            and is_low_dose(series.series_description))


def load_network(weights: Path = WEIGHTS) -> DenoiseNet:
    """Build the network and load its committed weights (tensors only: ``weights_only=True``)."""
    network = DenoiseNet()
    network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return network.eval()


def model_spec() -> ModelSpec:
    """The ``ct-denoise`` ModelSpec."""
    return ModelSpec(
        name=MODEL_NAME,
        version=MODEL_VERSION,
        description="low-dose CT noise reduction: 2.5D convolutional denoising autoencoder trained on phantom "
                    "chest CT, output as a derived CT series",
        selector=takes_series,
        load_network=load_network,
        handler=CtDenoiseHandler(),
        outputs=("result_json", "derived_series", "preview"),
        max_batch=16,
        input_shape=(IN_CHANNELS, 256, 256),
        min_input_shape=(IN_CHANNELS, DEPTH_MULTIPLE, DEPTH_MULTIPLE),
        max_input_shape=(IN_CHANNELS, 1024, 1024),
        shape_multiple=DEPTH_MULTIPLE,
    )


@hookimpl
def scanstream_register_models(registry: ModelRegistry) -> None:
    """Register ``ct-denoise``."""
    registry.add(model_spec())
