"""Measure the nodule detector on phantoms it never saw: recall and false-positive findings per seed.

    python -m plugins.nodule_det.evaluate --seeds 1-40

Runs the model as a worker does (``load_network``, ``handler.preprocess``, the
network in inference mode in ``max_batch`` chunks, ``handler.postprocess``) on
a :class:`~engine.api.Volume` built straight from the phantom arrays.

The criterion: a nodule is found when some finding's box on the nodule's
central slice (the slice nearest its centre) has IoU >= :data:`HIT_IOU` with
the nodule's truth box on that slice (the bounding box of its mask there). A
finding that finds no nodule that way is a false positive (so a nodule split
into two findings counts one of them as false).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.api import ModelRegistry, ModelResult, ModelSpec
from engine.synthetic.ct_phantom import CTPhantom, generate_ct_phantom
from plugins import nodule_det
from plugins.nodule_det.boxes import box_iou
from plugins.nodule_det.truth import nodule_truths
from plugins.evaluation import phantom_volume, run_model

HIT_IOU = 0.3


def registered_spec() -> ModelSpec:
    """The ``nodule-det`` ModelSpec as the plugin registers it."""
    registry = ModelRegistry()
    nodule_det.scanstream_register_models(registry)
    return registry.get(nodule_det.MODEL_NAME)


def match_findings(result: ModelResult, phantom: CTPhantom, hit_iou: float = HIT_IOU) -> tuple[int, int]:
    """(nodules found, false-positive findings) under the criterion in this module's docstring."""
    truths = nodule_truths(phantom)
    finding_hits = [False] * len(result.findings)
    found = 0
    for truth in truths:
        hit = False
        for k, finding in enumerate(result.findings):
            boxes = [r.box for r in finding.regions if r.slice_index == truth.central_slice]
            if boxes and float(box_iou(torch.tensor(boxes), torch.tensor([truth.box])).max()) >= hit_iou:
                finding_hits[k] = hit = True
        found += hit
    return found, finding_hits.count(False)


@dataclass
class SeedScore:
    """One evaluation study: how many nodules, findings, hits and false findings."""

    seed: int
    nodules: int
    findings: int
    hits: int
    false_findings: int


def evaluate(seeds: list[int], spec: ModelSpec | None = None, network: torch.nn.Module | None = None,
             nodules: int | None = None, **phantom_args: object) -> list[SeedScore]:
    """Score the model on ``generate_ct_phantom(seed, nodules=nodules, **phantom_args)`` for every seed."""
    spec = spec or registered_spec()
    network = network or spec.load_network()
    scores = []
    for seed in seeds:
        phantom = generate_ct_phantom(seed, nodules=nodules, **phantom_args)
        result = run_model(spec, network, phantom_volume(phantom))
        hits, false_findings = match_findings(result, phantom)
        scores.append(SeedScore(seed, len(phantom.nodules), len(result.findings), hits, false_findings))
    return scores


def seed_list(text: str) -> list[int]:
    """``"1-10,7001"`` -> [1, ..., 10, 7001]."""
    seeds: list[int] = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        seeds.extend(range(int(low), int(high or low) + 1))
    return seeds


def main(argv: list[str] | None = None) -> int:
    """Print a per-seed table, the recall and the mean false-positive findings per study."""
    parser = argparse.ArgumentParser(description="Evaluate nodule-det on unseen phantoms")
    parser.add_argument("--seeds", type=seed_list, default=seed_list("1-40"))
    parser.add_argument("--nodules", type=int, default=None, help="fixed nodule count (default: 0-3 from the seed)")
    parser.add_argument("--slices", type=int, default=48, help="slices per phantom (256 x 256, 1.4 mm pixels)")
    parser.add_argument("--weights", type=Path, default=nodule_det.WEIGHTS, help="state dict to evaluate")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    started = time.monotonic()
    scores = evaluate(args.seeds, network=nodule_det.load_network(args.weights), nodules=args.nodules,
                      slices=args.slices)
    for s in scores:
        print(f"seed {s.seed:>6}: nodules {s.nodules} findings {s.findings} hit {s.hits} false {s.false_findings}")
    nodules, hits = sum(s.nodules for s in scores), sum(s.hits for s in scores)
    false = sum(s.false_findings for s in scores)
    recall = hits / nodules if nodules else float("nan")
    print(f"recall {recall:.3f} ({hits}/{nodules} nodules at IoU {HIT_IOU}), "
          f"false positives {false / len(scores):.2f} per study ({false} in {len(scores)}) "
          f"({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
