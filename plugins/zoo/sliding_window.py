"""The MLPerf 3D U-Net's handler: KiTS19 preprocessing, overlapping patches, blended logits back to a label map.

As the MLPerf reference (``image_segmentation/pytorch/preprocess_dataset.py``
and ``runtime/inference.py``): resample to 1.6 x 1.2 x 1.2 mm (trilinear,
corners aligned), clip to -79..304 HU, normalise with mean 101 and standard
deviation 76.9, pad with -2.2 so each axis holds a whole number of strides,
cut patches with stride ``patch * (1 - overlap)`` (0.5 overlap: a voxel is in
up to 8 patches), and blend the patches' logits with a Gaussian weight
(sigma 1/8 of the patch side, the cube root of the separable product, as the
reference) or uniformly, divided by the summed weights. The one difference:
the reference crops up to half a stride off the volume's borders before
padding (its labels are cropped the same way); here every voxel is kept, the
volume is only padded, so the label map covers the whole series.

The engine runs the patches through the network as one batch of items
(micro-batched by the backend); ``postprocess`` rebuilds the patch grid from
the volume's shape and spacing, so the two halves need no shared state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from engine.api import Finding, ModelResult, Volume
from plugins.zoo.labels import Provenance

TARGET_SPACING_MM = (1.6, 1.2, 1.2)
CLIP_HU = (-79.0, 304.0)
MEAN_HU, STD_HU = 101.0, 76.9
PAD_VALUE = -2.2  # the reference's padding value for the normalised image
SIGMA_FRACTION = 0.125
SEGMENT_LABELS = ["Kidney", "Kidney tumour"]


@dataclass(frozen=True)
class PatchGrid:
    """Where the patches of one resampled volume lie: the padded shape, the padding before, the patch origins."""

    resampled: tuple[int, int, int]
    padded: tuple[int, int, int]
    before: tuple[int, int, int]
    patch: tuple[int, int, int]
    strides: tuple[int, int, int]

    @property
    def counts(self) -> tuple[int, int, int]:
        """Patches along each axis."""
        return tuple((n - p) // s + 1 for n, p, s in zip(self.padded, self.patch, self.strides))  # type: ignore

    def origins(self) -> list[tuple[int, int, int]]:
        """Each patch's first voxel in the padded volume, in the order :meth:`torch.Tensor.unfold` yields them."""
        axes = [range(0, s * c, s) for s, c in zip(self.strides, self.counts)]
        return [(z, y, x) for z in axes[0] for y in axes[1] for x in axes[2]]


def resampled_size(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> tuple[int, int, int]:
    """A (slices, rows, columns) grid's shape at :data:`TARGET_SPACING_MM` (truncated, as the reference; >= 1)."""
    return tuple(max(1, int(mm / target * n))  # type: ignore[return-value]
                 for n, mm, target in zip(shape, spacing, TARGET_SPACING_MM))


def resampled_shape(volume: Volume) -> tuple[int, int, int]:
    """The volume's shape at :data:`TARGET_SPACING_MM`."""
    return resampled_size(volume.shape, volume.spacing)


def patch_grid(shape: tuple[int, int, int], patch: tuple[int, int, int], overlap: float) -> PatchGrid:
    """Pad each axis (split before/after) to at least one patch plus a whole number of strides."""
    strides = tuple(max(1, int(p * (1.0 - overlap))) for p in patch)
    padded = []
    for n, p, s in zip(shape, patch, strides):
        size = max(n, p)
        padded.append(size + (-(size - p)) % s)
    before = tuple((m - n) // 2 for m, n in zip(padded, shape))
    return PatchGrid(tuple(shape), tuple(padded), before, tuple(patch), strides)  # type: ignore[arg-type]


def blend_weights(patch: tuple[int, int, int], mode: str) -> torch.Tensor:
    """(D, H, W) weights: the reference's Gaussian (cube root of the product of three 1D Gaussians), or ones."""
    if mode == "uniform":
        return torch.ones(patch)
    if mode != "gaussian":
        raise ValueError(f"blend mode must be gaussian or uniform, got {mode!r}")
    axes = []
    for side in patch:
        offsets = torch.arange(side, dtype=torch.float64) - (side - 1) / 2.0
        gaussian = torch.exp(-0.5 * (offsets / (SIGMA_FRACTION * side)) ** 2)
        axes.append(gaussian ** (1.0 / 3.0))  # cbrt(gz * gy * gx) = cbrt(gz) * cbrt(gy) * cbrt(gx)
    weights = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    return (weights / weights.max()).to(torch.float32)


def normalise(voxels: torch.Tensor) -> torch.Tensor:
    """HU to the network's input: clip to :data:`CLIP_HU`, subtract :data:`MEAN_HU`, divide by :data:`STD_HU`."""
    return (voxels.clamp(*CLIP_HU) - MEAN_HU) / STD_HU


class SlidingWindowHandler:
    """Implements :class:`engine.api.ModelHandler` for :class:`plugins.zoo.unet3d.UNet3D`."""

    def __init__(self, provenance: Provenance, patch: tuple[int, int, int], overlap: float, blend: str) -> None:
        self.provenance = provenance
        self.patch = tuple(patch)
        self.overlap = overlap
        self.blend = blend
        self.weights = blend_weights(self.patch, blend)  # type: ignore[arg-type]

    def grid(self, volume: Volume) -> PatchGrid:
        """The patch grid of ``volume`` (the same in preprocess and postprocess)."""
        return patch_grid(resampled_shape(volume), self.patch, self.overlap)  # type: ignore[arg-type]

    def resampled_input(self, volume: Volume) -> torch.Tensor:
        """The normalised volume at the target spacing, padded: (D', H', W') float32."""
        grid = self.grid(volume)
        voxels = torch.from_numpy(np.ascontiguousarray(volume.voxels, dtype=np.float32))
        if tuple(voxels.shape) != grid.resampled:
            voxels = F.interpolate(voxels[None, None], size=grid.resampled, mode="trilinear",
                                   align_corners=True)[0, 0]
        after = [m - n - b for m, n, b in zip(grid.padded, grid.resampled, grid.before)]
        pads = (grid.before[2], after[2], grid.before[1], after[1], grid.before[0], after[0])
        return F.pad(normalise(voxels), pads, value=PAD_VALUE)

    def preprocess(self, volume: Volume) -> torch.Tensor:
        """(patches, 1, D, H, W): every overlapping patch of the padded volume."""
        grid = self.grid(volume)
        padded = self.resampled_input(volume)
        (pd, ph, pw), (sd, sh, sw) = grid.patch, grid.strides
        patches = padded.unfold(0, pd, sd).unfold(1, ph, sh).unfold(2, pw, sw)
        return patches.reshape(-1, 1, pd, ph, pw).contiguous()

    def blend_logits(self, output: Any, grid: PatchGrid) -> torch.Tensor:
        """(patches, classes, D, H, W) logits to (classes, D', H', W') over the resampled (unpadded) volume."""
        logits = torch.as_tensor(output[0] if isinstance(output, (tuple, list)) else output)
        logits = logits.detach().to("cpu", torch.float32)
        origins = grid.origins()
        if logits.shape[0] != len(origins) or tuple(logits.shape[2:]) != grid.patch:
            raise ValueError(f"expected {len(origins)} patches of {grid.patch}, got output {tuple(logits.shape)}")
        total = torch.zeros((logits.shape[1], *grid.padded))
        norm = torch.zeros(grid.padded)
        pd, ph, pw = grid.patch
        for (z, y, x), patch in zip(origins, logits):
            total[:, z:z + pd, y:y + ph, x:x + pw] += patch * self.weights
            norm[z:z + pd, y:y + ph, x:x + pw] += self.weights
        (bz, by, bx), (d, h, w) = grid.before, grid.resampled
        return (total / norm)[:, bz:bz + d, by:by + h, bx:bx + w]

    def postprocess(self, output: Any, volume: Volume) -> ModelResult:
        """Blend, take the most likely class per voxel, map back to the series' grid (nearest), measure."""
        grid = self.grid(volume)
        labels = self.blend_logits(output, grid).argmax(dim=0).to(torch.uint8).numpy()
        label_map = _to_volume_grid(labels, volume.shape)
        findings = [_measure(label_map, index, name, volume) for index, name in enumerate(SEGMENT_LABELS, start=1)]
        findings = [finding for finding in findings if finding is not None]
        volumes = ", ".join(f"{f.label.lower()} {f.volume_ml:.1f} ml" for f in findings) or "nothing segmented"
        text = (f"{len(grid.origins())} patches of {'x'.join(map(str, grid.patch))} at "
                f"{'x'.join(map(str, TARGET_SPACING_MM))} mm, {self.blend} blending: {volumes}")
        return ModelResult(summary=self.provenance.summary(text), findings=findings, label_map=label_map,
                           segment_labels=list(SEGMENT_LABELS),
                           extra=self.provenance.extra(patches=len(grid.origins()), patch=list(grid.patch),
                                                       overlap=self.overlap, blend=self.blend,
                                                       resampled_shape=list(grid.resampled)))


def _to_volume_grid(labels: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Nearest-neighbour resampling of a label map, corners aligned like the trilinear resampling on the way in."""
    index = []
    for n_out, n_in in zip(shape, labels.shape):
        positions = np.arange(n_out) * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
        index.append(np.clip(np.rint(positions).astype(np.intp), 0, n_in - 1))
    return np.ascontiguousarray(labels[np.ix_(*index)])


def _measure(label_map: np.ndarray, value: int, name: str, volume: Volume) -> Finding | None:
    """Voxel count, volume and centroid of one label, from per-axis projections (no coordinate list)."""
    mask = label_map == value
    count = int(mask.sum())
    if not count:
        return None
    centre = [float((np.arange(n) * mask.sum(axis=tuple(a for a in range(3) if a != axis))).sum()) / count
              for axis, n in enumerate(mask.shape)]
    centroid = volume.patient_coordinates(np.array(centre))[0]
    return Finding(label=name, voxel_count=count, volume_ml=round(count * volume.voxel_volume_ml, 3),
                   centroid_mm=tuple(round(float(v), 1) for v in centroid))
