"""Built-in plugin: study-level "nodule present" classification, on chest CT and on chest radiographs.

One ResNet-style classifier design, two sets of weights, two models:
``nodule-cls`` (CT, 2.5D slices, the study probability is the largest slice
probability) and ``nodule-cls-dx`` (one DX/CR radiograph). Both report
``class_probabilities = {"nodule": p}`` and a finding when p >= 0.5.

Trained on generated phantoms by ``python -m plugins.nodule_cls.train --task ct|dx``;
the weights (``weights_ct.pt``, ``weights_dx.pt``, state dicts) are committed
next to this file, and ``python -m plugins.nodule_cls.evaluate`` measures them
on unseen phantoms.
"""

from __future__ import annotations

from pathlib import Path

import torch
from pydicom.uid import UID

from engine import hookimpl
from engine.api import ModelRegistry, ModelSpec, SeriesInfo
from plugins.nodule_cls.handler import CtNoduleClsHandler, DxNoduleClsHandler
from plugins.nodule_cls.network import (
    CT_IN_CHANNELS,
    CT_SIZE,
    DX_IN_CHANNELS,
    DX_SIZE,
    ResNetClassifier,
    ct_network,
    dx_network,
)

CT_WEIGHTS = Path(__file__).with_name("weights_ct.pt")
DX_WEIGHTS = Path(__file__).with_name("weights_dx.pt")
CT_MODEL_NAME = "nodule-cls"
DX_MODEL_NAME = "nodule-cls-dx"
MODEL_VERSION = "1.0.0"
MIN_SLICES = 8
RADIOGRAPH_MODALITIES = ("DX", "CR")
RADIOGRAPH_BODY_PARTS = ("CHEST", "")  # a chest, or a radiograph that does not say


def takes_ct(series: SeriesInfo) -> bool:
    """CT series of at least :data:`MIN_SLICES` slices (instances, or frames of an enhanced CT); any body part."""
    return series.modality == "CT" and max(series.instance_count, series.frame_count) >= MIN_SLICES


def takes_radiograph(series: SeriesInfo) -> bool:
    """One DX or CR image of the chest (or of no stated body part), not a "For Processing" (raw) image."""
    return (series.modality in RADIOGRAPH_MODALITIES
            and series.instance_count == 1 and series.frame_count <= 1
            and series.body_part.strip().upper() in RADIOGRAPH_BODY_PARTS
            and not UID(series.sop_class_uid).name.endswith("For Processing"))


def _load(network: ResNetClassifier, weights: Path) -> ResNetClassifier:
    network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return network.eval()


def load_ct_network(weights: Path = CT_WEIGHTS) -> ResNetClassifier:
    """The CT slice classifier with its committed weights (tensors only: ``weights_only=True``)."""
    return _load(ct_network(), weights)


def load_dx_network(weights: Path = DX_WEIGHTS) -> ResNetClassifier:
    """The radiograph classifier with its committed weights (tensors only: ``weights_only=True``)."""
    return _load(dx_network(), weights)


@hookimpl
def scanstream_register_models(registry: ModelRegistry) -> None:
    """Register ``nodule-cls`` (CT) and ``nodule-cls-dx`` (radiograph)."""
    outputs = ("result_json", "sr", "preview")
    registry.add(ModelSpec(
        name=CT_MODEL_NAME,
        version=MODEL_VERSION,
        description="lung nodule presence on chest CT: 2.5D ResNet slice classifier trained on phantoms, "
                    "study probability = most suspicious slice",
        selector=takes_ct,
        load_network=load_ct_network,
        handler=CtNoduleClsHandler(),
        outputs=outputs,
        max_batch=32,
        input_shape=(CT_IN_CHANNELS, CT_SIZE, CT_SIZE),
        min_input_shape=(CT_IN_CHANNELS, CT_SIZE, CT_SIZE),
        max_input_shape=(CT_IN_CHANNELS, CT_SIZE, CT_SIZE),
    ))
    registry.add(ModelSpec(
        name=DX_MODEL_NAME,
        version=MODEL_VERSION,
        description="lung nodule presence on a chest radiograph (DX/CR): ResNet classifier trained on "
                    "phantom radiographs",
        selector=takes_radiograph,
        load_network=load_dx_network,
        handler=DxNoduleClsHandler(),
        outputs=outputs,
        max_batch=16,
        input_shape=(DX_IN_CHANNELS, DX_SIZE, DX_SIZE),
        min_input_shape=(DX_IN_CHANNELS, DX_SIZE, DX_SIZE),
        max_input_shape=(DX_IN_CHANNELS, DX_SIZE, DX_SIZE),
    ))
