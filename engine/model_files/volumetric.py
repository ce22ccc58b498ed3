"""The handler of a ``[[models]]`` entry with ``volumetric``: a 3D network run by sliding window.

Preprocess: HU on the network's axes (:mod:`engine.model_files.volume_grid`),
resampled linearly to the target spacing, windowed or z-scored, cut into
windows (:mod:`engine.model_files.sliding_window`). Postprocess: the windows'
outputs blended, then back to the source grid (logits resampled linearly and
labels taken, or labels taken and resampled by nearest voxel) and the inverse
permutation. Both halves derive the same
grid from the volume, so they share no state between calls.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from engine.api import Finding, ModelResult, Volume
from engine.config.entries import ModelEntryConfig
from engine.model_files.sliding_window import WindowGrid, blend_weights
from engine.model_files.volume_grid import (AxisPlan, axis_plan, from_network_axes, resample_linear,
                                            resample_nearest, resampled_size, to_network_axes)


def segment_findings(label_map: np.ndarray, labels: list[str], volume: Volume) -> list[Finding]:
    """One finding per label present in ``label_map`` (value i + 1 = ``labels[i]``): voxels, ml, centroid."""
    findings = []
    for index, label in enumerate(labels, start=1):
        mask = label_map == index
        count = int(mask.sum())
        if not count:
            continue
        centre = [float((np.arange(n) * mask.sum(axis=tuple(a for a in range(3) if a != axis))).sum()) / count
                  for axis, n in enumerate(mask.shape)]
        centroid = volume.patient_coordinates(np.array(centre))[0]
        findings.append(Finding(label=label, voxel_count=count, volume_ml=round(count * volume.voxel_volume_ml, 3),
                                centroid_mm=tuple(round(float(v), 1) for v in centroid)))
    return findings


class VolumetricHandler:
    """Implements :class:`engine.api.ModelHandler` for a volumetric entry (segmentation or classification)."""

    def __init__(self, entry: ModelEntryConfig) -> None:
        if entry.volumetric is None:
            raise ValueError(f"models entry {entry.name!r} has no volumetric table")
        self.entry = entry
        self.config = entry.volumetric
        self.weights = blend_weights(self.config.roi_size, self.config.blend, self.config.sigma_scale)

    def _geometry(self, volume: Volume) -> tuple[AxisPlan, tuple[float, float, float], WindowGrid]:
        """The axis plan, the resampling steps (source voxels per network voxel) and the window grid."""
        plan = axis_plan(volume, self.config.orientation)
        spacing = plan.spacing(volume.spacing)
        size = resampled_size(plan.shape(volume.shape), spacing, self.config.spacing)
        steps = tuple(t / mm for t, mm in zip(self.config.spacing or spacing, spacing))
        return plan, steps, WindowGrid(size, self.config.roi_size, self.config.overlap)  # type: ignore[return-value]

    def network_image(self, volume: Volume) -> torch.Tensor:
        """The normalised (D, H, W) image on the network's axes and spacing, before windowing."""
        plan, steps, grid = self._geometry(volume)
        image = to_network_axes(torch.from_numpy(np.ascontiguousarray(volume.voxels, dtype=np.float32)), plan)
        image = resample_linear(image.contiguous(), steps, grid.shape)
        pre = self.entry.preprocessing
        low, high = pre.window
        image = image.clamp(low, high)
        if pre.normalise == "window":
            return (image - low) / (high - low)
        return (image - pre.mean) / pre.std

    def preprocess(self, volume: Volume) -> torch.Tensor:
        """(windows, 1, d, h, w) float32: the windows the network runs on, ``max_batch`` at a time."""
        _, _, grid = self._geometry(volume)
        return grid.cut(self.network_image(volume), self.config.pad_value)

    def postprocess(self, output: Any, volume: Volume) -> ModelResult:
        """Blend the windows, then labels back on the series' grid (segmentation) or probabilities."""
        tensor = torch.as_tensor(output[0] if isinstance(output, (tuple, list)) else output)
        tensor = tensor.detach().to("cpu", torch.float32)
        plan, steps, grid = self._geometry(volume)
        back = tuple(1.0 / step for step in steps)
        if self.entry.output == "classification":
            study = torch.sigmoid(tensor.reshape(tensor.shape[0], -1)).max(dim=0).values
            probabilities = {label: round(float(p), 4) for label, p in zip(self.entry.labels, study)}
            findings = [Finding(label=label, probability=p) for label, p in probabilities.items()
                        if p >= self.entry.threshold]
            return ModelResult(summary=f"{self.entry.name}: " + ", ".join(
                f"{label} {p:.2f}" for label, p in probabilities.items()), findings=findings,
                class_probabilities=probabilities)
        logits = grid.blend(tensor, self.weights)
        source_shape = plan.shape(volume.shape)
        single = logits.shape[0] == 1
        scores = logits
        if self.config.invert == "probabilities":  # MONAI's Activations, then Invert
            scores = torch.sigmoid(logits) if single else torch.softmax(logits, dim=0)
        if self.config.invert != "labels":
            scores = torch.stack([resample_linear(channel, back, source_shape) for channel in scores])
            back = (1.0, 1.0, 1.0)  # already on the source grid
        if single:
            probability = scores[0] if self.config.invert == "probabilities" else torch.sigmoid(scores[0])
            labels = (probability > self.entry.threshold).to(torch.uint8).numpy()
        else:
            labels = scores.argmax(dim=0).to(torch.uint8).numpy()
        label_map = from_network_axes(resample_nearest(labels, back, source_shape), plan)
        findings = segment_findings(label_map, list(self.entry.labels), volume)
        volumes = ", ".join(f"{f.label} {f.volume_ml:.2f} ml" for f in findings) or "nothing segmented"
        return ModelResult(summary=f"{self.entry.name}: {volumes}", findings=findings, label_map=label_map,
                           segment_labels=list(self.entry.labels),
                           segment_codes=self.entry.segment_codes(),
                           extra={"windows": len(grid.origins()), "network_grid": list(grid.shape)})
