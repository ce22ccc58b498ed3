"""Train the nodule U-Net on generated phantoms, reproducibly, on the CPU.

    python -m plugins.nodule_seg.train --steps 1500 --out plugins/nodule_seg/weights.pt

takes about 6 minutes on two idle CPU cores and rebuilds the committed weights
bit for bit (same seed, same torch build).

Training phantoms use seeds from :data:`TRAIN_SEED_BASE` up; evaluation seeds
(the accuracy test: 1-10; integration tests: 7000-7999; the demo: 2024) never
appear here. Batches are random crops of slices: nearly half centred near a
nodule voxel, a third near a vessel voxel (the hard negatives: a vessel's cross
section looks like a small nodule on one slice), the rest near lung or anywhere.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from engine.synthetic.ct_phantom import LUNG, NODULE_RADIUS_MM, VESSEL, generate_ct_phantom
from plugins.nodule_seg.handler import preprocess_volume
from plugins.nodule_seg.network import DEPTH_MULTIPLE, IN_CHANNELS, UNet2D

TRAIN_SEED_BASE = 100_000
SMALL_NODULE_RADIUS_MM = (3.0, 5.0)
DEFAULT_WEIGHTS = Path(__file__).with_name("weights.pt")


@dataclass
class TrainingPool:
    """Preprocessed slices of many phantoms with the voxels crops are centred on."""

    images: torch.Tensor  # (slices, H, W) float32 in [0, 1]
    neighbours: torch.Tensor  # (slices, IN_CHANNELS) pool indices of each slice's context within its phantom
    masks: torch.Tensor  # (slices, H, W) bool nodule truth
    nodule_voxels: torch.Tensor  # (K, 3) slice, row, col of nodule voxels
    vessel_voxels: torch.Tensor  # (V, 3) slice, row, col of vessel voxels
    lung_voxels: torch.Tensor  # (L, 3) slice, row, col of (subsampled) lung voxels


def context_index(slices: int, radius: int = IN_CHANNELS // 2) -> torch.Tensor:
    """(slices, 2 * radius + 1) indices of each slice and its neighbours, repeating the end slices.

    The same context the handler builds with :func:`engine.kernels.cpu.neighbour_slices`.
    """
    offsets = torch.arange(-radius, radius + 1)
    return (torch.arange(slices)[:, None] + offsets[None, :]).clamp(0, slices - 1)


def build_pool(count: int, seed: int, slices: int = 48, size: int = 256) -> TrainingPool:
    """Generate ``count`` training phantoms and stack their slices.

    Each has 1-3 nodules and 12-30 HU noise; every third has only small (3-5 mm)
    nodules, the ones most easily confused with a vessel's cross-section.
    """
    rng = np.random.default_rng(seed)
    images, masks, tissues, neighbours = [], [], [], []
    for k in range(count):
        radius = SMALL_NODULE_RADIUS_MM if k % 3 == 2 else NODULE_RADIUS_MM
        phantom = generate_ct_phantom(TRAIN_SEED_BASE + seed * 10_000 + k, slices=slices, size=size,
                                      nodules=int(rng.integers(1, 4)), noise_hu=float(rng.uniform(12, 30)),
                                      nodule_radius_mm=radius)
        images.append(preprocess_volume(phantom.hu)[:, 0, :size, :size])
        neighbours.append(k * slices + context_index(slices))
        masks.append(torch.from_numpy(phantom.nodule_mask))
        tissues.append(torch.from_numpy(phantom.tissue))
    mask, tissue = torch.cat(masks), torch.cat(tissues)
    return TrainingPool(images=torch.cat(images), neighbours=torch.cat(neighbours), masks=mask,
                        nodule_voxels=torch.nonzero(mask), vessel_voxels=torch.nonzero(tissue == VESSEL),
                        lung_voxels=torch.nonzero(tissue == LUNG)[::7])


def sample_batch(pool: TrainingPool, rng: np.random.Generator, batch: int, crop: int,
                 shares: tuple[float, float, float] = (0.45, 0.3, 0.15)) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of (batch, C, crop, crop) image and (batch, 1, crop, crop) mask crops.

    ``shares`` are the fractions of crops near a nodule, a vessel and a lung
    voxel; the rest lie anywhere. Each image crop holds a slice and its
    neighbours (in random through-plane order); crops are flipped at random and
    get a little contrast jitter.
    """
    _, height, width = pool.images.shape
    kinds = (pool.nodule_voxels, pool.vessel_voxels, pool.lung_voxels, None)
    bounds = np.cumsum(shares)
    images, masks = [], []
    for _ in range(batch):
        centres = kinds[int(np.searchsorted(bounds, rng.random(), side="right"))]
        if centres is not None and len(centres):
            s, r, c = centres[int(rng.integers(len(centres)))].tolist()
            r0 = int(np.clip(r - rng.integers(crop // 8, crop - crop // 8), 0, height - crop))
            c0 = int(np.clip(c - rng.integers(crop // 8, crop - crop // 8), 0, width - crop))
        else:
            s = int(rng.integers(pool.images.shape[0]))
            r0, c0 = int(rng.integers(0, height - crop + 1)), int(rng.integers(0, width - crop + 1))
        context = pool.neighbours[s] if rng.random() < 0.5 else pool.neighbours[s].flip(0)
        image = pool.images[context, r0:r0 + crop, c0:c0 + crop]
        mask = pool.masks[s, r0:r0 + crop, c0:c0 + crop]
        flips = [axis for axis, flip in ((0, rng.random() < 0.5), (1, rng.random() < 0.5)) if flip]
        if flips:
            image, mask = image.flip([axis + 1 for axis in flips]), mask.flip(flips)
        gain, offset = rng.uniform(0.95, 1.05), rng.uniform(-0.02, 0.02)
        images.append((image * gain + offset).clamp(0.0, 1.0))
        masks.append(mask)
    return torch.stack(images), torch.stack(masks)[:, None].float()


def dice_bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy plus soft Dice over the batch: BCE for calibration, Dice against class imbalance."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    probability = torch.sigmoid(logits)
    dice = 1 - (2 * (probability * target).sum() + 1) / (probability.sum() + target.sum() + 1)
    return bce + dice


def train(steps: int, out: Path, seed: int = 0, phantoms: int = 40, batch: int = 16, crop: int = 96,
          lr: float = 3e-3, log_every: int = 50, phantom_slices: int = 48, phantom_size: int = 256) -> float:
    """Train from scratch, save the state dict to ``out`` and return the final smoothed loss."""
    if crop > phantom_size or crop % DEPTH_MULTIPLE:
        raise ValueError(f"crop must be a multiple of {DEPTH_MULTIPLE} no larger than the phantom size "
                         f"({phantom_size}), got {crop}")
    torch.manual_seed(seed)
    torch.set_num_threads(2)
    rng = np.random.default_rng(seed)
    started = time.monotonic()
    pool = build_pool(phantoms, seed, phantom_slices, phantom_size)
    print(f"{phantoms} phantoms, {pool.images.shape[0]} slices, {len(pool.nodule_voxels)} nodule voxels "
          f"({time.monotonic() - started:.0f} s)", flush=True)
    network = UNet2D()
    optimiser = torch.optim.Adam(network.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps, pct_start=0.1)
    smoothed = math.nan
    network.train()
    for step in range(1, steps + 1):
        images, masks = sample_batch(pool, rng, batch, crop)
        loss = dice_bce_loss(network(images), masks)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        smoothed = loss.item() if step == 1 else 0.95 * smoothed + 0.05 * loss.item()
        if step % log_every == 0 or step == steps:
            print(f"step {step}/{steps} loss {smoothed:.4f} ({time.monotonic() - started:.0f} s)", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), out)
    print(f"saved {out} ({out.stat().st_size / 1e6:.2f} MB) after {time.monotonic() - started:.0f} s", flush=True)
    return smoothed


def main(argv: list[str] | None = None) -> float:
    """Command line: ``python -m plugins.nodule_seg.train [--steps N] [--out PATH] [--seed S] ...``."""
    parser = argparse.ArgumentParser(description="Train the nodule-seg U-Net on generated phantoms (CPU)")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--out", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--phantoms", type=int, default=40, help="training phantoms generated up front")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--crop", type=int, default=96, help=f"square crop size (multiple of {DEPTH_MULTIPLE})")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--phantom-slices", type=int, default=48)
    parser.add_argument("--phantom-size", type=int, default=256)
    args = parser.parse_args(argv)
    return train(args.steps, args.out, args.seed, args.phantoms, args.batch, args.crop, args.lr,
                 phantom_slices=args.phantom_slices, phantom_size=args.phantom_size)


if __name__ == "__main__":
    main()
