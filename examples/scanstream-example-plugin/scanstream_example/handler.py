"""Pre- and postprocessing around :class:`~scanstream_example.network.BrightSpotNet`.

``plan`` states the preprocessing as data (an :class:`~engine.kernels.plan.SlicePlan`),
so a GPU worker runs it as one CUDA kernel and a CPU worker runs the same plan
with torch (``preprocess``). ``postprocess`` turns logits into a label map
(for the DICOM SEG) and one finding per connected bright region (for result.json).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from engine.api import Finding, ModelResult, Volume
from engine.kernels.cpu import run_slice_plan
from engine.kernels.plan import Intensity, SlicePlan
from scanstream_example.network import HU_SCALE

HU_RANGE = (-1024.0, 3071.0)  # what 12-bit CT holds; values outside are clipped
MIN_REGION_VOXELS = 20  # smaller components are noise, not regions
MAX_FINDINGS = 10  # result.json lists the largest regions; the SEG holds them all
SEGMENT_LABEL = "Bright region"


class BrightSpotHandler:
    """Implements :class:`engine.api.ModelHandler` (and the optional ``plan``) for the example network."""

    def plan(self, volume: Volume) -> SlicePlan:
        """Every slice at its own size, HU clipped to :data:`HU_RANGE` and divided by ``HU_SCALE``, 1 channel."""
        intensity = Intensity.zscore(*HU_RANGE, mean=0.0, std=HU_SCALE)
        return SlicePlan(size=volume.shape[1:], intensity=intensity.with_rescale(volume.slope, volume.intercept))

    def preprocess(self, volume: Volume) -> torch.Tensor:
        """(slices, 1, rows, cols) float32: the plan, run on the CPU."""
        return run_slice_plan(volume.stored, self.plan(volume))

    def postprocess(self, output: torch.Tensor, volume: Volume) -> ModelResult:
        """Logits (slices, 1, rows, cols) to a label map and the largest connected regions as findings."""
        logits = torch.as_tensor(output).detach().to("cpu", torch.float32)[:, 0]
        mask = logits.numpy() > 0.0  # sigmoid(logit) > 0.5
        components, count = ndimage.label(mask)
        sizes = np.bincount(components.ravel(), minlength=count + 1)
        keep = np.flatnonzero(sizes >= MIN_REGION_VOXELS)
        keep = keep[keep > 0]
        label_map = np.isin(components, keep).astype(np.uint8)
        largest = keep[np.argsort(-sizes[keep], kind="stable")][:MAX_FINDINGS]
        centres = ndimage.center_of_mass(mask, components, largest) if len(largest) else []
        findings = [
            Finding(label="bright region", voxel_count=int(sizes[index]),
                    volume_ml=round(float(sizes[index]) * volume.voxel_volume_ml, 3),
                    centroid_mm=tuple(round(float(v), 1) for v in volume.patient_coordinates(np.array(centre))[0]))
            for index, centre in zip(largest, centres)
        ]
        total_ml = float(label_map.sum()) * volume.voxel_volume_ml
        summary = f"bright regions: {len(keep)} region(s), {total_ml:.1f} ml above the threshold (teaching example)"
        return ModelResult(summary=summary, findings=findings, label_map=label_map, segment_labels=[SEGMENT_LABEL],
                           extra={"regions": int(len(keep)), "bright_ml": round(total_ml, 3)})
