"""Train the nodule detector on generated phantoms, reproducibly, on one CPU thread.

    python -m plugins.nodule_det.train --out plugins/nodule_det/weights.pt

rebuilds the committed weights (2000 steps of 16 crops of 128 x 128, seed 0)
bit for bit with the same torch build: one thread, seeded generators. It takes
about 5 minutes on one idle CPU thread (7 minutes measured on a busy machine):
15 s to generate the 40 phantoms, 0.15-0.2 s a step.

Training phantoms use seeds from :data:`TRAIN_SEED_BASE` up; evaluation seeds
(the accuracy test: 1-40; integration tests: 7000-7999; the demo: 2024) never
appear here. Truth boxes per slice are the in-plane components of
``CTPhantom.nodule_mask``. Batches are random crops of slices: about half
centred near a nodule's cross-section, a third near a vessel voxel (the hard
negatives: a vessel's cross-section looks like a small nodule on one slice),
the rest near lung or anywhere. The loss is SSD's: binary cross-entropy over
the positive anchors and the hardest negatives (:data:`NEGATIVES_PER_POSITIVE`
per positive, at least :data:`MIN_NEGATIVES` per crop) plus smooth L1 on the
positives' box offsets.
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

from engine.kernels.cpu import run_slice_plan
from engine.synthetic.ct_phantom import LUNG, NODULE_RADIUS_MM, VESSEL, generate_ct_phantom
from plugins.nodule_det.boxes import NEGATIVE, POSITIVE, box_area, encode, grid_anchors, match_anchors
from plugins.nodule_det.evaluate import phantom_volume
from plugins.nodule_det.handler import detection_plan
from plugins.nodule_det.network import IN_CHANNELS, LEVELS, SHAPE_MULTIPLE, SingleShotDetector
from plugins.nodule_det.truth import slice_boxes

TRAIN_SEED_BASE = 100_000
SMALL_NODULE_RADIUS_MM = (3.0, 5.0)
DEFAULT_WEIGHTS = Path(__file__).with_name("weights.pt")
MIN_BOX_PX = 3.0  # truth boxes with both sides below this are ignored, not learned (a sphere's cap on an edge slice)
MIN_KEPT_AREA = 0.6  # a truth box cut by the crop edge to less than this share of its area is ignored
NEGATIVES_PER_POSITIVE = 3
MIN_NEGATIVES = 16


@dataclass
class TrainingPool:
    """Preprocessed slices of many phantoms, their truth boxes and the places crops are centred on."""

    images: torch.Tensor  # (slices, H, W) float16 in [0, 1]
    neighbours: torch.Tensor  # (slices, IN_CHANNELS) pool indices of each slice's context within its phantom
    boxes: list[torch.Tensor]  # per slice, (K, 4) truth boxes
    nodule_boxes: torch.Tensor  # (B, 5) slice index and box of every truth box
    vessel_voxels: torch.Tensor  # (V, 3) slice, row, col of (subsampled) vessel voxels
    lung_voxels: torch.Tensor  # (L, 3) slice, row, col of (subsampled) lung voxels


def context_index(slices: int, radius: int = IN_CHANNELS // 2) -> torch.Tensor:
    """(slices, 2 * radius + 1) indices of each slice and its neighbours, repeating the end slices."""
    offsets = torch.arange(-radius, radius + 1)
    return (torch.arange(slices)[:, None] + offsets[None, :]).clamp(0, slices - 1)


def build_pool(count: int, seed: int, slices: int = 48, size: int = 256) -> TrainingPool:
    """Generate ``count`` training phantoms (1-3 nodules, 12-30 HU noise; every third only 3-5 mm nodules)."""
    rng = np.random.default_rng(seed)
    images, neighbours, boxes, vessels, lungs = [], [], [], [], []
    for k in range(count):
        radius = SMALL_NODULE_RADIUS_MM if k % 3 == 2 else NODULE_RADIUS_MM
        phantom = generate_ct_phantom(TRAIN_SEED_BASE + seed * 10_000 + k, slices=slices, size=size,
                                      nodules=int(rng.integers(1, 4)), noise_hu=float(rng.uniform(12, 30)),
                                      nodule_radius_mm=radius)
        plan = detection_plan(phantom_volume(phantom), context_radius=0)
        images.append(run_slice_plan(phantom.hu, plan)[:, 0, :size, :size].to(torch.float16))
        neighbours.append(k * slices + context_index(slices))
        boxes.extend(torch.from_numpy(b) for b in slice_boxes(phantom.nodule_mask))
        offset = torch.tensor([k * slices, 0, 0])
        vessels.append(torch.nonzero(torch.from_numpy(phantom.tissue == VESSEL))[::5] + offset)
        lungs.append(torch.nonzero(torch.from_numpy(phantom.tissue == LUNG))[::50] + offset)
    nodule_boxes = torch.cat([torch.cat([torch.full((len(b), 1), float(s)), b], dim=1) for s, b in enumerate(boxes)])
    return TrainingPool(images=torch.cat(images), neighbours=torch.cat(neighbours), boxes=boxes,
                        nodule_boxes=nodule_boxes, vessel_voxels=torch.cat(vessels), lung_voxels=torch.cat(lungs))


def crop_boxes(boxes: torch.Tensor, r0: int, c0: int, crop: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes moved into a crop at (r0, c0): (learned boxes, ignored boxes), clipped to the crop.

    Ignored: boxes too small to learn from (:data:`MIN_BOX_PX`) or cut by the
    crop edge to less than :data:`MIN_KEPT_AREA` of their area.
    """
    moved = boxes - torch.tensor([c0, r0, c0, r0], dtype=boxes.dtype)
    clipped = moved.clamp(0, crop)
    area = box_area(moved)
    visible = box_area(clipped) > 0
    small = ((moved[:, 2] - moved[:, 0]) < MIN_BOX_PX) & ((moved[:, 3] - moved[:, 1]) < MIN_BOX_PX)
    cut = box_area(clipped) < MIN_KEPT_AREA * area
    learned = visible & ~small & ~cut
    return clipped[learned], clipped[visible & ~learned]


def _flip(boxes: torch.Tensor, crop: int, axis: int) -> torch.Tensor:
    """Mirror boxes in a crop: axis 0 flips rows (y), axis 1 columns (x)."""
    lo, hi = (1, 3) if axis == 0 else (0, 2)
    flipped = boxes.clone()
    flipped[:, lo], flipped[:, hi] = crop - boxes[:, hi], crop - boxes[:, lo]
    return flipped


def sample_batch(pool: TrainingPool, rng: np.random.Generator, batch: int, crop: int, anchors: torch.Tensor,
                 shares: tuple[float, float, float] = (0.5, 0.3, 0.1)
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch of crops (batch, C, crop, crop), anchor labels (batch, A) and box targets (batch, A, 4).

    ``shares`` are the fractions of crops near a nodule box, a vessel voxel and
    a lung voxel; the rest lie anywhere. Each crop holds a slice and its
    neighbours (in random through-plane order), is flipped at random and gets a
    little contrast jitter.
    """
    _, height, width = pool.images.shape
    bounds = np.cumsum(shares)
    images, labels, targets = [], [], []
    for _ in range(batch):
        kind = int(np.searchsorted(bounds, rng.random(), side="right"))
        if kind == 0:
            s, x0, y0, x1, y1 = pool.nodule_boxes[int(rng.integers(len(pool.nodule_boxes)))].tolist()
            s, r, c = int(s), (y0 + y1) / 2, (x0 + x1) / 2
        elif kind in (1, 2):
            centres = pool.vessel_voxels if kind == 1 else pool.lung_voxels
            s, r, c = centres[int(rng.integers(len(centres)))].tolist()
        if kind < 3:
            r0 = int(np.clip(r - rng.integers(crop // 8, crop - crop // 8), 0, height - crop))
            c0 = int(np.clip(c - rng.integers(crop // 8, crop - crop // 8), 0, width - crop))
        else:
            s = int(rng.integers(pool.images.shape[0]))
            r0, c0 = int(rng.integers(0, height - crop + 1)), int(rng.integers(0, width - crop + 1))
        context = pool.neighbours[s] if rng.random() < 0.5 else pool.neighbours[s].flip(0)
        image = pool.images[context, r0:r0 + crop, c0:c0 + crop].float()
        learned, ignored = crop_boxes(pool.boxes[s], r0, c0, crop)
        for axis in (0, 1):
            if rng.random() < 0.5:
                image = image.flip(axis + 1)
                learned, ignored = _flip(learned, crop, axis), _flip(ignored, crop, axis)
        gain, offset = rng.uniform(0.95, 1.05), rng.uniform(-0.02, 0.02)
        images.append((image * gain + offset).clamp(0.0, 1.0))
        label, index = match_anchors(anchors, learned, ignored)
        target = torch.zeros(len(anchors), 4)
        positive = label == POSITIVE
        target[positive] = encode(learned[index[positive]], anchors[positive])
        labels.append(label)
        targets.append(target)
    return torch.stack(images), torch.stack(labels), torch.stack(targets)


def detection_loss(output: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """SSD loss: BCE on positives and the hardest negatives of each crop, plus smooth L1 on positive boxes.

    Both terms are divided by the number of positives in the batch (at least one).
    """
    logits, deltas = output[..., 0], output[..., 1:]
    positive, negative = labels == POSITIVE, labels == NEGATIVE
    bce = F.binary_cross_entropy_with_logits(logits, positive.float(), reduction="none")
    negative_loss = bce.detach().masked_fill(~negative, -1.0)
    rank = negative_loss.argsort(dim=1, descending=True).argsort(dim=1)
    quota = (positive.sum(dim=1, keepdim=True) * NEGATIVES_PER_POSITIVE).clamp(min=MIN_NEGATIVES)
    hard = negative & (rank < quota)
    count = positive.sum().clamp(min=1)
    classification = bce[positive | hard].sum() / count
    regression = F.smooth_l1_loss(deltas[positive], targets[positive], reduction="sum", beta=1.0) / count
    return classification + regression


def train(steps: int, out: Path, seed: int = 0, phantoms: int = 40, batch: int = 16, crop: int = 128,
          lr: float = 3e-3, log_every: int = 100, phantom_slices: int = 48, phantom_size: int = 256) -> float:
    """Train from scratch on one thread, save the state dict to ``out`` and return the final smoothed loss."""
    if crop > phantom_size or crop % SHAPE_MULTIPLE:
        raise ValueError(f"crop must be a multiple of {SHAPE_MULTIPLE} no larger than the phantom size "
                         f"({phantom_size}), got {crop}")
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    rng = np.random.default_rng(seed)
    started = time.monotonic()
    pool = build_pool(phantoms, seed, phantom_slices, phantom_size)
    print(f"{phantoms} phantoms, {pool.images.shape[0]} slices, {len(pool.nodule_boxes)} truth boxes "
          f"({time.monotonic() - started:.0f} s)", flush=True)
    anchors = grid_anchors(crop, crop, LEVELS)
    network = SingleShotDetector()
    optimiser = torch.optim.Adam(network.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps, pct_start=0.1)
    smoothed = math.nan
    network.train()
    for step in range(1, steps + 1):
        images, labels, targets = sample_batch(pool, rng, batch, crop, anchors)
        loss = detection_loss(network(images), labels, targets)
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
    """Command line: ``python -m plugins.nodule_det.train [--steps N] [--out PATH] [--seed S] ...``."""
    parser = argparse.ArgumentParser(description="Train the nodule-det detector on generated phantoms (CPU)")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--phantoms", type=int, default=40, help="training phantoms generated up front")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--crop", type=int, default=128, help=f"square crop size (multiple of {SHAPE_MULTIPLE})")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--phantom-slices", type=int, default=48)
    parser.add_argument("--phantom-size", type=int, default=256)
    parser.add_argument("--log-every", type=int, default=100)
    args = parser.parse_args(argv)
    return train(args.steps, args.out, args.seed, args.phantoms, args.batch, args.crop, args.lr, args.log_every,
                 phantom_slices=args.phantom_slices, phantom_size=args.phantom_size)


if __name__ == "__main__":
    main()
