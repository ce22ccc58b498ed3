"""The built-in nodule U-Net on phantoms from seeds never used in training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydicom.uid import CTImageStorage
from scipy import ndimage

from engine.api import ModelRegistry, SeriesInfo, Volume
from engine.phantom import generate_ct_phantom
from plugins import nodule_seg

EVAL_SEEDS = range(1, 11)   # training uses 100000+; see plugins/nodule_seg/train.py
DICE_FLOOR = 0.85           # issue 2 asks 0.8, the model-families issue 0.85


@pytest.fixture(scope="module")
def model():
    registry = ModelRegistry()
    nodule_seg.scanstream_register_models(registry)
    spec = registry.get("nodule-seg")
    network = spec.load_network()
    torch.set_num_threads(2)

    def run(phantom):
        volume = Volume(voxels=phantom.hu.astype(np.float32), spacing=phantom.spacing, origin=phantom.origin,
                        orientation=(1, 0, 0, 0, 1, 0), sources=[], frames=[(i, 1) for i in range(len(phantom.hu))],
                        series=SeriesInfo("1.2", "1.2.3", "CT", CTImageStorage, instance_count=len(phantom.hu)))
        with torch.inference_mode():
            output = torch.cat([network(chunk) for chunk in spec.handler.preprocess(volume).split(16)])
        return spec.handler.postprocess(output, volume)

    return run


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(1, int(a.sum() + b.sum()))


def test_dice_on_unseen_phantoms(model) -> None:
    """Mean Dice >= the floor, every nodule found, at most one spurious component over all studies."""
    scores, missed, spurious = [], 0, 0
    for seed in EVAL_SEEDS:
        phantom = generate_ct_phantom(seed, nodules=1 + seed % 3)
        result = model(phantom)
        predicted = result.label_map.astype(bool)
        scores.append(dice(predicted, phantom.nodule_mask))
        truth_labels, truth_count = ndimage.label(phantom.nodule_mask)
        missed += truth_count - len(set(np.unique(truth_labels[predicted])) - {0})
        predicted_labels, predicted_count = ndimage.label(predicted)
        spurious += predicted_count - len(set(np.unique(predicted_labels[phantom.nodule_mask])) - {0})
        assert predicted_count == len(result.findings)
    assert float(np.mean(scores)) >= DICE_FLOOR, scores
    assert missed == 0
    assert spurious <= 1


def test_no_findings_without_nodules_and_volumes_are_physical(model) -> None:
    for seed in (11, 12, 13):
        assert model(generate_ct_phantom(seed, nodules=0)).findings == []
    phantom = generate_ct_phantom(14, nodules=1)
    (finding,) = model(phantom).findings
    (centre, radius), = phantom.nodules
    true_ml = 4.0 / 3.0 * np.pi * radius ** 3 / 1000.0
    assert finding.volume_ml == pytest.approx(true_ml, rel=0.35)
    expected_xyz = (centre[2], centre[1], centre[0])
    assert np.allclose(finding.centroid_mm, expected_xyz, atol=3.0)
