"""Sliding-window inference split in two halves: cut a volume into windows, blend the windows' outputs back.

Window starts follow MONAI's ``sliding_window_inference``: a stride of
``roi * (1 - overlap)`` (at least 1) and the last window moved back to end at
the border, so no window reaches past the volume; a volume smaller than the
window is padded (evenly before and after) to the window. Blending weights each
window's output by a Gaussian (sigma = ``sigma_scale`` x window side, peak 1,
floored at a small positive value as MONAI does) or uniformly, and divides by
the summed weights. The two halves run in the worker's preprocess and
postprocess, so the engine's batcher runs the windows ``max_batch`` at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

MIN_WEIGHT = 1e-3  # floor of the Gaussian, relative to its peak: border voxels still count


def window_starts(size: int, roi: int, overlap: float) -> list[int]:
    """Start indices along one axis of ``size`` voxels (``size`` >= ``roi``)."""
    stride = max(1, int(roi * (1.0 - overlap)))
    starts = list(range(0, size - roi + 1, stride))
    if starts[-1] != size - roi:
        starts.append(size - roi)
    return starts


@dataclass(frozen=True)
class WindowGrid:
    """Where the windows of one (D, H, W) volume lie, after padding it to at least one window."""

    shape: tuple[int, int, int]
    roi: tuple[int, int, int]
    overlap: float

    @property
    def padded(self) -> tuple[int, int, int]:
        """The volume's shape once padded to at least the window."""
        return tuple(max(n, r) for n, r in zip(self.shape, self.roi))  # type: ignore[return-value]

    @property
    def before(self) -> tuple[int, int, int]:
        """Padding before the volume on each axis."""
        return tuple((p - n) // 2 for p, n in zip(self.padded, self.shape))  # type: ignore[return-value]

    def origins(self) -> list[tuple[int, int, int]]:
        """Each window's first voxel in the padded volume, z-major."""
        axes = [window_starts(p, r, self.overlap) for p, r in zip(self.padded, self.roi)]
        return [(z, y, x) for z in axes[0] for y in axes[1] for x in axes[2]]

    def pad(self, image: torch.Tensor, value: float) -> torch.Tensor:
        """(D, H, W) image padded to :attr:`padded` with ``value``."""
        after = [p - n - b for p, n, b in zip(self.padded, self.shape, self.before)]
        if not any(self.before) and not any(after):
            return image
        pads = (self.before[2], after[2], self.before[1], after[1], self.before[0], after[0])
        return F.pad(image, pads, value=value)

    def cut(self, image: torch.Tensor, value: float) -> torch.Tensor:
        """(windows, 1, d, h, w): every window of the padded (D, H, W) image."""
        padded = self.pad(image, value)
        d, h, w = self.roi
        return torch.stack([padded[z:z + d, y:y + h, x:x + w] for z, y, x in self.origins()])[:, None].contiguous()

    def blend(self, outputs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """(windows, K, d, h, w) outputs to (K, D, H, W) over the unpadded volume, weighted by ``weights``."""
        origins = self.origins()
        if outputs.shape[0] != len(origins) or tuple(outputs.shape[2:]) != self.roi:
            raise ValueError(f"expected {len(origins)} windows of {self.roi}, got output {tuple(outputs.shape)}")
        total = torch.zeros((outputs.shape[1], *self.padded))
        norm = torch.zeros(self.padded)
        d, h, w = self.roi
        for (z, y, x), window in zip(origins, outputs):
            total[:, z:z + d, y:y + h, x:x + w] += window * weights
            norm[z:z + d, y:y + h, x:x + w] += weights
        (bz, by, bx), (sd, sh, sw) = self.before, self.shape
        return (total / norm)[:, bz:bz + sd, by:by + sh, bx:bx + sw]


def blend_weights(roi: tuple[int, int, int], mode: str, sigma_scale: float = 0.125) -> torch.Tensor:
    """(d, h, w) weights: a separable Gaussian of sigma ``sigma_scale`` x side (peak 1), or ones."""
    if mode == "constant":
        return torch.ones(roi)
    axes = []
    for side in roi:
        offsets = torch.arange(side, dtype=torch.float64) - (side - 1) / 2.0
        axes.append(torch.exp(-0.5 * (offsets / (sigma_scale * side)) ** 2))
    weights = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    weights = weights / weights.max()
    return weights.clamp(min=MIN_WEIGHT).to(torch.float32)
