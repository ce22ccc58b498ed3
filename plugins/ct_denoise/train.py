"""Train the denoising network on generated phantoms, reproducibly, on one CPU thread.

    python -m plugins.ct_denoise.train --steps 800 --out plugins/ct_denoise/weights.pt

takes about 2.5 minutes of CPU time on one thread (4.5 minutes wall clock on
the shared two-core development machine) and rebuilds the committed weights
bit for bit (same seed, same torch build).

Training phantoms use seeds from :data:`TRAIN_SEED_BASE` up; the seeds of the
accuracy test and ``evaluate`` (all below 100) never appear here. The pool holds
standard-dose phantoms and their :func:`~engine.synthetic.ct_phantom.dose_noise_weight`;
the low-dose noise is drawn afresh for every crop (dose uniform in
:data:`DOSE_RANGE`, exactly as :func:`~engine.synthetic.ct_phantom.low_dose_phantom` draws
it), so the network never sees the same noisy input twice. The target is the
standard-dose slice, as in the test. Crops are centred on the body, a fifth of
them on a nodule (so small round structures are kept, not smoothed away).
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

from engine.synthetic.ct_phantom import AIR, MAX_HU, NODULE_RADIUS_MM, RESCALE_INTERCEPT, dose_noise_weight, generate_ct_phantom
from plugins.ct_denoise.handler import to_network_units
from plugins.ct_denoise.network import DEPTH_MULTIPLE, IN_CHANNELS, DenoiseNet

TRAIN_SEED_BASE = 100_000
DOSE_RANGE = (0.1, 0.5)
STANDARD_NOISE_RANGE_HU = (15.0, 25.0)
SMALL_NODULE_RADIUS_MM = (3.0, 5.0)
NODULE_SHARE = 0.2
DEFAULT_WEIGHTS = Path(__file__).with_name("weights.pt")


@dataclass
class TrainingPool:
    """Standard-dose slices of many phantoms, their noise weights and the voxels crops are centred on."""

    hu: torch.Tensor  # (slices, H, W) int16 standard-dose HU
    noise_scale: torch.Tensor  # (slices, H, W) float32: standard noise (HU) * sqrt(dose_noise_weight)
    neighbours: torch.Tensor  # (slices, IN_CHANNELS) pool indices of each slice's context within its phantom
    body_voxels: torch.Tensor  # (B, 3) slice, row, col of (subsampled) body voxels
    nodule_voxels: torch.Tensor  # (K, 3) slice, row, col of nodule voxels


def context_index(slices: int, radius: int = IN_CHANNELS // 2) -> torch.Tensor:
    """(slices, 2 * radius + 1) indices of each slice and its neighbours, repeating the end slices."""
    offsets = torch.arange(-radius, radius + 1)
    return (torch.arange(slices)[:, None] + offsets[None, :]).clamp(0, slices - 1)


def build_pool(count: int, seed: int, slices: int = 16, size: int = 256) -> TrainingPool:
    """Generate ``count`` standard-dose training phantoms (1-3 nodules, 15-25 HU noise) and stack their slices.

    Every third phantom has only small (3-5 mm) nodules, the easiest to blur away.
    """
    rng = np.random.default_rng(seed)
    hus, scales, neighbours, bodies, nodules = [], [], [], [], []
    for k in range(count):
        radius = SMALL_NODULE_RADIUS_MM if k % 3 == 2 else NODULE_RADIUS_MM
        noise_hu = float(rng.uniform(*STANDARD_NOISE_RANGE_HU))
        phantom = generate_ct_phantom(TRAIN_SEED_BASE + seed * 10_000 + k, slices=slices, size=size,
                                      nodules=int(rng.integers(1, 4)), noise_hu=noise_hu, nodule_radius_mm=radius)
        weight = dose_noise_weight(phantom.hu, phantom.spacing[1])
        hus.append(torch.from_numpy(phantom.hu))
        scales.append(torch.from_numpy(np.float32(noise_hu) * np.sqrt(weight)))
        neighbours.append(k * slices + context_index(slices))
        offset = torch.tensor([k * slices, 0, 0])
        bodies.append(torch.nonzero(torch.from_numpy(phantom.tissue != AIR))[::11] + offset)
        nodules.append(torch.nonzero(torch.from_numpy(phantom.nodule_mask)) + offset)
    return TrainingPool(hu=torch.cat(hus), noise_scale=torch.cat(scales), neighbours=torch.cat(neighbours),
                        body_voxels=torch.cat(bodies), nodule_voxels=torch.cat(nodules))


def low_dose_noise(noise_scale: torch.Tensor, dose: float, rng: np.random.Generator) -> torch.Tensor:
    """Extra noise (HU) of a ``dose`` fraction of the standard dose, as :func:`engine.synthetic.ct_phantom.low_dose_phantom`."""
    normal = torch.from_numpy(rng.standard_normal(tuple(noise_scale.shape), dtype=np.float32))
    return normal * noise_scale * float(math.sqrt(1.0 / dose - 1.0))


def sample_batch(pool: TrainingPool, rng: np.random.Generator, batch: int,
                 crop: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch, C, crop, crop) low-dose inputs and (batch, 1, crop, crop) standard-dose targets, network units.

    Each crop lies around a body voxel (or, for :data:`NODULE_SHARE` of them,
    a nodule voxel), holds a slice and its neighbours (in random through-plane
    order), is flipped and transposed at random, and gets fresh low-dose noise
    at a dose drawn from :data:`DOSE_RANGE`, rounded and clipped like stored CT.
    """
    _, height, width = pool.hu.shape
    inputs, targets = [], []
    for _ in range(batch):
        centres = pool.nodule_voxels if rng.random() < NODULE_SHARE and len(pool.nodule_voxels) else pool.body_voxels
        s, r, c = centres[int(rng.integers(len(centres)))].tolist()
        r0 = int(np.clip(r - rng.integers(crop // 8, crop - crop // 8), 0, height - crop))
        c0 = int(np.clip(c - rng.integers(crop // 8, crop - crop // 8), 0, width - crop))
        context = pool.neighbours[s] if rng.random() < 0.5 else pool.neighbours[s].flip(0)
        hu = pool.hu[context, r0:r0 + crop, c0:c0 + crop].float()
        scale = pool.noise_scale[context, r0:r0 + crop, c0:c0 + crop]
        noisy = (hu + low_dose_noise(scale, float(rng.uniform(*DOSE_RANGE)), rng)).round_().clamp_(
            RESCALE_INTERCEPT, MAX_HU)
        pair = torch.stack([noisy, hu[IN_CHANNELS // 2:IN_CHANNELS // 2 + 1].expand_as(noisy)])
        flips = [axis for axis, flip in ((2, rng.random() < 0.5), (3, rng.random() < 0.5)) if flip]
        if flips:
            pair = pair.flip(flips)
        if rng.random() < 0.5:
            pair = pair.transpose(2, 3)
        inputs.append(to_network_units(pair[0]))
        targets.append(to_network_units(pair[1, :1]))
    return torch.stack(inputs), torch.stack(targets)


def train(steps: int, out: Path, seed: int = 0, phantoms: int = 16, batch: int = 16, crop: int = 64,
          lr: float = 2e-3, log_every: int = 50, phantom_slices: int = 16, phantom_size: int = 256) -> float:
    """Train from scratch on one thread, save the state dict to ``out`` and return the final smoothed loss."""
    if crop > phantom_size or crop % DEPTH_MULTIPLE:
        raise ValueError(f"crop must be a multiple of {DEPTH_MULTIPLE} no larger than the phantom size "
                         f"({phantom_size}), got {crop}")
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    rng = np.random.default_rng(seed)
    started = time.monotonic()
    pool = build_pool(phantoms, seed, phantom_slices, phantom_size)
    print(f"{phantoms} phantoms, {pool.hu.shape[0]} slices, {len(pool.nodule_voxels)} nodule voxels "
          f"({time.monotonic() - started:.0f} s)", flush=True)
    network = DenoiseNet()
    optimiser = torch.optim.Adam(network.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps, pct_start=0.1)
    smoothed = math.nan
    network.train()
    for step in range(1, steps + 1):
        inputs, targets = sample_batch(pool, rng, batch, crop)
        loss = F.mse_loss(network(inputs), targets)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        # report in HU^2 of the standard-dose target (network units are HU / 512)
        value = loss.item() * 512.0 ** 2
        smoothed = value if step == 1 else 0.95 * smoothed + 0.05 * value
        if step % log_every == 0 or step == steps:
            print(f"step {step}/{steps} loss {smoothed:.1f} HU^2 ({time.monotonic() - started:.0f} s)", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), out)
    print(f"saved {out} ({out.stat().st_size / 1e6:.2f} MB) after {time.monotonic() - started:.0f} s", flush=True)
    return smoothed


def main(argv: list[str] | None = None) -> float:
    """Command line: ``python -m plugins.ct_denoise.train [--steps N] [--out PATH] [--seed S] ...``."""
    parser = argparse.ArgumentParser(description="Train the ct-denoise network on generated phantoms (CPU)")
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--out", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--phantoms", type=int, default=16, help="training phantoms generated up front")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--crop", type=int, default=64, help=f"square crop size (multiple of {DEPTH_MULTIPLE})")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--phantom-slices", type=int, default=16)
    parser.add_argument("--phantom-size", type=int, default=256)
    parser.add_argument("--log-every", type=int, default=50)
    args = parser.parse_args(argv)
    return train(args.steps, args.out, args.seed, args.phantoms, args.batch, args.crop, args.lr,
                 log_every=args.log_every, phantom_slices=args.phantom_slices, phantom_size=args.phantom_size)


if __name__ == "__main__":
    main()
