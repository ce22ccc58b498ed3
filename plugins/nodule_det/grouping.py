"""Group per-slice detections into 3D findings: overlapping boxes on consecutive slices are one nodule.

A nodule spans several slices and the detector boxes it on each; a vessel's
cross-section also moves from slice to slice, but it is the network's job to
drop those. Grouping is a connected-components pass over a graph whose edges
join boxes on adjacent slices that overlap by at least :data:`LINK_IOU`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from plugins.nodule_det.boxes import box_iou

LINK_IOU = 0.1  # boxes of the same nodule on adjacent slices overlap much more; different nodules not at all


@dataclass
class SliceBox:
    """One kept detection: slice index, (x_min, y_min, x_max, y_max) box and score."""

    slice_index: int
    box: tuple[float, float, float, float]
    score: float


def group_detections(slices: torch.Tensor, boxes: torch.Tensor, scores: torch.Tensor,
                     max_gap: int = 1, link_iou: float = LINK_IOU) -> list[list[SliceBox]]:
    """Detections (slice (D,), box (D, 4), score (D,)) to groups, one box per slice, sorted by slice.

    Boxes whose slices differ by 1 to ``max_gap`` (1: consecutive slices only)
    and whose IoU is at least ``link_iou`` are joined; within a group, the
    best-scoring box of each slice stands for that slice. Groups come out
    ordered by their best score, highest first.
    """
    count = len(boxes)
    if not count:
        return []
    slices = slices.to(torch.long)
    gap = (slices[:, None] - slices[None, :]).abs()
    linked = (gap >= 1) & (gap <= max_gap) & (box_iou(boxes, boxes) >= link_iou)
    rows, cols = np.nonzero(linked.numpy())
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(count, count))
    _, component = connected_components(graph, directed=False)
    order = np.lexsort((-scores.numpy(), slices.numpy(), component))  # by group, slice, then best score first
    groups: dict[int, dict[int, SliceBox]] = {}
    for i in order.tolist():
        per_slice = groups.setdefault(int(component[i]), {})
        s = int(slices[i])
        if s not in per_slice:
            per_slice[s] = SliceBox(s, tuple(float(v) for v in boxes[i].tolist()), float(scores[i]))
    result = [sorted(per_slice.values(), key=lambda b: b.slice_index) for per_slice in groups.values()]
    return sorted(result, key=lambda group: -max(b.score for b in group))
