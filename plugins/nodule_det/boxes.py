"""Anchors, SSD box encoding and anchor-to-truth matching, vectorised in torch; IoU and NMS from :mod:`engine.postprocess.boxes`.

Boxes are (x_min, y_min, x_max, y_max) in continuous pixel coordinates of the
image they live on: pixel (row r, column c) covers [c, c + 1] x [r, r + 1], so
pixel centres sit at integer + 0.5, the DICOM SCOORD convention of
:class:`engine.api.ImageRegion` (x is the column axis, y the row axis).

Training matches anchors to truth boxes with :func:`match_anchors` and regresses
:func:`encode`'d offsets; the handler inverts them with :func:`decode` and
prunes overlapping boxes with :func:`batched_nms` (the engine's NMS per slice).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from engine.postprocess.boxes import box_area, nms, pairwise_iou

box_iou = pairwise_iou  # the name this plugin's modules and tests use

__all__ = ["AnchorLevel", "IGNORE", "NEGATIVE", "POSITIVE", "VARIANCES", "batched_nms", "box_area", "box_iou", "decode",
           "encode", "grid_anchors", "match_anchors", "nms"]

VARIANCES = (0.1, 0.2)  # SSD's: centre offsets in units of 0.1 anchor sizes, log sizes in units of 0.2
MAX_LOG_SIZE = math.log(1000.0 / 16)  # decode clamps log width/height offsets so exp() cannot overflow

POSITIVE = 1
NEGATIVE = 0
IGNORE = -1


@dataclass(frozen=True)
class AnchorLevel:
    """Square anchors on one feature map: one cell per ``stride`` input pixels, one anchor per size (pixels)."""

    stride: int
    sizes: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.stride < 1 or not self.sizes or min(self.sizes) <= 0:
            raise ValueError(f"an anchor level needs stride >= 1 and positive sizes, got {self}")


def grid_anchors(height: int, width: int, levels: tuple[AnchorLevel, ...]) -> torch.Tensor:
    """All anchors (A, 4) of an input of ``height`` x ``width`` pixels, in the network's output order.

    Per level, cells in row-major order (y, then x), and at each cell the
    level's sizes in order: the order of a head output (N, sizes * 5, H/s, W/s)
    permuted to (N, H/s, W/s, sizes, 5) and flattened. The input must be a
    multiple of every stride (the handler pads it so).
    """
    parts = []
    for level in levels:
        if height % level.stride or width % level.stride:
            raise ValueError(f"input {height} x {width} is not a multiple of the anchor stride {level.stride}")
        rows, cols = height // level.stride, width // level.stride
        cy = (torch.arange(rows, dtype=torch.float32) + 0.5) * level.stride
        cx = (torch.arange(cols, dtype=torch.float32) + 0.5) * level.stride
        sizes = torch.tensor(level.sizes, dtype=torch.float32)
        cy, cx, size = torch.meshgrid(cy, cx, sizes, indexing="ij")
        half = size / 2
        parts.append(torch.stack([cx - half, cy - half, cx + half, cy + half], dim=-1).reshape(-1, 4))
    return torch.cat(parts)


def _centre_size(boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(centre (..., 2), size (..., 2)) of corner boxes."""
    return (boxes[..., :2] + boxes[..., 2:]) / 2, boxes[..., 2:] - boxes[..., :2]


def encode(truth: torch.Tensor, anchors: torch.Tensor, variances: tuple[float, float] = VARIANCES) -> torch.Tensor:
    """SSD regression targets (..., 4) of ``truth`` boxes relative to their ``anchors`` (same shape).

    (dx, dy) = centre offset / (anchor size * v0); (dw, dh) = log(size / anchor size) / v1.
    """
    centre, size = _centre_size(truth)
    anchor_centre, anchor_size = _centre_size(anchors)
    offset = (centre - anchor_centre) / (anchor_size * variances[0])
    scale = torch.log(size.clamp(min=1e-6) / anchor_size) / variances[1]
    return torch.cat([offset, scale], dim=-1)


def decode(deltas: torch.Tensor, anchors: torch.Tensor, variances: tuple[float, float] = VARIANCES) -> torch.Tensor:
    """Corner boxes (..., 4) from SSD regression outputs ``deltas`` and their ``anchors``; inverts :func:`encode`."""
    anchor_centre, anchor_size = _centre_size(anchors)
    centre = anchor_centre + deltas[..., :2] * variances[0] * anchor_size
    size = anchor_size * torch.exp((deltas[..., 2:] * variances[1]).clamp(max=MAX_LOG_SIZE))
    return torch.cat([centre - size / 2, centre + size / 2], dim=-1)


def match_anchors(anchors: torch.Tensor, truth: torch.Tensor, ignored: torch.Tensor | None = None,
                  positive_iou: float = 0.35, negative_iou: float = 0.25,
                  ignore_iou: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """SSD matching of anchors (A, 4) to truth boxes (K, 4): (labels (A,), matched truth index (A,)).

    An anchor is :data:`POSITIVE` when its best IoU with a truth box reaches
    ``positive_iou``, and each truth box also claims its own best anchor (so a
    box smaller than every anchor still has one); :data:`NEGATIVE` when its best
    IoU is below ``negative_iou``; :data:`IGNORE` in between and wherever it
    overlaps an ``ignored`` box (M, 4) by ``ignore_iou`` or more (truth too small
    or cut to learn from). The index is -1 where no truth box applies.
    """
    count = anchors.shape[0]
    labels = torch.full((count,), NEGATIVE, dtype=torch.long)
    index = torch.full((count,), -1, dtype=torch.long)
    if ignored is not None and len(ignored):
        labels[box_iou(anchors, ignored).amax(dim=1) >= ignore_iou] = IGNORE
    if not len(truth):
        return labels, index
    iou = box_iou(anchors, truth)
    best_iou, best_truth = iou.max(dim=1)
    labels[(best_iou >= negative_iou) & (best_iou < positive_iou)] = IGNORE
    positive = best_iou >= positive_iou
    own_anchor = iou.argmax(dim=0)  # each truth box's best anchor, whatever its IoU
    best_truth[own_anchor] = torch.arange(len(truth))
    positive[own_anchor] = True
    labels[positive] = POSITIVE
    index[positive] = best_truth[positive]
    return labels, index


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """:func:`engine.postprocess.boxes.nms` within each group (e.g. slice) at once: boxes of different groups never suppress
    each other."""
    return nms(boxes, scores, iou_threshold, classes=groups)
