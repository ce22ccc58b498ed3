"""Measure the nodule classifiers on phantoms they never saw: AUC, sensitivity and specificity.

    python -m plugins.nodule_cls.evaluate --task ct --seeds 1-40
    python -m plugins.nodule_cls.evaluate --task dx --seeds 1-40 --radius 5-10

Odd seeds carry 1-3 nodules (``1 + seed % 3``), even seeds none, so a seed
range is balanced. Each study runs through the registered ModelSpec exactly
as a worker runs it (``load_network``, ``handler.preprocess``, the network in
``max_batch`` chunks, ``handler.postprocess``) on a :class:`~engine.api.Volume`
built straight from the phantom arrays.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np
import torch
from pydicom.uid import CTImageStorage, DigitalXRayImageStorageForPresentation

from engine.api import ModelRegistry, ModelResult, ModelSpec, SeriesInfo, Volume
from engine.synthetic.ct_phantom import NODULE_RADIUS_MM, CTPhantom, generate_ct_phantom
from engine.synthetic.dx_phantom import DEFAULT_SLICES, DXPhantom, generate_dx_phantom
from plugins import nodule_cls
from plugins.nodule_cls.handler import LABEL
from plugins.evaluation import run_model

DX_VISIBLE_RADIUS_MM = (5.0, 10.0)  # the radiograph task: nodules of 5-10 mm radius (see the accuracy test)


def ct_volume(phantom: CTPhantom) -> Volume:
    """The Volume a worker would decode from the phantom's CT files."""
    slices = phantom.hu.shape[0]
    return Volume(
        stored=phantom.hu, spacing=phantom.spacing, origin=phantom.origin,
        orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0), sources=[], frames=[(i, 1) for i in range(slices)],
        series=SeriesInfo(study_uid="1.2.3", series_uid="1.2.3.4", modality="CT", sop_class_uid=CTImageStorage,
                          body_part="CHEST", instance_count=slices, frame_count=slices),
    )


def dx_volume(phantom: DXPhantom) -> Volume:
    """The (1, rows, cols) Volume a worker would decode from the phantom's DX file."""
    return Volume(
        stored=phantom.image[None], spacing=(1.0, phantom.pixel_mm, phantom.pixel_mm), origin=(0.0, 0.0, 0.0),
        orientation=(1.0, 0.0, 0.0, 0.0, 0.0, -1.0), sources=[], frames=[(0, 1)],
        series=SeriesInfo(study_uid="1.2.3", series_uid="1.2.3.5", modality="DX",
                          sop_class_uid=DigitalXRayImageStorageForPresentation, body_part="CHEST",
                          instance_count=1, frame_count=1),
    )


def registered_specs() -> dict[str, ModelSpec]:
    """Both ModelSpecs as the plugin registers them, by task (``ct``, ``dx``)."""
    registry = ModelRegistry()
    nodule_cls.scanstream_register_models(registry)
    return {"ct": registry.get(nodule_cls.CT_MODEL_NAME), "dx": registry.get(nodule_cls.DX_MODEL_NAME)}


def nodule_count(seed: int) -> int:
    """The evaluation design: odd seeds have ``1 + seed % 3`` nodules, even seeds none."""
    return 1 + seed % 3 if seed % 2 else 0


def auc(scores: list[float], labels: list[bool]) -> float:
    """Area under the ROC curve: the chance a random positive outscores a random negative (ties count half)."""
    positive = np.array([s for s, y in zip(scores, labels) if y], dtype=float)
    negative = np.array([s for s, y in zip(scores, labels) if not y], dtype=float)
    if not len(positive) or not len(negative):
        raise ValueError("AUC needs at least one positive and one negative study")
    greater = (positive[:, None] > negative[None, :]).sum()
    ties = (positive[:, None] == negative[None, :]).sum()
    return float(greater + 0.5 * ties) / (len(positive) * len(negative))


@dataclass
class StudyScore:
    """One evaluation study: its truth and the model's answer."""

    seed: int
    nodules: int
    smallest_mm: float  # radius of its smallest nodule (0 without nodules)
    probability: float
    present: bool  # the model's decision at its threshold


@dataclass
class Summary:
    """AUC and the operating point over a set of studies."""

    auc: float
    sensitivity: float
    specificity: float
    positives: int
    negatives: int


def summarise(scores: list[StudyScore]) -> Summary:
    """AUC over the studies, and sensitivity/specificity of the model's own decisions."""
    labels = [s.nodules > 0 for s in scores]
    positives = [s for s in scores if s.nodules]
    negatives = [s for s in scores if not s.nodules]
    return Summary(auc=auc([s.probability for s in scores], labels),
                   sensitivity=sum(s.present for s in positives) / len(positives),
                   specificity=sum(not s.present for s in negatives) / len(negatives),
                   positives=len(positives), negatives=len(negatives))


def score(seed: int, nodules: list[float], result: ModelResult) -> StudyScore:
    """A study's score from its nodule radii and the model's result."""
    return StudyScore(seed, len(nodules), min(nodules, default=0.0), result.class_probabilities[LABEL],
                      any(f.label == LABEL for f in result.findings))


def evaluate_ct(seeds: list[int], spec: ModelSpec | None = None, network: torch.nn.Module | None = None,
                **phantom_args) -> list[StudyScore]:
    """Score ``nodule-cls`` on ``generate_ct_phantom(seed, nodules=nodule_count(seed), **phantom_args)``."""
    spec = spec or registered_specs()["ct"]
    network = network or spec.load_network()
    scores = []
    for seed in seeds:
        phantom = generate_ct_phantom(seed, nodules=nodule_count(seed), **phantom_args)
        scores.append(score(seed, [r for _, r in phantom.nodules], run_model(spec, network, ct_volume(phantom))))
    return scores


def evaluate_dx(seeds: list[int], spec: ModelSpec | None = None, network: torch.nn.Module | None = None,
                radius_mm: tuple[float, float] = DX_VISIBLE_RADIUS_MM, slices: int = DEFAULT_SLICES,
                **phantom_args) -> list[StudyScore]:
    """Score ``nodule-cls-dx`` on ``generate_dx_phantom(seed, nodules=nodule_count(seed), ...)``."""
    spec = spec or registered_specs()["dx"]
    network = network or spec.load_network()
    scores = []
    for seed in seeds:
        phantom = generate_dx_phantom(seed, nodules=nodule_count(seed), nodule_radius_mm=radius_mm, slices=slices,
                                      **phantom_args)
        scores.append(score(seed, [n.radius_mm for n in phantom.nodules],
                            run_model(spec, network, dx_volume(phantom))))
    return scores


def _seed_list(text: str) -> list[int]:
    """``"1-10,7001"`` -> [1, ..., 10, 7001]."""
    seeds: list[int] = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        seeds.extend(range(int(low), int(high or low) + 1))
    return seeds


def _radius_range(text: str) -> tuple[float, float]:
    """``"5-10"`` -> (5.0, 10.0)."""
    low, _, high = text.partition("-")
    return float(low), float(high or low)


def main(argv: list[str] | None = None) -> int:
    """Print each study's probability and the AUC, sensitivity and specificity over the seed range."""
    parser = argparse.ArgumentParser(description="Evaluate nodule-cls (CT) or nodule-cls-dx on unseen phantoms")
    parser.add_argument("--task", choices=("ct", "dx"), default="ct")
    parser.add_argument("--seeds", type=_seed_list, default=_seed_list("1-40"))
    parser.add_argument("--radius", type=_radius_range, default=None,
                        help="nodule radius range in mm, e.g. 3-10 (default: CT 3-10, DX 5-10)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    started = time.monotonic()
    if args.task == "ct":
        scores = evaluate_ct(args.seeds, nodule_radius_mm=args.radius or NODULE_RADIUS_MM)
    else:
        scores = evaluate_dx(args.seeds, radius_mm=args.radius or DX_VISIBLE_RADIUS_MM)
    for s in scores:
        print(f"seed {s.seed:>6}: nodules {s.nodules} smallest {s.smallest_mm:4.1f} mm  "
              f"p {s.probability:.3f} {'present' if s.present else 'absent'}")
    summary = summarise(scores)
    print(f"{args.task}: seeds {args.seeds[0]}-{args.seeds[-1]} ({summary.positives} with nodules, "
          f"{summary.negatives} without): AUC {summary.auc:.3f}, sensitivity {summary.sensitivity:.3f}, "
          f"specificity {summary.specificity:.3f} at the model's threshold ({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
