"""Pre- and postprocessing around the denoising network: scaled HU slices in, a denoised HU volume out.

The network sees each slice with its two neighbours (2.5D: noise is
independent between slices, anatomy is not) at the native pixel size (no
resampling, which would change the noise texture it learnt), with HU clipped
to :data:`HU_RANGE` and divided by :data:`HU_SCALE`. Voxels whose input lies
outside that range (dense bone, metal) are passed through unchanged: the
network never saw such values in training.
"""

from __future__ import annotations

import numpy as np
import torch

from engine.api import ModelResult, Volume
from engine.kernels.cpu import run_slice_plan
from engine.kernels.plan import Intensity, SlicePlan
from plugins.chest_ct import neighbour_step
from plugins.ct_denoise.network import DEPTH_MULTIPLE, IN_CHANNELS

HU_RANGE = (-1024.0, 1024.0)
HU_SCALE = 512.0  # network units: HU / 512, so HU_RANGE maps onto [-2, 2]
NOISE_BLOCK = 8  # pixels: the side of the square blocks the noise is measured in
NOISE_TISSUE_HU = (-150.0, 150.0)  # blocks of fat / soft tissue (mean HU in range) are the homogeneous region


def intensity(slope: float = 1.0, intercept: float = 0.0) -> Intensity:
    """Stored values to network units: rescale to HU, clip to :data:`HU_RANGE`, divide by :data:`HU_SCALE`.

    Padding is the value of air (-1024 HU).
    """
    return Intensity.zscore(*HU_RANGE, mean=0.0, std=HU_SCALE, slope=slope, intercept=intercept,
                            pad_value=HU_RANGE[0] / HU_SCALE)


def to_network_units(hu: np.ndarray | torch.Tensor) -> torch.Tensor:
    """HU to what the network reads and writes (clipped to :data:`HU_RANGE`, / :data:`HU_SCALE`), float32."""
    return torch.as_tensor(hu, dtype=torch.float32).clamp(*HU_RANGE) / HU_SCALE


def noise_std_hu(volume_hu: np.ndarray, reference_hu: np.ndarray, block: int = NOISE_BLOCK) -> tuple[float, int]:
    """(median standard deviation in homogeneous blocks of ``volume_hu``, number of blocks); (nan, 0) if none.

    Blocks of ``block`` x ``block`` pixels are homogeneous tissue when the
    ``reference_hu`` (the denoised volume, so both measurements use the same
    blocks) block mean lies in :data:`NOISE_TISSUE_HU`; the median over them
    shrugs off the few that straddle an edge.
    """
    slices, rows, cols = volume_hu.shape
    rows, cols = rows - rows % block, cols - cols % block
    if not rows or not cols:
        return float("nan"), 0
    shape = (slices, rows // block, block, cols // block, block)
    values = np.asarray(volume_hu[:, :rows, :cols], dtype=np.float32).reshape(shape)
    reference = np.asarray(reference_hu[:, :rows, :cols], dtype=np.float32).reshape(shape)
    means = reference.mean(axis=(2, 4))
    homogeneous = (means >= NOISE_TISSUE_HU[0]) & (means <= NOISE_TISSUE_HU[1])
    if not homogeneous.any():
        return float("nan"), 0
    stds = values.std(axis=(2, 4))[homogeneous]
    return float(np.median(stds)), int(homogeneous.sum())


class CtDenoiseHandler:
    """Implements :class:`engine.api.ModelHandler` for :class:`~plugins.ct_denoise.network.DenoiseNet`."""

    def plan(self, volume: Volume) -> SlicePlan:
        """Native size, HU scaled to network units, padded to the network's multiple, two neighbours."""
        return SlicePlan(size=volume.shape[1:], intensity=intensity(volume.slope, volume.intercept),
                         multiple=DEPTH_MULTIPLE, context_radius=IN_CHANNELS // 2,
                         context_step=neighbour_step(volume))

    def preprocess(self, volume: Volume) -> torch.Tensor:
        """The volume as (S, 3, H', W') float32 slices with their neighbours (CPU path)."""
        return run_slice_plan(volume.stored, self.plan(volume))

    def postprocess(self, output: torch.Tensor, volume: Volume) -> ModelResult:
        """Denoised slices (S, 1, H', W') back to a float32 HU volume of the series' shape, with noise figures.

        Values stay within the input's own minimum and maximum, so the derived
        series fits the source's stored range.
        """
        rows, cols = volume.shape[1:]
        denoised = torch.as_tensor(output).detach().to("cpu", torch.float32)[:, 0, :rows, :cols].numpy() * HU_SCALE
        original = volume.voxels
        outside = (original < HU_RANGE[0]) | (original > HU_RANGE[1])
        derived = np.where(outside, original, denoised)
        derived = np.clip(derived, float(original.min()), float(original.max())).astype(np.float32)
        before, blocks = noise_std_hu(original, derived)
        after, _ = noise_std_hu(derived, derived)
        extra: dict[str, float | int] = {"noise_blocks": blocks}
        if blocks:
            extra.update(noise_std_hu_before=round(before, 1), noise_std_hu_after=round(after, 1))
            summary = (f"noise reduction: estimated noise {before:.1f} -> {after:.1f} HU "
                       f"(std in {blocks} homogeneous {NOISE_BLOCK}x{NOISE_BLOCK} blocks)")
        else:
            summary = "noise reduction: no homogeneous soft-tissue region to estimate the noise in"
        return ModelResult(summary=summary, derived_voxels=derived, extra=extra)
