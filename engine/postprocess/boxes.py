"""Axis-aligned box arithmetic shared by every detection model: area, pairwise IoU, greedy NMS.

Boxes are corner boxes (x_min, y_min, x_max, y_max) in any one unit. The
built-in detector (``plugins.nodule_det``), the benchmark SSD (``plugins.zoo``)
and config-only detection models (``engine.model_files.plugin``) all prune and
group their boxes with these, so a fix or a speed-up lands everywhere.
"""

from __future__ import annotations

import torch


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Areas of (..., 4) boxes; degenerate boxes have area 0."""
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)


def pairwise_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(..., N, 4) and (..., M, 4) boxes to their (..., N, M) intersection over union (0 for empty unions)."""
    top_left = torch.maximum(a[..., :, None, :2], b[..., None, :, :2])
    bottom_right = torch.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    intersection = (bottom_right - top_left).clamp(min=0).prod(-1)
    union = box_area(a)[..., :, None] + box_area(b)[..., None, :] - intersection
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
    matrix operation. With ``classes`` (any integer labels: classes, slices),
    boxes with different labels never suppress each other (per-label NMS in one pass).
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
