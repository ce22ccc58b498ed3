"""Pre- and postprocessing of the nodule U-Net: lung window in, 3D components out."""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from engine.api import Finding, ModelResult, Volume
from engine.kernels.cpu import pad_to_multiple, window_normalise
from plugins.nodule_seg.network import DEPTH_MULTIPLE

LUNG_WINDOW_HU = (-1000.0, 400.0)
THRESHOLD = 0.5
MIN_COMPONENT_VOXELS = 6


def preprocess_volume(voxels: np.ndarray) -> torch.Tensor:
    """HU volume (S, H, W) to network input (S, 1, H', W'), lung window mapped to [0, 1], padded."""
    images = window_normalise(voxels, *LUNG_WINDOW_HU)[:, None]
    padded, _ = pad_to_multiple(images, DEPTH_MULTIPLE)
    return padded


def _centroid_mm(volume: Volume, index: np.ndarray) -> tuple[float, float, float]:
    """Patient coordinates (mm) of a (slice, row, col) voxel index."""
    row_dir, col_dir = np.asarray(volume.orientation[:3]), np.asarray(volume.orientation[3:6])
    normal = np.cross(row_dir, col_dir)
    s, r, c = index
    ss, rs, cs = volume.spacing
    point = np.asarray(volume.origin) + c * cs * row_dir + r * rs * col_dir + s * ss * normal
    return (round(float(point[0]), 1), round(float(point[1]), 1), round(float(point[2]), 1))


class NoduleSegHandler:
    """Implements :class:`engine.api.ModelHandler` for :class:`UNet2D` slice by slice."""

    def preprocess(self, volume: Volume) -> torch.Tensor:
        return preprocess_volume(volume.voxels)

    def postprocess(self, output: torch.Tensor, volume: Volume) -> ModelResult:
        slices, rows, cols = volume.voxels.shape
        probability = torch.sigmoid(output[:, 0, :rows, :cols]).numpy()
        labels, count = ndimage.label(probability > THRESHOLD)
        sizes = np.bincount(labels.ravel(), minlength=count + 1)
        keep = np.flatnonzero(sizes >= MIN_COMPONENT_VOXELS)
        keep = keep[keep > 0]
        mask = np.isin(labels, keep)
        centroids = ndimage.center_of_mass(mask, labels, keep) if len(keep) else []
        peaks = ndimage.maximum(probability, labels, keep) if len(keep) else []
        findings = [
            Finding(label="nodule", probability=round(float(peak), 3),
                    volume_ml=round(float(sizes[k]) * volume.voxel_volume_ml, 3), voxel_count=int(sizes[k]),
                    centroid_mm=_centroid_mm(volume, np.asarray(centre)))
            for k, centre, peak in zip(keep, centroids, np.atleast_1d(peaks))
        ]
        findings.sort(key=lambda f: -(f.volume_ml or 0))
        volumes = ", ".join(f"{f.volume_ml:.2f}" for f in findings)
        summary = f"nodule segmentation: {len(findings)} finding(s)" + (f", volumes {volumes} ml" if findings else "")
        return ModelResult(summary=summary, findings=findings, label_map=mask.astype(np.uint8),
                           segment_labels=["Nodule"])
