"""Pre- and postprocessing around the nodule U-Net: lung window in, 3D nodule components out.

The network sees each slice with its two neighbours (2.5D) and was trained on
1.4 mm pixels and 2.5 mm slices: other in-plane spacings are resampled to it
on the way in and the logits back on the way out, and the neighbours are
picked about 2.5 mm away whatever the slice spacing.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import ndimage

from engine.api import Finding, ModelResult, Volume
from engine.postprocess.components import components
from engine.kernels.cpu import pad_to_multiple, resize_slices, run_slice_plan, window_normalise
from engine.kernels.plan import Intensity, SlicePlan
from plugins.chest_ct import LUNG_WINDOW_HU, neighbour_step, working_size
from plugins.nodule_seg.network import DEPTH_MULTIPLE, IN_CHANNELS

THRESHOLD = 0.5
THRESHOLD_LOGIT = math.log(THRESHOLD / (1.0 - THRESHOLD))
MIN_NODULE_ML = 0.05  # smaller components are noise: half the smallest phantom nodule (3 mm radius, 0.11 ml)
CONNECTIVITY = ndimage.generate_binary_structure(3, 3)  # 26-connected components


def preprocess_volume(voxels: np.ndarray | torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """HU (S, H, W) to windowed slices (S, 1, H', W'): resampled to ``size``, lung window on [0, 1], padded.

    Padding is 0, the value of air after windowing. This is the per-slice part
    the CUDA kernels (:mod:`engine.kernels.cuda`) compute too; the handler adds
    the neighbouring slices as channels.
    """
    images = torch.as_tensor(voxels, dtype=torch.float32)[:, None]
    if size is not None:
        images = resize_slices(images, size)
    padded, _ = pad_to_multiple(window_normalise(images, *LUNG_WINDOW_HU), DEPTH_MULTIPLE)
    return padded


def voxel_to_patient(volume: Volume, indices: np.ndarray) -> np.ndarray:
    """Patient coordinates (x, y, z) mm of (slice, row, col) voxel indices, shape (K, 3) -> (K, 3)."""
    return volume.patient_coordinates(indices)


def _summary(findings: list[Finding]) -> str:
    noun = "finding" if len(findings) == 1 else "findings"
    text = f"nodule segmentation: {len(findings)} {noun}"
    if findings:
        text += ", volumes " + ", ".join(f"{f.volume_ml:.2f}" for f in findings) + " ml"
    return text


class NoduleSegHandler:
    """Implements :class:`engine.api.ModelHandler` for :class:`~plugins.nodule_seg.network.UNet2D` (2.5D slices)."""

    def plan(self, volume: Volume) -> SlicePlan:
        """Lung window, resampling to the training pixel size, padding, and the two neighbouring slices."""
        return SlicePlan(size=working_size(volume),
                         intensity=Intensity.window(*LUNG_WINDOW_HU).with_rescale(volume.slope, volume.intercept),
                         multiple=DEPTH_MULTIPLE, context_radius=IN_CHANNELS // 2, context_step=neighbour_step(volume))

    def preprocess(self, volume: Volume) -> torch.Tensor:
        """The volume as a batch of windowed slices with their neighbours (S, 3, H', W'), float32 (CPU path)."""
        return run_slice_plan(volume.stored, self.plan(volume))

    def postprocess(self, output: torch.Tensor, volume: Volume) -> ModelResult:
        """Logits (S, 1, H', W') to 3D nodule components: label map, volumes, centroids."""
        rows, cols = volume.shape[1:]
        height, width = working_size(volume)
        logits = torch.as_tensor(output).detach().to("cpu", torch.float32)[:, :, :height, :width]
        logits = resize_slices(logits, (rows, cols))[:, 0].numpy()
        min_voxels = MIN_NODULE_ML / volume.voxel_volume_ml
        mask = np.zeros(logits.shape, dtype=np.uint8)
        findings: list[Finding] = []
        # probability > THRESHOLD is logit > THRESHOLD_LOGIT (the sigmoid is monotonic): no sigmoid over the whole
        # volume, and components are labelled only where there is foreground (engine.postprocess.components).
        for box, region in components(logits > THRESHOLD_LOGIT, CONNECTIVITY):
            size = int(region.sum())
            if size < min_voxels:
                continue
            mask[box][region] = 1
            offset = np.array([axis.start for axis in box], dtype=float)
            centre = voxel_to_patient(volume, np.argwhere(region).mean(axis=0) + offset)[0]
            probability = 1.0 / (1.0 + math.exp(-float(logits[box][region].max())))
            findings.append(Finding(label="nodule", probability=round(probability, 3),
                                    volume_ml=round(size * volume.voxel_volume_ml, 3), voxel_count=size,
                                    centroid_mm=tuple(round(float(v), 1) for v in centre)))
        findings.sort(key=lambda f: -(f.volume_ml or 0.0))
        return ModelResult(summary=_summary(findings), findings=findings, label_map=mask,
                           segment_labels=["Nodule"])
