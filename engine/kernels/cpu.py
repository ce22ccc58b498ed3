"""Vectorised CPU preprocessing in torch: window, normalise, pad, resample. No Python pixel loops."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def window_normalise(voxels: np.ndarray | torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Clip values to [low, high] and map them linearly onto [0, 1] (float32)."""
    if high <= low:
        raise ValueError(f"window high ({high}) must exceed low ({low})")
    tensor = torch.as_tensor(voxels, dtype=torch.float32)
    return tensor.clamp(low, high).sub_(low).mul_(1.0 / (high - low))


def pad_to_multiple(images: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Zero-pad the last two axes up to a multiple; returns the padded tensor and the original (H, W)."""
    height, width = images.shape[-2:]
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    if pad_h or pad_w:
        images = F.pad(images, (0, pad_w, 0, pad_h))
    return images, (height, width)


def resize_slices(images: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Resample (N, C, H, W) to (N, C, *size); bilinear for images, nearest for masks."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    align = False if mode in ("bilinear", "bicubic") else None
    return F.interpolate(images, size=size, mode=mode, align_corners=align)
