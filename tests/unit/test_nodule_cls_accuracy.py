"""The committed nodule classifiers, run through their registered ModelSpecs, on phantoms never used in training.

Evaluation seeds 1-40 for both models, balanced by design
(:func:`plugins.nodule_cls.evaluate.nodule_count`: odd seeds 1-3 nodules, even
seeds none); training uses seeds from 100000 up (plugins/nodule_cls/train.py).
Measured with ``python -m plugins.nodule_cls.evaluate --task ct|dx --seeds ...``.

CT (``nodule-cls``): nodules of 3-10 mm radius (the generator's range), 48
slices of 2.5 mm. Measured: seeds 1-40 AUC 1.000, sensitivity 1.00,
specificity 0.95 at p >= 0.5; seeds 41-140 AUC 1.000 (0.9996 with only 3-4 mm
nodules), specificity 0.98. Asserted: AUC >= 0.95 (the issue's floor),
sensitivity and specificity >= 0.9.

DX (``nodule-cls-dx``): a 96-slice (24 cm) chest projected to a PA radiograph.
The radiograph task is defined on nodules of 5-10 mm radius (DX_RADIUS_MM):
smaller ones are two or three 1.4 mm pixels across, barely above the quantum
noise and lost against vessels, ribs and the mediastinum edge, as on a real
film. Measured AUC by radius: 3-4 mm 0.71 (sensitivity 0.20), 4-5 mm 0.98,
5-7 mm 1.000, 7-10 mm 1.000 (seeds 1-40); 5-10 mm 1.000 on seeds 1-40 and on
41-80; 3-10 mm 0.99 / 0.935 and 4-10 mm 1.000 / 0.958 on seeds 1-40 / 41-80.
Asserted on 5-10 mm: AUC >= 0.95 (measured 1.000 on two disjoint seed
ranges; the issue aims at 0.9), sensitivity and specificity >= 0.85 (measured
0.95-1.00 and 1.00).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
)

from engine.api import ModelSpec, SeriesInfo, Volume
from engine.synthetic.ct_phantom import generate_ct_phantom
from engine.synthetic.dx_phantom import generate_dx_phantom
from plugins import nodule_cls
from plugins.nodule_cls.evaluate import (
    StudyScore,
    auc,
    ct_volume,
    dx_volume,
    evaluate_ct,
    evaluate_dx,
    nodule_count,
    registered_specs,
    run_model,
    summarise,
)
from plugins.nodule_cls.handler import CT_THRESHOLD, DX_THRESHOLD, radiograph_input

EVAL_SEEDS = list(range(1, 41))
CT_AUC_FLOOR = 0.95
DX_RADIUS_MM = (5.0, 10.0)
DX_AUC_FLOOR = 0.95


@pytest.fixture(scope="module")
def specs() -> dict[str, ModelSpec]:
    torch.set_num_threads(1)
    return registered_specs()


@pytest.fixture(scope="module")
def ct_scores(specs) -> list[StudyScore]:
    return evaluate_ct(EVAL_SEEDS, specs["ct"])


@pytest.fixture(scope="module")
def dx_scores(specs) -> list[StudyScore]:
    return evaluate_dx(EVAL_SEEDS, specs["dx"], radius_mm=DX_RADIUS_MM)


def test_evaluation_sets_are_balanced() -> None:
    counts = [nodule_count(seed) for seed in EVAL_SEEDS]
    assert sum(c > 0 for c in counts) == 20 and sorted(set(counts)) == [0, 1, 2, 3]


@pytest.mark.slow
def test_ct_auc_on_unseen_studies(ct_scores) -> None:
    summary = summarise(ct_scores)
    assert (summary.positives, summary.negatives) == (20, 20)
    assert summary.auc >= CT_AUC_FLOOR, ct_scores
    assert summary.sensitivity >= 0.9 and summary.specificity >= 0.9, summary


@pytest.mark.slow
def test_dx_auc_on_unseen_radiographs(dx_scores) -> None:
    summary = summarise(dx_scores)
    assert (summary.positives, summary.negatives) == (20, 20)
    assert all(score.smallest_mm >= DX_RADIUS_MM[0] for score in dx_scores if score.nodules)
    assert summary.auc >= DX_AUC_FLOOR, dx_scores
    assert summary.sensitivity >= 0.85 and summary.specificity >= 0.85, summary


@pytest.mark.slow
def test_decisions_follow_the_threshold(ct_scores, dx_scores) -> None:
    for scores, threshold in ((ct_scores, CT_THRESHOLD), (dx_scores, DX_THRESHOLD)):
        for score in scores:
            assert 0.0 <= score.probability <= 1.0
            assert score.present == (score.probability >= threshold), score


def test_ct_result_for_the_writers(specs) -> None:
    spec = specs["ct"]
    phantom = generate_ct_phantom(41, slices=24, nodules=1, nodule_radius_mm=(8.0, 9.0))
    result = run_model(spec, spec.load_network(), ct_volume(phantom))
    p = result.class_probabilities["nodule"]
    assert list(result.class_probabilities) == ["nodule"] and p >= CT_THRESHOLD
    assert [(f.label, f.probability) for f in result.findings] == [("nodule", p)]
    assert not result.findings[0].regions and result.label_map is None
    assert result.summary == f"nodule classification (CT): nodule present, p={p:.3f} (threshold 0.50)"
    # the deciding slice lies within the nodule's reach
    (z, _, _), radius = phantom.nodules[0]
    slice_z = phantom.origin[2] + result.extra["slice_index"] * phantom.spacing[0]
    assert abs(slice_z - z) <= radius + 5.0 and result.extra["threshold"] == CT_THRESHOLD


def test_dx_result_without_a_nodule(specs) -> None:
    spec = specs["dx"]
    phantom = generate_dx_phantom(42, nodules=0)
    result = run_model(spec, spec.load_network(), dx_volume(phantom))
    p = result.class_probabilities["nodule"]
    assert p < DX_THRESHOLD and result.findings == []
    assert result.summary == f"nodule classification (radiograph): no nodule, p={p:.3f} (threshold 0.50)"


def test_postprocess_checks_the_output_count(specs) -> None:
    phantom = generate_ct_phantom(43, slices=8, size=64, pixel_mm=5.6, nodules=0)
    with pytest.raises(ValueError, match="one logit per slice"):
        specs["ct"].handler.postprocess(torch.zeros(7, 1), ct_volume(phantom))
    dx = dx_volume(generate_dx_phantom(43, slices=8, size=64, pixel_mm=5.6, nodules=0))
    with pytest.raises(ValueError, match="one logit"):
        specs["dx"].handler.postprocess(torch.zeros(2, 1), dx)


def test_ct_input_is_the_whole_slice_at_128_with_its_neighbours(specs) -> None:
    phantom = generate_ct_phantom(44, slices=10, size=512, pixel_mm=0.7, nodules=0)
    batch = specs["ct"].handler.preprocess(ct_volume(phantom))
    assert batch.shape == (10, 5, 128, 128) and batch.dtype == torch.float32
    assert float(batch.min()) >= 0.0 and float(batch.max()) <= 1.0
    assert torch.equal(batch[5, 2], batch[4, 3]) and torch.equal(batch[0, 0], batch[0, 2])  # context, clamped ends


def test_radiograph_input_is_normalised_and_monochrome1_is_inverted() -> None:
    flat = radiograph_input(np.full((64, 64), 700, dtype=np.uint16))
    assert float(flat.abs().max()) == 0.0  # no contrast anywhere: zeros, not a division by zero
    image = np.random.default_rng(0).integers(0, 4096, size=(300, 200)).astype(np.uint16)
    normal = radiograph_input(image)
    assert normal.shape == (1, 2, 256, 256) and normal.dtype == torch.float32
    assert float(normal[:, 0].min()) >= 0.0 and float(normal[:, 0].max()) <= 1.0  # the image
    assert float(normal[:, 1].min()) >= -1.0 and float(normal[:, 1].max()) <= 1.0  # its local contrast
    inverted = radiograph_input(4095 - image, monochrome1=True)
    assert torch.allclose(inverted, normal, atol=1e-3)
    scaled = radiograph_input(image.astype(np.float32) * 4 + 100)  # any bit depth or offset gives the same input
    assert torch.allclose(scaled, normal, atol=1e-4)


def test_a_radiograph_volume_must_hold_one_image(specs) -> None:
    dx = generate_dx_phantom(45, slices=8, size=64, pixel_mm=5.6, nodules=0)
    volume = dx_volume(dx)
    two = Volume(np.concatenate([volume.stored] * 2), volume.spacing, volume.origin, volume.orientation, [],
                 [(0, 1), (1, 1)], volume.series)
    with pytest.raises(ValueError, match="one image"):
        specs["dx"].handler.preprocess(two)


def test_selectors(specs) -> None:
    def series(modality: str, sop_class: str, instances: int, frames: int = 0, body_part: str = "CHEST") -> SeriesInfo:
        return SeriesInfo("1", "1.1", modality, sop_class, body_part=body_part, instance_count=instances,
                          frame_count=frames)

    ct, dx = specs["ct"].selector, specs["dx"].selector
    assert ct(series("CT", CTImageStorage, 8)) and ct(series("CT", CTImageStorage, 1, frames=64))
    assert not ct(series("CT", CTImageStorage, 7)) and not ct(series("DX", DigitalXRayImageStorageForPresentation, 1))
    assert dx(series("DX", DigitalXRayImageStorageForPresentation, 1, 1))
    assert dx(series("CR", ComputedRadiographyImageStorage, 1, 1, body_part=""))
    assert dx(series("DX", DigitalXRayImageStorageForPresentation, 1, 1, body_part="chest"))
    assert not dx(series("DX", DigitalXRayImageStorageForProcessing, 1, 1))  # raw detector data
    assert not dx(series("DX", DigitalXRayImageStorageForPresentation, 2, 2))  # PA and lateral: two images
    assert not dx(series("DX", DigitalXRayImageStorageForPresentation, 1, 1, body_part="HAND"))
    assert not dx(series("CT", CTImageStorage, 1, 1))


def test_specs_export_shapes_and_outputs(specs) -> None:
    for spec, shape, batch in ((specs["ct"], (5, 128, 128), 32), (specs["dx"], (2, 256, 256), 16)):
        assert spec.input_shape == spec.min_input_shape == spec.max_input_shape == shape
        assert spec.max_batch == batch and spec.version == "1.0.0"
        assert spec.outputs == ("result_json", "sr", "preview")
        network = spec.load_network()
        assert not network.training
        assert 200_000 < sum(p.numel() for p in network.parameters()) < 500_000
        with torch.inference_mode():
            assert network(torch.zeros(2, *shape)).shape == (2, 1)
    assert (specs["ct"].name, specs["dx"].name) == ("nodule-cls", "nodule-cls-dx")
    assert nodule_cls.CT_WEIGHTS.stat().st_size < 2_000_000 and nodule_cls.DX_WEIGHTS.stat().st_size < 2_000_000


def test_auc_counts_ties_half() -> None:
    assert auc([0.9, 0.8, 0.1, 0.2], [True, True, False, False]) == 1.0
    assert auc([0.5, 0.5], [True, False]) == 0.5
    assert auc([0.1, 0.9], [True, False]) == 0.0
    with pytest.raises(ValueError):
        auc([0.1], [True])


@pytest.mark.slow
def test_both_models_export_to_onnx_and_agree(specs, tmp_path) -> None:
    import onnxruntime

    from engine.runtime.export import INPUT_NAME, export_onnx

    for task, spec in specs.items():
        network = spec.load_network()
        path = export_onnx(network, spec, tmp_path / f"{task}.onnx")
        batch = torch.rand(3, *spec.input_shape, generator=torch.Generator().manual_seed(1))
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (output,) = session.run(None, {INPUT_NAME: batch.numpy()})
        with torch.inference_mode():
            expected = network(batch).numpy()
        assert output.shape == (3, 1) and np.allclose(output, expected, atol=1e-3), task


@pytest.mark.slow
def test_training_runs_and_is_reproducible(tmp_path, capsys) -> None:
    from plugins.nodule_cls import load_ct_network, load_dx_network
    from plugins.nodule_cls.train import main

    tiny = ["--steps", "2", "--pool", "2", "--refresh", "1", "--batch", "4", "--seed", "3"]
    first = main(["--task", "ct", *tiny, "--out", str(tmp_path / "a.pt")])
    second = main(["--task", "ct", *tiny, "--out", str(tmp_path / "b.pt")])
    assert np.isfinite(first) and first == second
    a, b = load_ct_network(tmp_path / "a.pt"), load_ct_network(tmp_path / "b.pt")
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(pa, pb), name
    assert np.isfinite(main(["--task", "dx", *tiny, "--out", str(tmp_path / "dx.pt")]))
    assert not load_dx_network(tmp_path / "dx.pt").training
    out = capsys.readouterr().out
    assert "step 2/2 loss" in out and "pool entries generated" in out


def test_a_dx_file_decoded_by_the_worker_gives_the_same_answer(specs, tmp_path) -> None:
    import pydicom

    from engine.synthetic.dx_phantom import write_dx_image
    from engine.worker.decode import decode_series

    spec, phantom = specs["dx"], generate_dx_phantom(46, nodules=1, nodule_radius_mm=(7.0, 9.0))
    network = spec.load_network()
    direct = run_model(spec, network, dx_volume(phantom)).class_probabilities["nodule"]
    path = write_dx_image(phantom, tmp_path / "m2")
    series = SeriesInfo("1", "1.1", "DX", DigitalXRayImageStorageForPresentation, body_part="CHEST",
                        instance_count=1, frame_count=1)
    assert spec.selector(series)
    decoded = run_model(spec, network, decode_series([path.read_bytes()], series))
    assert decoded.class_probabilities["nodule"] == direct >= DX_THRESHOLD
    ds = pydicom.dcmread(path)  # the same image stored the other way round: low values bright
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.PixelData = (4095 - phantom.image).astype("<u2").tobytes()
    ds.save_as(tmp_path / "m1.dcm", enforce_file_format=True)
    inverted = run_model(spec, network, decode_series([(tmp_path / "m1.dcm").read_bytes()], series))
    assert inverted.class_probabilities["nodule"] == pytest.approx(direct, abs=0.02)
