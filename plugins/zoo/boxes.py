"""SSD300 box decoding against its default boxes; IoU and NMS are the engine's (:mod:`engine.postprocess.boxes`).

Boxes are (x_min, y_min, x_max, y_max) in units of the image side (0..1),
default boxes (cx, cy, w, h). Everything works on whole tensors; no Python loop
visits boxes one by one.
"""

from __future__ import annotations

import math

import torch

from engine.postprocess.boxes import nms, pairwise_iou

__all__ = ["decode", "nms", "pairwise_iou"]

VARIANCES = (0.1, 0.1, 0.2, 0.2)  # SSD's encoding variances (torchvision's BoxCoder weights 10, 10, 5, 5)
MAX_LOG_SCALE = math.log(1000.0 / 16)  # torchvision's clamp on dw, dh before exp


def decode(deltas: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """(..., A, 4) regression (dx, dy, dw, dh) against (A, 4) default boxes to (..., A, 4) corners clipped to 0..1."""
    dxy = deltas[..., :2] * torch.tensor(VARIANCES[:2], dtype=deltas.dtype)
    dwh = (deltas[..., 2:] * torch.tensor(VARIANCES[2:], dtype=deltas.dtype)).clamp(max=MAX_LOG_SCALE)
    centre = anchors[:, :2] + dxy * anchors[:, 2:]
    half = 0.5 * anchors[:, 2:] * dwh.exp()
    return torch.cat([centre - half, centre + half], -1).clamp(0.0, 1.0)
