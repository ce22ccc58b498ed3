"""Train the nodule U-Net on generated phantoms, reproducibly, on the CPU.

    python -m plugins.nodule_seg.train --steps 900 --out plugins/nodule_seg/weights.pt

Training phantoms use seeds 100000 + k; evaluation seeds (the accuracy test uses
1-20 and the integration tests 7000-7999) never appear here.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from engine.phantom import generate_ct_phantom
from plugins.nodule_seg.handler import preprocess_volume
from plugins.nodule_seg.network import UNet2D

TRAIN_SEED_BASE = 100_000


def _pool(count: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Preprocessed phantom volumes and their masks."""
    rng = np.random.default_rng(seed)
    pool = []
    for k in range(count):
        phantom = generate_ct_phantom(TRAIN_SEED_BASE + seed * 1000 + k, nodules=int(rng.integers(1, 4)),
                                      noise_hu=float(rng.uniform(12, 30)))
        image = preprocess_volume(phantom.hu.astype(np.float32))[:, 0]
        pool.append((image, torch.from_numpy(phantom.nodule_mask.astype(np.float32))))
    return pool


def _batch(pool, rng: np.random.Generator, batch: int, crop: int, positive_share: float):
    images, masks = [], []
    for _ in range(batch):
        image, mask = pool[int(rng.integers(len(pool)))]
        if rng.random() < positive_share and mask.any():
            points = torch.nonzero(mask)
            s, r, c = points[int(rng.integers(len(points)))].tolist()
            r0 = int(np.clip(r - rng.integers(8, crop - 8), 0, mask.shape[1] - crop))
            c0 = int(np.clip(c - rng.integers(8, crop - 8), 0, mask.shape[2] - crop))
        else:
            s = int(rng.integers(mask.shape[0]))
            r0, c0 = (int(rng.integers(0, mask.shape[i] - crop + 1)) for i in (1, 2))
        img, msk = image[s, r0:r0 + crop, c0:c0 + crop], mask[s, r0:r0 + crop, c0:c0 + crop]
        if rng.random() < 0.5:
            img, msk = img.flip(-1), msk.flip(-1)
        images.append(img)
        masks.append(msk)
    return torch.stack(images)[:, None], torch.stack(masks)[:, None]


def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy plus soft Dice: BCE for calibration, Dice for small objects."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    prob = torch.sigmoid(logits)
    dice = 1 - (2 * (prob * target).sum() + 1) / (prob.sum() + target.sum() + 1)
    return bce + dice


def train(steps: int, out: Path, seed: int = 0, phantoms: int = 24, batch: int = 16, crop: int = 96,
          log_every: int = 50) -> float:
    """Train and save the state dict to ``out``; returns the last smoothed loss."""
    torch.manual_seed(seed)
    torch.set_num_threads(2)
    rng = np.random.default_rng(seed)
    started = time.monotonic()
    pool = _pool(phantoms, seed)
    network = UNet2D()
    optimiser = torch.optim.Adam(network.parameters(), lr=3e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    smoothed = float("nan")
    network.train()
    for step in range(1, steps + 1):
        images, masks = _batch(pool, rng, batch, crop, positive_share=0.7)
        loss = loss_fn(network(images), masks)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        smoothed = loss.item() if step == 1 else 0.95 * smoothed + 0.05 * loss.item()
        if step % log_every == 0 or step == steps:
            print(f"step {step}/{steps} loss {smoothed:.4f} ({time.monotonic() - started:.0f} s)", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), out)
    print(f"saved {out} ({out.stat().st_size / 1e6:.2f} MB) after {time.monotonic() - started:.0f} s")
    return smoothed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train the nodule-seg U-Net on generated phantoms")
    parser.add_argument("--steps", type=int, default=900)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("weights.pt"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--phantoms", type=int, default=24)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--crop", type=int, default=96)
    args = parser.parse_args(argv)
    train(args.steps, args.out, args.seed, args.phantoms, args.batch, args.crop)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
