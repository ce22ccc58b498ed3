"""Train the nodule classifiers on phantoms generated on the fly, reproducibly, on one CPU thread.

    python -m plugins.nodule_cls.train --task ct   # about 4-6 minutes: 600 steps
    python -m plugins.nodule_cls.train --task dx   # about 7-11 minutes: 500 steps

(times on one thread of a shared two-core machine, quiet to busy). Each
rebuilds its committed weights (``weights_ct.pt``, ``weights_dx.pt``) bit for
bit with the default arguments (same seed, same torch build); ``--out`` writes
elsewhere. Training phantoms use seeds from :data:`TRAIN_SEED_BASE` up (CT and
DX apart); evaluation seeds (the accuracy test and ``evaluate.py``: 1-140;
integration tests: 7000-7999; the demo: 2024) never appear here.

Both tasks keep a rolling pool of phantoms and replace the oldest with a
freshly generated one every ``--refresh`` steps, so training sees many more
studies than fit in memory (CT: 174 studies, DX: 198 chests in 99 pairs).

CT: pool studies alternate with 1-3 nodules and none. Batches are slices, a
third with a nodule cut through the slice (its cross-section at least 0.6 of
the nodule's radius), two thirds with no nodule within the 2.5D context
(slices of nodule-free studies, and slices of the other studies far from
their nodules: vessels and ribs are the hard negatives); slices that show only
a nodule's cap or have one in a neighbour are left out. A third of the studies
with nodules have only small ones (3-5 mm).

DX: pool entries are pairs, one chest with 1-3 nodules of 3-10 mm and the same
chest without (see :func:`dx_pair`); each draw re-exposes the stored
noise-free projections with fresh quantum noise at a random dose, so no two
batches hold the same image; a pair shares a random left-right flip.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from engine.kernels.cpu import context_index, run_slice_plan
from engine.synthetic.ct_phantom import NODULE_RADIUS_MM, generate_ct_phantom
from engine.synthetic.dx_phantom import DEFAULT_PHOTONS, DEFAULT_SLICES, expose, project, to_stored
from plugins.nodule_cls.evaluate import ct_volume
from plugins.nodule_cls.handler import CtNoduleClsHandler, radiograph_input
from plugins.nodule_cls.network import ResNetClassifier, ct_network, dx_network

TRAIN_SEED_BASE = 100_000
DX_SEED_OFFSET = 500_000  # DX training phantoms: TRAIN_SEED_BASE + DX_SEED_OFFSET + ...
SMALL_NODULE_RADIUS_MM = (3.0, 5.0)
CT_POSITIVE_SHARE = 1 / 3
POSITIVE_SECTION = 0.8  # a slice is positive within 0.8 radii of a nodule centre (cross-section >= 0.6 r)
DX_PHOTONS = (0.6 * DEFAULT_PHOTONS, 1.5 * DEFAULT_PHOTONS)
DEFAULTS = {  # per task: steps, pool size, refresh period, batch, learning rate
    "ct": {"steps": 600, "pool": 24, "refresh": 4, "batch": 32, "lr": 3e-3},
    "dx": {"steps": 500, "pool": 32, "refresh": 3, "batch": 32, "lr": 2e-3},
}
WEIGHTS = {"ct": Path(__file__).with_name("weights_ct.pt"), "dx": Path(__file__).with_name("weights_dx.pt")}


@dataclass
class CtStudy:
    """One phantom's slices as the network sees them, with a label per slice."""

    planes: torch.Tensor  # (S, H, W) float32 windowed, resampled slices
    context: torch.Tensor  # (S, C) indices of each slice's channels (the handler's 2.5D context)
    labels: np.ndarray  # (S,) int8: 1 nodule in the slice, 0 none nearby, -1 left out


def slice_labels(phantom_z: np.ndarray, nodules: list, reach_mm: float) -> np.ndarray:
    """Per slice: 1 when it cuts a nodule within ``POSITIVE_SECTION`` radii of its centre, 0 when no nodule
    lies within ``reach_mm`` (the 2.5D context) of the slice, -1 otherwise."""
    labels = np.zeros(len(phantom_z), dtype=np.int8)
    for (z, _, _), radius in nodules:
        distance = np.abs(phantom_z - z)
        labels[(distance < radius + reach_mm) & (labels == 0)] = -1
    for (z, _, _), radius in nodules:
        labels[np.abs(phantom_z - z) <= POSITIVE_SECTION * radius] = 1
    return labels


def ct_study(seed: int, positive: bool, rng: np.random.Generator, slices: int = 48, size: int = 256) -> CtStudy:
    """Generate one training CT and preprocess it with the handler's own plan."""
    radius = SMALL_NODULE_RADIUS_MM if positive and rng.random() < 1 / 3 else NODULE_RADIUS_MM
    phantom = generate_ct_phantom(seed, slices=slices, size=size, nodules=int(rng.integers(1, 4)) if positive else 0,
                                  noise_hu=float(rng.uniform(12, 30)), nodule_radius_mm=radius)
    volume = ct_volume(phantom)
    plan = CtNoduleClsHandler().plan(volume)
    planes = run_slice_plan(volume.stored, replace(plan, context_radius=0))[:, 0]
    z = phantom.origin[2] + np.arange(slices) * phantom.spacing[0]
    reach = plan.context_radius * plan.context_step * phantom.spacing[0]
    return CtStudy(planes, context_index(slices, plan.context_radius, plan.context_step),
                   slice_labels(z, phantom.nodules, reach))


def ct_batch(pool: list[CtStudy], rng: np.random.Generator, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A third positive, two thirds negative slices, with flips, channel-order reversal and contrast jitter.

    More negatives than positives: the study score is the largest of ~50 slice
    scores, so one slice's false alarm costs a whole study's specificity.
    """
    positives = round(batch * CT_POSITIVE_SHARE)
    by_label = {label: [(k, int(s)) for k, study in enumerate(pool) for s in np.flatnonzero(study.labels == label)]
                for label in (0, 1)}
    images, targets = [], []
    for index in range(batch):
        label = int(index < positives)
        k, s = by_label[label][int(rng.integers(len(by_label[label])))]
        context = pool[k].context[s] if rng.random() < 0.5 else pool[k].context[s].flip(0)
        image = pool[k].planes[context]
        flips = [axis for axis in (1, 2) if rng.random() < 0.5]
        if flips:
            image = image.flip(flips)
        images.append((image * rng.uniform(0.95, 1.05) + rng.uniform(-0.02, 0.02)).clamp(0.0, 1.0))
        targets.append(float(label))
    return torch.stack(images), torch.tensor(targets)[:, None]


@dataclass
class DxPair:
    """One chest projected twice before exposure: with its nodules and without (noise-free line integrals)."""

    with_nodules: np.ndarray
    without: np.ndarray


def dx_pair(seed: int, rng: np.random.Generator, radius_mm: tuple[float, float], slices: int = DEFAULT_SLICES,
            size: int = 256) -> DxPair:
    """Generate one training chest with 1-3 nodules and the same chest without them, and project both.

    The phantom draws its anatomy before its nodules, so one seed gives the
    same chest either way: the only difference a pair shows the network is the
    nodules, which teaches a radiograph classifier far faster than unrelated
    positives and negatives. CT noise is off; the radiograph's noise comes per draw.
    """
    common = {"slices": slices, "size": size, "noise_hu": 0.0, "nodule_radius_mm": radius_mm}
    positive = generate_ct_phantom(seed, nodules=int(rng.integers(1, 4)), **common)
    negative = generate_ct_phantom(seed, nodules=0, **common)
    return DxPair(project(positive)[0], project(negative)[0])


def dx_batch(pool: list[DxPair], rng: np.random.Generator, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch // 2`` pairs, each image freshly exposed at its own random dose; a pair shares a left-right flip."""
    images, targets = [], []
    for _ in range(batch // 2):
        pair = pool[int(rng.integers(len(pool)))]
        flip = rng.random() < 0.5
        for label, line_integral in ((1, pair.with_nodules), (0, pair.without)):
            stored = to_stored(expose(line_integral, rng, photons=float(rng.uniform(*DX_PHOTONS))))
            image = radiograph_input(stored)[0]
            images.append(image.flip(2) if flip else image)
            targets.append(float(label))
    return torch.stack(images), torch.tensor(targets)[:, None]


def train(task: str, out: Path, *, steps: int, pool_size: int, refresh: int, batch: int, lr: float,
          seed: int = 0, log_every: int = 50, dx_radius_mm: tuple[float, float] = NODULE_RADIUS_MM) -> float:
    """Train one task from scratch, save the state dict to ``out`` and return the final smoothed loss."""
    if task not in WEIGHTS:
        raise ValueError(f"task must be one of {sorted(WEIGHTS)}, got {task!r}")
    if pool_size < 2 or refresh < 1 or batch < 2:
        raise ValueError("need a pool of at least 2 entries, refresh >= 1 and a batch of at least 2")
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    rng = np.random.default_rng(seed)
    started = time.monotonic()
    base = TRAIN_SEED_BASE + (DX_SEED_OFFSET if task == "dx" else 0) + seed * 10_000

    def make(k: int) -> CtStudy | DxPair:
        """The k-th pool entry: CT studies alternate with and without nodules; DX entries are pairs."""
        if task == "ct":
            return ct_study(base + k, k % 2 == 0, rng)
        return dx_pair(base + k, rng, dx_radius_mm)

    sample: Callable[..., tuple[torch.Tensor, torch.Tensor]] = ct_batch if task == "ct" else dx_batch
    network: ResNetClassifier = ct_network() if task == "ct" else dx_network()
    pool = [make(k) for k in range(pool_size)]
    generated = pool_size
    print(f"{task}: pool of {pool_size} entries ({time.monotonic() - started:.0f} s)", flush=True)
    optimiser = torch.optim.AdamW(network.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps, pct_start=0.15)
    smoothed = math.nan
    network.train()
    for step in range(1, steps + 1):
        if step % refresh == 0:  # replace the oldest entry by a new one
            pool[generated % pool_size] = make(generated)
            generated += 1
        images, targets = sample(pool, rng, batch)
        loss = F.binary_cross_entropy_with_logits(network(images), targets)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        smoothed = loss.item() if step == 1 else 0.95 * smoothed + 0.05 * loss.item()
        if step % log_every == 0 or step == steps:
            print(f"step {step}/{steps} loss {smoothed:.4f} ({time.monotonic() - started:.0f} s)", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), out)
    print(f"saved {out} ({out.stat().st_size / 1e6:.2f} MB) after {time.monotonic() - started:.0f} s, "
          f"{generated} pool entries generated", flush=True)
    return smoothed


def main(argv: list[str] | None = None) -> float:
    """Command line: ``python -m plugins.nodule_cls.train --task ct|dx [--steps N] [--out PATH] [--seed S] ...``."""
    parser = argparse.ArgumentParser(description="Train a nodule-cls classifier on generated phantoms (CPU)")
    parser.add_argument("--task", choices=sorted(WEIGHTS), required=True)
    parser.add_argument("--out", type=Path, default=None, help="weights file (default: the committed one)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--pool", type=int, default=None, help="pool entries held at once (DX: pairs)")
    parser.add_argument("--refresh", type=int, default=None, help="steps between replacing a pool entry")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--dx-radius", type=float, nargs=2, default=NODULE_RADIUS_MM, metavar=("MIN", "MAX"),
                        help="nodule radius range (mm) of the DX training phantoms")
    args = parser.parse_args(argv)
    settings = DEFAULTS[args.task]
    chosen = {key: settings[key] if getattr(args, key) is None else getattr(args, key) for key in settings}
    return train(args.task, args.out or WEIGHTS[args.task], steps=chosen["steps"], pool_size=chosen["pool"],
                 refresh=chosen["refresh"], batch=chosen["batch"], lr=chosen["lr"], seed=args.seed,
                 dx_radius_mm=tuple(args.dx_radius))


if __name__ == "__main__":
    main()
