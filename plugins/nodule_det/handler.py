"""Pre- and postprocessing around the nodule detector: lung window in, 3D nodule findings with boxes out.

The network sees each slice with its two neighbours (2.5D) and was trained on
1.4 mm pixels and 2.5 mm slices: other in-plane spacings are resampled to it
on the way in and the boxes scaled back to the volume's pixel grid on the way
out; the neighbours are picked about 2.5 mm away whatever the slice spacing.
Per slice: decode the anchors' boxes, keep scores above :data:`SCORE_THRESHOLD`,
suppress overlaps (NMS); then boxes on consecutive slices that overlap become
one finding (:mod:`plugins.nodule_det.grouping`).
"""

from __future__ import annotations

import numpy as np
import torch

from engine.api import Finding, ImageRegion, ModelResult, Volume
from engine.kernels.cpu import run_slice_plan
from engine.kernels.plan import Intensity, SlicePlan
from engine.logs import get_logger
from plugins.chest_ct import LUNG_WINDOW_HU, neighbour_step, working_size
from plugins.nodule_det.boxes import batched_nms, decode, grid_anchors
from plugins.nodule_det.grouping import SliceBox, group_detections
from plugins.nodule_det.network import IN_CHANNELS, LEVELS, SHAPE_MULTIPLE

log = get_logger(__name__)

SCORE_THRESHOLD = 0.3  # per-anchor score for a box to enter NMS and grouping
NMS_IOU = 0.3  # nodules never overlap in-plane, so overlapping boxes on a slice are duplicates
FINDING_THRESHOLD = 0.5  # a group becomes a finding when its best box scores at least this
MAX_CANDIDATES = 2000  # boxes entering NMS per series, best scores first (a bound on NMS cost)


def detection_plan(volume: Volume, context_radius: int = IN_CHANNELS // 2) -> SlicePlan:
    """Lung window, resampling to the training pixel size, padding to the deepest stride, neighbours as channels."""
    return SlicePlan(size=working_size(volume),
                     intensity=Intensity.window(*LUNG_WINDOW_HU).with_rescale(volume.slope, volume.intercept),
                     multiple=SHAPE_MULTIPLE, context_radius=context_radius, context_step=neighbour_step(volume))


def slice_detections(output: torch.Tensor, height: int, width: int,
                     score_threshold: float = SCORE_THRESHOLD,
                     nms_iou: float = NMS_IOU) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Network output (S, A, 5) on padded inputs to kept detections in working pixels: (slices, boxes, scores).

    ``height`` x ``width`` is the unpadded working size: boxes are clipped to it
    and boxes centred in the padding are dropped.
    """
    output = torch.as_tensor(output).detach().to("cpu", torch.float32)
    slices = output.shape[0]
    pad_h, pad_w = height + (-height) % SHAPE_MULTIPLE, width + (-width) % SHAPE_MULTIPLE
    anchors = grid_anchors(pad_h, pad_w, LEVELS)
    if output.ndim != 3 or output.shape[1:] != (len(anchors), 5):
        raise ValueError(f"expected output ({slices}, {len(anchors)}, 5) for a {pad_h} x {pad_w} input, "
                         f"got {tuple(output.shape)}")
    scores = torch.sigmoid(output[..., 0])
    slice_index, anchor_index = torch.nonzero(scores >= score_threshold, as_tuple=True)
    kept_scores = scores[slice_index, anchor_index]
    if len(kept_scores) > MAX_CANDIDATES:
        top = kept_scores.topk(MAX_CANDIDATES).indices
        slice_index, anchor_index, kept_scores = slice_index[top], anchor_index[top], kept_scores[top]
    boxes = decode(output[slice_index, anchor_index, 1:], anchors[anchor_index])
    centre_x, centre_y = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    inside = (centre_x < width) & (centre_y < height)
    limits = torch.tensor([width, height, width, height], dtype=torch.float32)
    boxes = torch.minimum(boxes[inside].clamp(min=0), limits)
    slice_index, kept_scores = slice_index[inside], kept_scores[inside]
    keep = batched_nms(boxes, kept_scores, slice_index, nms_iou)
    return slice_index[keep], boxes[keep], kept_scores[keep]


def _finding(group: list[SliceBox], volume: Volume, scale: tuple[float, float]) -> Finding:
    """One group of slice boxes (working pixels) as a finding in the volume's pixel grid and patient mm."""
    sx, sy = scale
    regions = [ImageRegion(b.slice_index, (round(b.box[0] * sx, 2), round(b.box[1] * sy, 2),
                                           round(b.box[2] * sx, 2), round(b.box[3] * sy, 2))) for b in group]
    boxes = np.array([r.box for r in regions], dtype=float)
    weights = np.maximum((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), 1e-6)
    # Box centres sit at pixel coordinate + 0.5 (pixel i covers [i, i + 1]); voxel indices at integers.
    index = np.stack([[r.slice_index for r in regions], (boxes[:, 1] + boxes[:, 3]) / 2 - 0.5,
                      (boxes[:, 0] + boxes[:, 2]) / 2 - 0.5], axis=1)
    centre = volume.patient_coordinates(np.average(index, axis=0, weights=weights))[0]
    return Finding(label="nodule", probability=round(max(b.score for b in group), 3),
                   centroid_mm=tuple(round(float(v), 1) for v in centre), regions=regions)


def diameter_mm(finding: Finding, volume: Volume) -> float:
    """Largest in-plane box side over the finding's slices, in mm: the axial diameter a reader would measure."""
    _, row_mm, col_mm = volume.spacing
    return max(max((r.box[2] - r.box[0]) * col_mm, (r.box[3] - r.box[1]) * row_mm) for r in finding.regions)


def _summary(findings: list[Finding], volume: Volume) -> str:
    noun = "finding" if len(findings) == 1 else "findings"
    text = f"nodule detection: {len(findings)} {noun}"
    if findings:
        text += (", diameters " + ", ".join(f"{diameter_mm(f, volume):.1f}" for f in findings) + " mm"
                 + " (scores " + ", ".join(f"{f.probability:.2f}" for f in findings) + ")")
    return text


class NoduleDetHandler:
    """Implements :class:`engine.api.ModelHandler` for :class:`~plugins.nodule_det.network.SingleShotDetector`."""

    def __init__(self, score_threshold: float = SCORE_THRESHOLD, finding_threshold: float = FINDING_THRESHOLD,
                 nms_iou: float = NMS_IOU) -> None:
        self.score_threshold = score_threshold
        self.finding_threshold = finding_threshold
        self.nms_iou = nms_iou

    def plan(self, volume: Volume) -> SlicePlan:
        """The preprocessing as data, so the CPU or the GPU path can run it (:func:`detection_plan`)."""
        return detection_plan(volume)

    def preprocess(self, volume: Volume) -> torch.Tensor:
        """The volume as a batch of windowed slices with their neighbours (S, 3, H', W'), float32 (CPU path)."""
        return run_slice_plan(volume.stored, self.plan(volume))

    def postprocess(self, output: torch.Tensor, volume: Volume) -> ModelResult:
        """Anchor outputs (S, A, 5) to 3D nodule findings with one box per slice, in the volume's pixel grid."""
        rows, cols = volume.shape[1:]
        height, width = working_size(volume)
        slices, boxes, scores = slice_detections(output, height, width, self.score_threshold, self.nms_iou)
        groups = [g for g in group_detections(slices, boxes, scores)
                  if max(b.score for b in g) >= self.finding_threshold]
        findings = [_finding(group, volume, (cols / width, rows / height)) for group in groups]
        log.debug("nodule_det.postprocessed", boxes=len(scores), groups=len(groups), findings=len(findings))
        return ModelResult(summary=_summary(findings, volume), findings=findings)
