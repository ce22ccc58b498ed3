"""Box arithmetic for the SSD postprocessing: decoding against default boxes, IoU, and greedy NMS without a box loop.

Boxes are (x_min, y_min, x_max, y_max) in units of the image side (0..1),
default boxes (cx, cy, w, h). Everything works on whole tensors; no Python loop
visits boxes one by one.
"""

from __future__ import annotations

import math

import torch

VARIANCES = (0.1, 0.1, 0.2, 0.2)  # SSD's encoding variances (torchvision's BoxCoder weights 10, 10, 5, 5)
MAX_LOG_SCALE = math.log(1000.0 / 16)  # torchvision's clamp on dw, dh before exp


def decode(deltas: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """(..., A, 4) regression (dx, dy, dw, dh) against (A, 4) default boxes to (..., A, 4) corners clipped to 0..1."""
    dxy = deltas[..., :2] * torch.tensor(VARIANCES[:2], dtype=deltas.dtype)
    dwh = (deltas[..., 2:] * torch.tensor(VARIANCES[2:], dtype=deltas.dtype)).clamp(max=MAX_LOG_SCALE)
    centre = anchors[:, :2] + dxy * anchors[:, 2:]
    half = 0.5 * anchors[:, 2:] * dwh.exp()
    return torch.cat([centre - half, centre + half], -1).clamp(0.0, 1.0)


def pairwise_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(..., N, 4) and (..., M, 4) corner boxes to their (..., N, M) intersection over union (0 for empty unions)."""
    top_left = torch.maximum(a[..., :, None, :2], b[..., None, :, :2])
    bottom_right = torch.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    intersection = (bottom_right - top_left).clamp(min=0).prod(-1)
    area_a = (a[..., 2:] - a[..., :2]).clamp(min=0).prod(-1)
    area_b = (b[..., 2:] - b[..., :2]).clamp(min=0).prod(-1)
    union = area_a[..., :, None] + area_b[..., None, :] - intersection
    return torch.where(union > 0, intersection / union.clamp(min=1e-12), torch.zeros_like(union))


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float,
        classes: torch.Tensor | None = None) -> torch.Tensor:
    """Greedy non-maximum suppression; returns the kept indices, highest score first.

    The result is exactly the classic greedy pass (take the best remaining box,
    drop every later box overlapping it by more than ``iou_threshold``, repeat),
    computed as the fixed point of ``keep[j] = not any(keep[i] and suppresses[i, j]
    for i ranked before j)``: iterating that from "keep all" settles the i-th
    ranked box by the i-th round and stops when nothing changes, which takes as
    many rounds as the longest chain of suppressions (a handful), each one
    matrix operation. With ``classes``, boxes of different classes never
    suppress each other (per-class NMS in one pass).
    """
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long)
    order = scores.argsort(descending=True, stable=True)
    ranked = boxes[order]
    suppresses = (pairwise_iou(ranked, ranked) > iou_threshold).triu(diagonal=1)
    if classes is not None:
        ranked_classes = classes[order]
        suppresses &= ranked_classes[:, None] == ranked_classes[None, :]
    keep = torch.ones(len(order), dtype=torch.bool)
    for _ in range(len(order)):
        updated = ~(suppresses & keep[:, None]).any(0)
        if torch.equal(updated, keep):
            break
        keep = updated
    return order[keep]
