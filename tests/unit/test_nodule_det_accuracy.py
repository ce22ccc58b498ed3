"""The committed nodule detector, run through its registered ModelSpec, on phantoms never used in training.

Evaluation seeds 1-40 with the generator's own nodule count (0-3 per study),
32 slices of 256 x 256 (the default in-plane geometry, two thirds of the
default slices, to keep the test quick); training uses seeds from 100000 up
(plugins/nodule_det/train.py). The
criterion (plugins/nodule_det/evaluate.py): a nodule is found when a finding's
box on the nodule's central slice (the slice nearest its centre) has IoU >= 0.3
with the nodule's truth box on that slice (its mask's bounding box there); a
finding that finds no nodule is a false positive. Asserted: recall >= 0.9 and
at most one false-positive finding per study on average.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pydicom.uid import CTImageStorage

from engine.api import ModelRegistry, ModelResult, SeriesInfo
from engine.synthetic.ct_phantom import CTPhantom, generate_ct_phantom
from plugins import nodule_det
from plugins.nodule_det.boxes import POSITIVE, box_iou, decode, grid_anchors
from plugins.nodule_det.evaluate import HIT_IOU, match_findings, phantom_volume, run_model
from plugins.nodule_det.network import LEVELS
from plugins.nodule_det.train import build_pool, crop_boxes, main, sample_batch
from plugins.nodule_det.truth import nodule_truths

EVAL_SEEDS = range(1, 41)
EVAL_SLICES = 32
RECALL_FLOOR = 0.9
MAX_FALSE_PER_STUDY = 1.0


@pytest.fixture(scope="module")
def spec():
    registry = ModelRegistry()
    nodule_det.scanstream_register_models(registry)
    return registry.get("nodule-det")


@pytest.fixture(scope="module")
def network(spec):
    torch.set_num_threads(1)
    return spec.load_network()


@pytest.fixture(scope="module")
def outcomes(spec, network) -> list[tuple[int, CTPhantom, ModelResult]]:
    runs = []
    for seed in EVAL_SEEDS:
        phantom = generate_ct_phantom(seed, slices=EVAL_SLICES)
        runs.append((seed, phantom, run_model(spec, network, phantom_volume(phantom))))
    return runs


@pytest.mark.slow
def test_recall_and_false_positives_on_unseen_studies(outcomes) -> None:
    nodules = sum(len(phantom.nodules) for _, phantom, _ in outcomes)
    assert nodules >= 40 and any(not phantom.nodules for _, phantom, _ in outcomes)
    scores = {seed: match_findings(result, phantom) for seed, phantom, result in outcomes}
    found = sum(hits for hits, _ in scores.values())
    false = sum(false for _, false in scores.values())
    assert found / nodules >= RECALL_FLOOR, scores
    assert false / len(outcomes) <= MAX_FALSE_PER_STUDY, scores


@pytest.mark.slow
def test_findings_are_boxes_on_consecutive_slices_near_the_nodules(outcomes) -> None:
    for seed, phantom, result in outcomes:
        rows, cols = phantom.hu.shape[1:]
        for finding in result.findings:
            assert finding.label == "nodule" and 0.5 <= finding.probability <= 1.0
            indices = [r.slice_index for r in finding.regions]
            assert indices == list(range(indices[0], indices[0] + len(indices))), f"seed {seed}"
            for region in finding.regions:
                x0, y0, x1, y1 = region.box
                assert 0 <= x0 < x1 <= cols and 0 <= y0 < y1 <= rows
        for truth, ((z, y, x), radius) in zip(nodule_truths(phantom), phantom.nodules):
            hits = [f for f in result.findings for r in f.regions if r.slice_index == truth.central_slice
                    and float(box_iou(torch.tensor([r.box]), torch.tensor([truth.box]))) >= HIT_IOU]
            assert len(hits) <= 1, f"seed {seed}: {result.summary}"  # one finding per nodule
            for finding in hits:  # its centroid lies within the nodule (3 mm at least)
                distance = np.linalg.norm(np.subtract(finding.centroid_mm, (x, y, z)))
                assert distance <= max(radius, 3.0), f"seed {seed}: {finding}"
        assert result.findings == sorted(result.findings, key=lambda f: -f.probability)
        assert result.summary.startswith(f"nodule detection: {len(result.findings)} finding")


def test_finer_pixels_are_resampled_to_the_model_and_boxes_mapped_back(spec, network) -> None:
    phantom = generate_ct_phantom(41, slices=24, size=512, pixel_mm=0.7, nodules=2)
    result = run_model(spec, network, phantom_volume(phantom))
    assert match_findings(result, phantom) == (2, 0), result.summary
    for finding in result.findings:
        assert all(0 <= v <= 512 for r in finding.regions for v in r.box)


def test_plan_and_preprocess_agree(spec) -> None:
    phantom = generate_ct_phantom(42, slices=9, size=64, nodules=0)
    volume = phantom_volume(phantom)
    batch = spec.handler.preprocess(volume)
    plan = spec.handler.plan(volume)
    assert tuple(batch.shape) == plan.output_shape(9) == (9, 3, 64, 64)
    assert float(batch.min()) >= 0.0 and float(batch.max()) <= 1.0
    assert torch.equal(batch[3, 1], batch[4, 0]) and torch.equal(batch[0, 0], batch[0, 1])


def test_a_study_without_nodules_has_an_empty_summary(spec, network) -> None:
    phantom = generate_ct_phantom(43, slices=16, size=128, nodules=0)
    volume = phantom_volume(phantom)
    with torch.inference_mode():
        output = network(spec.handler.preprocess(volume))
    result = spec.handler.postprocess(torch.full_like(output, -20.0), volume)
    assert result.findings == [] and result.summary == "nodule detection: 0 findings"


def test_selector_and_spec(spec) -> None:
    def series(modality: str, instances: int, frames: int = 0) -> SeriesInfo:
        return SeriesInfo("1", "1.1", modality, CTImageStorage, instance_count=instances, frame_count=frames)

    assert spec.selector(series("CT", 8)) and spec.selector(series("CT", 1, frames=64))
    assert not spec.selector(series("CT", 7)) and not spec.selector(series("MR", 48))
    assert (spec.name, spec.version) == ("nodule-det", "1.0.0")
    assert spec.outputs == ("result_json", "sr", "preview")
    assert nodule_det.WEIGHTS.stat().st_size < 2_000_000


@pytest.mark.slow
def test_exports_to_onnx_with_dynamic_batch_and_size(spec, network, tmp_path: Path) -> None:
    import onnxruntime

    from engine.runtime.export import export_onnx

    path = export_onnx(network, spec, tmp_path / "nodule-det.onnx")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in ((1, 3, 256, 256), (3, 3, 96, 160)):
        batch = torch.rand(shape, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            expected = network(batch).numpy()
        actual = session.run(None, {"input": batch.numpy()})[0]
        assert actual.shape == expected.shape
        assert np.abs(actual - expected).max() < 1e-3


def test_crop_boxes_clip_and_ignore() -> None:
    boxes = torch.tensor([[10.0, 10.0, 20.0, 20.0], [60.0, 60.0, 70.0, 70.0], [5.0, 5.0, 7.0, 7.0],
                          [200.0, 200.0, 210.0, 210.0], [-8.0, 30.0, 2.0, 40.0]])
    learned, ignored = crop_boxes(boxes, r0=0, c0=-2, crop=64)  # shift x by +2
    assert learned.tolist() == [[12.0, 10.0, 22.0, 20.0]]
    # cut by the edge (62..64 of 62..72), too small (2 x 2), cut (0..4 of -6..4); the far box is not in the crop
    assert ignored.tolist() == [[62.0, 60.0, 64.0, 64.0], [7.0, 5.0, 9.0, 7.0], [0.0, 30.0, 4.0, 40.0]]


def test_training_crops_carry_positives_on_the_nodules() -> None:
    pool = build_pool(2, seed=3, slices=16, size=128)
    anchors = grid_anchors(64, 64, LEVELS)
    images, labels, targets = sample_batch(pool, np.random.default_rng(0), batch=12, crop=64, anchors=anchors,
                                           shares=(1.0, 0.0, 0.0))
    assert images.shape == (12, 3, 64, 64) and labels.shape == (12, len(anchors)) and targets.shape[-1] == 4
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    positives = labels == POSITIVE
    assert bool(positives.any(dim=1).all())
    for item in range(12):  # each positive's decoded truth box covers nodule-bright pixels of the middle slice
        for x0, y0, x1, y1 in decode(targets[item][positives[item]], anchors[positives[item]]).round().int().tolist():
            assert float(images[item, 1, y0:y1, x0:x1].max()) > 0.6


def test_a_few_training_steps_write_loadable_weights_reproducibly(tmp_path: Path, capsys) -> None:
    args = ["--steps", "3", "--phantoms", "2", "--batch", "2", "--crop", "64", "--seed", "5",
            "--phantom-slices", "16", "--phantom-size", "128"]
    first = main([*args, "--out", str(tmp_path / "a.pt")])
    second = main([*args, "--out", str(tmp_path / "b.pt")])
    assert np.isfinite(first) and first == second
    assert "step 3/3 loss" in capsys.readouterr().out
    a, b = nodule_det.load_network(tmp_path / "a.pt"), nodule_det.load_network(tmp_path / "b.pt")
    assert not a.training
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(pa, pb), name
    with pytest.raises(ValueError, match="crop"):
        main(["--steps", "1", "--crop", "60", "--out", str(tmp_path / "unused.pt")])
