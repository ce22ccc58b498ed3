"""MONAI Bundles as ``[[models]]`` entries: read as data with an allow-list, run like MONAI runs them.

The bundle is made here: a spleen-style inference.json (Orientation RAS,
Spacing, ScaleIntensityRange, SlidingWindowInferer with Gaussian blending,
softmax, Invert, AsDiscrete), metadata.json with channel_def, and a small
TorchScript 3D network. ScanStream's mask is compared with MONAI's own
transforms and inferer run on the same voxels.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.api import PluginError
from engine.config.entries import ModelEntryConfig
from engine.model_files.plugin import check_entry_file, resolved, spec_for
from tests.unit.test_volumetric_models import _dice, _sphere_volume

PREPROCESSING = [
    {"_target_": "LoadImaged", "keys": "image"},
    {"_target_": "EnsureChannelFirstd", "keys": "image"},
    {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
    {"_target_": "Spacingd", "keys": "image", "pixdim": "@pixdim", "mode": "bilinear"},
    {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -200, "a_max": 200, "b_min": 0.0, "b_max": 1.0,
     "clip": True},
    {"_target_": "EnsureTyped", "keys": "image"},
]
POSTPROCESSING = [
    {"_target_": "Activationsd", "keys": "pred", "softmax": True},
    {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image"},
    {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
    {"_target_": "SaveImaged", "keys": "pred", "output_dir": "$@output_dir"},
]


class TwoChannel3D(torch.nn.Module):
    """(N, 1, D, H, W) -> (N, 2, D, H, W): background logit 0, foreground 40 x (input - 0.5)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        foreground = 40.0 * (x - 0.5)
        return torch.cat([torch.zeros_like(foreground), foreground], dim=1)


def make_bundle(root: Path, preprocessing: list | None = None, channel_def: dict | None = None) -> Path:
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    torch.jit.script(TwoChannel3D().eval()).save(str(root / "models" / "model.ts"))
    inference = {
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",  # never evaluated
        "output_dir": "$@bundle_root + '/eval'", "pixdim": [1.5, 1.5, 1.5],
        "preprocessing": {"_target_": "Compose", "transforms": preprocessing or PREPROCESSING},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [16, 16, 16], "sw_batch_size": 4,
                    "overlap": 0.5, "mode": "gaussian"},
        "postprocessing": {"_target_": "Compose", "transforms": POSTPROCESSING},
    }
    metadata = {"name": "Sphere segmentation", "version": "0.1.0", "network_data_format": {
        "inputs": {"image": {"type": "image", "format": "hounsfield", "num_channels": 1,
                             "spatial_shape": [16, 16, 16], "dtype": "float32"}},
        "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": 2,
                             "spatial_shape": [16, 16, 16], "dtype": "float32",
                             "channel_def": channel_def or {"0": "background", "1": "spleen"}}}}}
    (root / "configs" / "inference.json").write_text(json.dumps(inference))
    (root / "configs" / "metadata.json").write_text(json.dumps(metadata))
    return root


def _entry(bundle: Path, **extra) -> ModelEntryConfig:
    return ModelEntryConfig.model_validate({"name": "sphere-bundle", "version": "1", "bundle": str(bundle), **extra})


def _monai_mask(volume, network: torch.nn.Module) -> np.ndarray:
    """MONAI's own pipeline on the volume's voxels (a MetaTensor with the series' affine), back on its grid."""
    from monai.data import MetaTensor
    from monai.inferers import SlidingWindowInferer
    from monai.transforms import Compose, Orientation, ScaleIntensityRange, Spacing

    rows, cols = np.asarray(volume.orientation[:3]), np.asarray(volume.orientation[3:6])
    normal = np.cross(rows, cols)
    slice_mm, row_mm, col_mm = volume.spacing
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = rows * col_mm, cols * row_mm, normal * slice_mm, volume.origin
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    image = MetaTensor(torch.from_numpy(np.ascontiguousarray(volume.voxels.transpose(2, 1, 0)))[None],
                       affine=torch.as_tensor(ras))
    pre = Compose([Orientation(axcodes="RAS"), Spacing(pixdim=[1.5, 1.5, 1.5], mode="bilinear"),
                   ScaleIntensityRange(a_min=-200, a_max=200, b_min=0.0, b_max=1.0, clip=True)])
    prepared = pre(image)
    with torch.inference_mode():
        logits = SlidingWindowInferer(roi_size=(16, 16, 16), sw_batch_size=4, overlap=0.5, mode="gaussian")(
            prepared[None], network)[0]
    probabilities = MetaTensor(torch.softmax(logits, dim=0), meta=prepared.meta,
                               applied_operations=prepared.applied_operations)
    inverted = pre.inverse(probabilities)
    labels = inverted.argmax(dim=0).numpy().astype(np.uint8)
    return labels.transpose(2, 1, 0)


def test_bundle_segments_like_monai(tmp_path: Path) -> None:
    entry = resolved(_entry(make_bundle(tmp_path / "bundle")))
    assert entry.labels == ["spleen"] and entry.volumetric.orientation == "RAS"
    assert entry.volumetric.spacing == (1.5, 1.5, 1.5) and entry.max_batch == 4
    check_entry_file(entry)
    spec = spec_for(entry)
    volume, truth = _sphere_volume((1.0, 0.0, 0.0, 0.0, 1.0, 0.0))
    network = spec.load_network()
    with torch.inference_mode():
        result = spec.handler.postprocess(network(spec.handler.preprocess(volume)), volume)
    ours = result.label_map == 1
    assert _dice(ours, truth) >= 0.93
    theirs = _monai_mask(volume, network) == 1
    assert theirs.shape == ours.shape
    assert _dice(ours, theirs) >= 0.99, _dice(ours, theirs)


@pytest.mark.parametrize("change, message", [
    ({"preprocessing": PREPROCESSING[:2] + [{"_target_": "RandFlipd", "keys": "image"}]},
     r"'sphere-bundle'.*preprocessing transform 'RandFlipd' is not one ScanStream maps"),
    ({"preprocessing": PREPROCESSING[:4] + [{"_target_": "ScaleIntensityRanged", "keys": "image",
                                             "a_min": "$-200", "a_max": 200, "clip": True}]},
     r"ScaleIntensityRange\.a_min is a Python expression"),
    ({"channel_def": {"0": "background", "2": "spleen"}}, r"channel_def .* does not name channels 0\.\.1"),
])
def test_bad_bundles_stop_start_up_naming_the_fault(tmp_path: Path, change: dict, message: str) -> None:
    bundle = make_bundle(tmp_path / "bundle", **change)
    with pytest.raises(PluginError, match=message):
        resolved(_entry(bundle))


def test_missing_model_and_mismatched_labels(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "bundle")
    with pytest.raises(PluginError, match=r"labels \['liver', 'spleen'\] do not match the bundle's channel_def"):
        resolved(_entry(bundle, labels=["liver", "spleen"]))
    (bundle / "models" / "model.ts").unlink()
    with pytest.raises(PluginError, match="'sphere-bundle'.*neither models/model.ts nor models/model.onnx"):
        resolved(_entry(bundle))
    with pytest.raises(ValueError, match="give one of file"):
        ModelEntryConfig.model_validate({"name": "x", "version": "1", "bundle": str(bundle), "file": "/m.ts"})
