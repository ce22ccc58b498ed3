"""Pre- and postprocessing of the zoo's 2D models: classifiers, the SSD detector and the image-to-image generator.

Every CT slice becomes one network input, resized to the model's square side
(the whole slice, no crop) with :class:`~engine.kernels.plan.SlicePlan`, so a
GPU worker runs the same preprocessing as one fused CUDA kernel. Channels are
the slice and its neighbours (2.5D, an odd count); ImageNet-style networks get
a wide window (-1000..1000 HU) mapped onto [0, 1] and then normalised with
ImageNet's grey-level mean and standard deviation (0.449, 0.226).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from engine.api import Finding, ImageRegion, ModelResult, Volume
from engine.kernels.cpu import resize_slices, run_slice_plan
from engine.kernels.plan import Intensity, SlicePlan
from plugins.zoo.boxes import decode, nms
from plugins.zoo.labels import Provenance

IMAGENET_WINDOW_HU = (-1000.0, 1000.0)
IMAGENET_GREY_MEAN, IMAGENET_GREY_STD = 0.449, 0.226  # means of ImageNet's per-channel RGB statistics
CT_RANGE_HU = (-1024.0, 3071.0)  # the 12-bit CT range the generator maps onto [-1, 1]
SSD_CANDIDATES = 400  # highest-scoring (box, class) pairs per slice that enter NMS
SSD_DETECTIONS_PER_SLICE = 200  # kept after NMS, as torchvision's SSD (detections_per_img)


def imagenet_intensity() -> Intensity:
    """HU clipped to :data:`IMAGENET_WINDOW_HU`, scaled to [0, 1], then ``(x - 0.449) / 0.226``."""
    low, high = IMAGENET_WINDOW_HU
    width = high - low
    return Intensity.zscore(low, high, low + IMAGENET_GREY_MEAN * width, IMAGENET_GREY_STD * width)


def generator_intensity() -> Intensity:
    """HU clipped to :data:`CT_RANGE_HU` and mapped linearly onto [-1, 1] (the generator's tanh range)."""
    low, high = CT_RANGE_HU
    return Intensity.zscore(low, high, (low + high) / 2, (high - low) / 2)


class SliceHandler:
    """The shared input side: each slice resized to ``size`` x ``size`` with ``channels`` slices as channels."""

    def __init__(self, provenance: Provenance, size: int, channels: int, intensity: Intensity) -> None:
        self.provenance = provenance
        self.size = size
        self.channels = channels
        self.intensity = intensity

    def plan(self, volume: Volume) -> SlicePlan:
        """Resize, window/normalise and stack neighbours: what the CPU path and the CUDA kernel both compute."""
        return SlicePlan(size=(self.size, self.size),
                         intensity=self.intensity.with_rescale(volume.slope, volume.intercept),
                         context_radius=self.channels // 2)

    def preprocess(self, volume: Volume) -> torch.Tensor:
        """(slices, channels, size, size) float32."""
        return run_slice_plan(volume.stored, self.plan(volume))


def _as_tensor(output: Any) -> torch.Tensor:
    tensor = output[0] if isinstance(output, (tuple, list)) else output
    return torch.as_tensor(tensor).detach().to("cpu", torch.float32)


def class_label(index: int) -> str:
    """The label of class ``index`` (the zoo's networks are untrained, so classes have numbers, not names)."""
    return f"class-{index:04d}"


class ClassifierHandler(SliceHandler):
    """Slices to a study-level class distribution: the mean of the per-slice softmax; the top classes reported."""

    def __init__(self, provenance: Provenance, size: int, channels: int, top_k: int,
                 present_threshold: float = 0.5) -> None:
        super().__init__(provenance, size, channels, imagenet_intensity())
        self.top_k = top_k
        self.present_threshold = present_threshold

    def postprocess(self, output: Any, volume: Volume) -> ModelResult:
        """(slices, classes) logits to ``class_probabilities`` of the top classes; findings for those >= 0.5."""
        logits = _as_tensor(output).reshape(volume.shape[0], -1)
        study = torch.softmax(logits, dim=1).mean(dim=0)
        top = torch.topk(study, min(self.top_k, study.numel()))
        probabilities = {class_label(int(i)): round(float(p), 6) for p, i in zip(top.values, top.indices)}
        findings = [Finding(label=label, probability=p) for label, p in probabilities.items()
                    if p >= self.present_threshold]
        listed = ", ".join(f"{label} {p:.4f}" for label, p in probabilities.items())
        text = (f"top {len(probabilities)} of {study.numel()} classes (mean softmax over {volume.shape[0]} "
                f"slices): {listed}")
        return ModelResult(summary=self.provenance.summary(text), findings=findings,
                           class_probabilities=probabilities,
                           extra=self.provenance.extra(slices=volume.shape[0], classes=int(study.numel())))


class DetectorHandler(SliceHandler):
    """SSD output to boxes: decoding against the default boxes, softmax, score floor, per-class NMS, findings."""

    def __init__(self, provenance: Provenance, size: int, channels: int, anchors: torch.Tensor, *,
                 score_threshold: float, iou_threshold: float, max_findings: int) -> None:
        super().__init__(provenance, size, channels, imagenet_intensity())
        self.anchors = anchors
        self.score_threshold = score_threshold
        self.iou_threshold = iou_threshold
        self.max_findings = max_findings

    def detect(self, output: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per slice: (boxes (K, 4) in units of the image side, scores (K,), classes (K,)), best first."""
        boxes = decode(output[..., :4], self.anchors)
        scores = torch.softmax(output[..., 4:], dim=-1)[..., 1:]  # class 0 is the background
        foreground = scores.shape[-1]
        flat = scores.reshape(scores.shape[0], -1)
        flat = torch.where(flat > self.score_threshold, flat, torch.full_like(flat, -1.0))
        best, where = flat.topk(min(SSD_CANDIDATES, flat.shape[1]), dim=1)
        detections = []
        for slice_boxes, slice_scores, slice_where in zip(boxes, best, where):
            valid = slice_scores > 0
            candidates = slice_boxes[slice_where[valid] // foreground]
            classes = slice_where[valid] % foreground + 1
            kept = nms(candidates, slice_scores[valid], self.iou_threshold, classes)[:SSD_DETECTIONS_PER_SLICE]
            detections.append((candidates[kept], slice_scores[valid][kept], classes[kept]))
        return detections

    def postprocess(self, output: Any, volume: Volume) -> ModelResult:
        """Detections of every slice; the ``max_findings`` highest-scoring become findings with image regions."""
        slices, rows, cols = volume.shape
        detections = self.detect(_as_tensor(output).reshape(slices, self.anchors.shape[0], -1))
        scale = torch.tensor([cols, rows, cols, rows], dtype=torch.float32)
        records = []
        for index, (boxes, scores, classes) in enumerate(detections):
            pixels = boxes * scale
            area = (pixels[:, 2] - pixels[:, 0]) * (pixels[:, 3] - pixels[:, 1])
            for box, score, cls in zip(pixels[area > 0].tolist(), scores[area > 0].tolist(),
                                       classes[area > 0].tolist()):
                records.append((score, index, int(cls), box))
        records.sort(key=lambda record: -record[0])
        findings = []
        for score, index, cls, box in records[:self.max_findings]:
            box = tuple(round(v, 2) for v in box)
            centre = volume.patient_coordinates(np.array([index, (box[1] + box[3]) / 2 - 0.5,
                                                          (box[0] + box[2]) / 2 - 0.5]))[0]
            findings.append(Finding(label=class_label(cls), probability=round(score, 6),
                                    regions=[ImageRegion(index, box)],
                                    centroid_mm=tuple(round(float(v), 1) for v in centre)))
        text = (f"{len(records)} detections after NMS over {slices} slices; the {len(findings)} highest-scoring "
                "reported as findings")
        return ModelResult(summary=self.provenance.summary(text), findings=findings,
                           extra=self.provenance.extra(detections=len(records), slices=slices,
                                                       score_threshold=self.score_threshold,
                                                       iou_threshold=self.iou_threshold))


class GeneratorHandler(SliceHandler):
    """Image-to-image reconstruction: each slice through the generator, back to HU at the slice's size."""

    def __init__(self, provenance: Provenance, size: int) -> None:
        super().__init__(provenance, size, 1, generator_intensity())

    def postprocess(self, output: Any, volume: Volume) -> ModelResult:
        """(slices, 1, size, size) in [-1, 1] to ``derived_voxels`` (slices, rows, cols) float32 HU."""
        slices, rows, cols = volume.shape
        images = resize_slices(_as_tensor(output).reshape(slices, 1, self.size, self.size), (rows, cols))[:, 0]
        low, high = CT_RANGE_HU
        derived = (images * ((high - low) / 2) + (low + high) / 2).clamp(low, high).numpy().astype(np.float32)
        change = float(np.abs(derived - volume.voxels).mean())
        text = f"derived series of {slices} slices (mean absolute change {change:.1f} HU)"
        return ModelResult(summary=self.provenance.summary(text), derived_voxels=derived,
                           extra=self.provenance.extra(slices=slices, mean_abs_change_hu=round(change, 2)))
