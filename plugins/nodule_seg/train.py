"""Train the nodule U-Net on generated phantoms, reproducibly, on the CPU.

    python -m plugins.nodule_seg.train --steps 1500 --out plugins/nodule_seg/weights.pt

Training phantoms use seeds from :data:`TRAIN_SEED_BASE` up; evaluation seeds
(the accuracy test: 1-10; integration tests: 7000-7999; the demo: 2024) never
appear here. Batches are random crops of slices: half centred near a nodule
voxel, most of the rest near lung voxels (vessels are the hard negatives).
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

from engine.phantom import LUNG, VESSEL, generate_ct_phantom
from plugins.nodule_seg.handler import preprocess_hu
from plugins.nodule_seg.network import UNet2D

TRAIN_SEED_BASE = 100_000
DEFAULT_WEIGHTS = Path(__file__).with_name("weights.pt")


@dataclass
class TrainingPool:
    """Preprocessed slices of many phantoms with the voxels crops are centred on."""

    images: torch.Tensor  # (slices, H, W) float32 in [0, 1]
    masks: torch.Tensor  # (slices, H, W) float32 nodule truth
    nodule_voxels: torch.Tensor  # (K, 3) slice, row, col of nodule voxels
    lung_voxels: torch.Tensor  # (L, 3) slice, row, col of (subsampled) lung and vessel voxels


def build_pool(count: int, seed: int, slices: int = 48, size: int = 256) -> TrainingPool:
    """Generate ``count`` training phantoms (1-3 nodules each, noise 12-30 HU) and stack their slices."""
    rng = np.random.default_rng(seed)
    images, masks, lungs = [], [], []
    for k in range(count):
        phantom = generate_ct_phantom(TRAIN_SEED_BASE + seed * 10_000 + k, slices=slices, size=size,
                                      nodules=int(rng.integers(1, 4)), noise_hu=float(rng.uniform(12, 30)))
        images.append(preprocess_hu(phantom.hu)[:, 0, :size, :size])
        masks.append(torch.from_numpy(phantom.nodule_mask))
        lungs.append(torch.from_numpy((phantom.tissue == LUNG) | (phantom.tissue == VESSEL)))
    mask = torch.cat(masks)
    lung = torch.cat(lungs)
    lung_voxels = torch.nonzero(lung)
    return TrainingPool(images=torch.cat(images), masks=mask.float(), nodule_voxels=torch.nonzero(mask),
                        lung_voxels=lung_voxels[::7])


def sample_batch(pool: TrainingPool, rng: np.random.Generator, batch: int, crop: int,
                 positive_share: float = 0.5, lung_share: float = 0.35) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of (batch, 1, crop, crop) image and mask crops with random flips and contrast jitter."""
    _, height, width = pool.images.shape
    images, masks = [], []
    for _ in range(batch):
        draw = rng.random()
        if draw < positive_share:
            centres = pool.nodule_voxels
        elif draw < positive_share + lung_share:
            centres = pool.lung_voxels
        else:
            centres = None
        if centres is not None and len(centres):
            s, r, c = centres[int(rng.integers(len(centres)))].tolist()
            r0 = int(np.clip(r - rng.integers(crop // 8, crop - crop // 8), 0, height - crop))
            c0 = int(np.clip(c - rng.integers(crop // 8, crop - crop // 8), 0, width - crop))
        else:
            s = int(rng.integers(pool.images.shape[0]))
            r0, c0 = int(rng.integers(0, height - crop + 1)), int(rng.integers(0, width - crop + 1))
        image = pool.images[s, r0:r0 + crop, c0:c0 + crop]
        mask = pool.masks[s, r0:r0 + crop, c0:c0 + crop]
        flips = [axis for axis, flip in ((0, rng.random() < 0.5), (1, rng.random() < 0.5)) if flip]
        if flips:
            image, mask = image.flip(flips), mask.flip(flips)
        gain, offset = rng.uniform(0.95, 1.05), rng.uniform(-0.02, 0.02)
        images.append((image * gain + offset).clamp(0.0, 1.0))
        masks.append(mask)
    return torch.stack(images)[:, None], torch.stack(masks)[:, None]


def dice_bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy plus soft Dice over the batch: BCE for calibration, Dice against class imbalance."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    probability = torch.sigmoid(logits)
    dice = 1 - (2 * (probability * target).sum() + 1) / (probability.sum() + target.sum() + 1)
    return bce + dice


def train(steps: int, out: Path, seed: int = 0, phantoms: int = 32, batch: int = 16, crop: int = 96,
          lr: float = 3e-3, log_every: int = 50, phantom_slices: int = 48, phantom_size: int = 256) -> float:
    """Train from scratch, save the state dict to ``out`` and return the final smoothed loss."""
    if crop > phantom_size or crop % 8:
        raise ValueError(f"crop must be a multiple of 8 no larger than the phantom size ({phantom_size}), got {crop}")
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
    parser.add_argument("--phantoms", type=int, default=32, help="training phantoms generated up front")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--crop", type=int, default=96, help="square crop size (multiple of 8)")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--phantom-slices", type=int, default=48)
    parser.add_argument("--phantom-size", type=int, default=256)
    args = parser.parse_args(argv)
    return train(args.steps, args.out, args.seed, args.phantoms, args.batch, args.crop, args.lr,
                 phantom_slices=args.phantom_slices, phantom_size=args.phantom_size)


if __name__ == "__main__":
    main()
