"""Measure the registered nodule model on phantoms it never saw: Dice and findings per seed.

    python -m plugins.nodule_seg.evaluate --seeds 1-10

Runs the model exactly as a worker does (``load_network``, ``handler.preprocess``,
the network in inference mode in ``max_batch`` chunks, ``handler.postprocess``)
on a :class:`~engine.api.Volume` built straight from the phantom arrays.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np
import torch

from engine.api import ModelRegistry, ModelResult, ModelSpec
from engine.synthetic.ct_phantom import CTPhantom, generate_ct_phantom
from plugins import nodule_seg
from plugins.evaluation import phantom_volume, run_model


def registered_spec() -> ModelSpec:
    """The ``nodule-seg`` ModelSpec as the plugin registers it."""
    registry = ModelRegistry()
    nodule_seg.scanstream_register_models(registry)
    return registry.get(nodule_seg.MODEL_NAME)


def dice(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Dice coefficient of two masks (1.0 when both are empty)."""
    predicted, truth = predicted.astype(bool), truth.astype(bool)
    total = int(predicted.sum() + truth.sum())
    return 1.0 if total == 0 else 2.0 * float((predicted & truth).sum()) / total


def match_findings(result: ModelResult, phantom: CTPhantom) -> tuple[int, int]:
    """(true nodules with a finding centroid inside them, findings whose centroid lies in no nodule)."""
    centroids = np.array([f.centroid_mm for f in result.findings], dtype=float).reshape(-1, 3)
    centres = np.array([(x, y, z) for (z, y, x), _ in phantom.nodules], dtype=float).reshape(-1, 3)
    radii = np.array([r for _, r in phantom.nodules], dtype=float)
    inside = np.linalg.norm(centroids[:, None, :] - centres[None, :, :], axis=2) <= radii[None, :]
    return int(inside.any(axis=0).sum()), int((~inside.any(axis=1)).sum())


@dataclass
class SeedScore:
    """One evaluation study: truth, prediction and how they agree."""

    seed: int
    nodules: int
    findings: int
    hits: int
    false_findings: int
    dice: float


def evaluate(seeds: list[int], spec: ModelSpec | None = None, network: torch.nn.Module | None = None,
             nodules: int | None = None) -> list[SeedScore]:
    """Score the model on ``generate_ct_phantom(seed, nodules=nodules)`` for every seed."""
    spec = spec or registered_spec()
    network = network or spec.load_network()
    scores = []
    for seed in seeds:
        phantom = generate_ct_phantom(seed, nodules=nodules)
        result = run_model(spec, network, phantom_volume(phantom))
        if result.label_map is None:
            raise ValueError(f"seed {seed}: the model returned no label map")
        hits, false_findings = match_findings(result, phantom)
        scores.append(SeedScore(seed, len(phantom.nodules), len(result.findings), hits, false_findings,
                                dice(result.label_map, phantom.nodule_mask)))
    return scores


def _seed_list(text: str) -> list[int]:
    """``"1-10,7001"`` -> [1, ..., 10, 7001]."""
    seeds: list[int] = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        seeds.extend(range(int(low), int(high or low) + 1))
    return seeds


def main(argv: list[str] | None = None) -> int:
    """Print a per-seed table and the mean Dice over studies with nodules."""
    parser = argparse.ArgumentParser(description="Evaluate nodule-seg on unseen phantoms")
    parser.add_argument("--seeds", type=_seed_list, default=_seed_list("1-10"))
    parser.add_argument("--nodules", type=int, default=None, help="fixed nodule count (default: 0-3 from the seed)")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    started = time.monotonic()
    scores = evaluate(args.seeds, nodules=args.nodules)
    for s in scores:
        print(f"seed {s.seed:>6}: nodules {s.nodules} findings {s.findings} hit {s.hits} "
              f"false {s.false_findings} dice {s.dice:.3f}")
    positive = [s.dice for s in scores if s.nodules]
    mean = float(np.mean(positive)) if positive else float("nan")
    print(f"mean dice {mean:.3f} over {len(positive)} studies with nodules; "
          f"missed {sum(s.nodules - s.hits for s in scores)}, false findings {sum(s.false_findings for s in scores)} "
          f"({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
