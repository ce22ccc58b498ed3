"""The committed denoising network, run through its ModelSpec, on low-dose phantoms never used in training.

Evaluation: seeds 1-3, ``generate_ct_phantom(seed, slices=16, nodules=2)`` as
the standard dose and ``low_dose_phantom(standard, seed)`` (a quarter of the
dose) as the input; training uses seeds from 100000 up
(plugins/ct_denoise/train.py). PSNR is 10 log10(2048^2 / MSE) against the
standard-dose phantom with both clipped to [-1024, 1024] HU, over the body's
voxels (:func:`plugins.ct_denoise.evaluate.psnr`). Asserted: a PSNR gain of
at least 3 dB over the low-dose input on every seed (measured: about 4.9 dB),
and every nodule's mean HU within 15 HU of the standard-dose phantom's
(measured: within 3 HU), where a Gaussian blur that removes as much noise
misses by more than 60 HU: the model removes noise without smoothing nodules
away. Also: the low-dose helper, the selector, the noise figures, the spec's
export shapes, training reproducibility, and DICOM in and derived series out.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from pydicom.uid import CTImageStorage
from scipy import ndimage

from engine.api import ModelRegistry, ModelSpec, SeriesInfo
from engine.outputs.derived import DerivedSeriesWriter
from engine.synthetic.ct_phantom import (
    LOW_DOSE_DESCRIPTION,
    SOFT,
    STANDARD_NOISE_HU,
    dose_noise_weight,
    generate_ct_phantom,
    low_dose_phantom,
    write_ct_series,
)
from engine.worker.decode import decode_series
from plugins import ct_denoise
from plugins.ct_denoise.evaluate import (
    SeedScore,
    evaluation_pair,
    nodule_mean_errors,
    phantom_volume,
    psnr,
    run_model,
    score,
)
from plugins.ct_denoise.handler import HU_RANGE, noise_std_hu
from plugins.ct_denoise.train import main as train_main

EVAL_SEEDS = (1, 2, 3)
PSNR_GAIN_FLOOR_DB = 3.0
NODULE_MEAN_TOLERANCE_HU = 15.0


@pytest.fixture(scope="module")
def spec() -> ModelSpec:
    registry = ModelRegistry()
    ct_denoise.scanstream_register_models(registry)
    return registry.get("ct-denoise")


@pytest.fixture(scope="module")
def network(spec):
    torch.set_num_threads(1)
    return spec.load_network()


@pytest.fixture(scope="module")
def scores(spec, network) -> list[SeedScore]:
    return [score(seed, spec, network) for seed in EVAL_SEEDS]


@pytest.mark.slow
def test_psnr_gain_over_the_low_dose_input(scores) -> None:
    gains = {s.seed: round(s.gain, 2) for s in scores}
    assert all(gain >= PSNR_GAIN_FLOOR_DB for gain in gains.values()), gains
    assert all(s.psnr_noisy < s.psnr_denoised for s in scores)


@pytest.mark.slow
def test_nodule_contrast_is_kept_where_a_blur_loses_it(scores) -> None:
    for s in scores:
        assert len(s.nodule_errors) == 2, s.seed
        assert max(abs(e) for e in s.nodule_errors) <= NODULE_MEAN_TOLERANCE_HU, (s.seed, s.nodule_errors)
    # the check has teeth: a Gaussian blur of the input drags the nodules towards the lung around them
    standard, low = evaluation_pair(EVAL_SEEDS[0])
    blurred = ndimage.gaussian_filter(low.hu.astype(np.float32), (0, 1.0, 1.0))
    assert min(nodule_mean_errors(blurred, standard)) < -4 * NODULE_MEAN_TOLERANCE_HU


@pytest.mark.slow
def test_result_is_a_float_hu_volume_with_noise_figures(scores) -> None:
    for s in scores:
        derived = s.result.derived_voxels
        assert derived.dtype == np.float32 and derived.shape == (16, 256, 256)
        extra = s.result.extra
        assert extra["noise_blocks"] > 100
        assert extra["noise_std_hu_before"] > 2 * extra["noise_std_hu_after"], extra
        assert s.result.summary.startswith(f"noise reduction: estimated noise {extra['noise_std_hu_before']:.1f} -> "
                                           f"{extra['noise_std_hu_after']:.1f} HU")
        assert s.result.label_map is None and not s.result.findings


def test_values_outside_the_network_range_pass_through(spec, network) -> None:
    standard = generate_ct_phantom(21, slices=8, size=64, nodules=0)
    low = low_dose_phantom(standard, 21)
    hu = low.hu.copy()
    hu[:, 10:14, 10:14] = 2500  # dense bone / metal the network never saw
    result = run_model(spec, network, phantom_volume(dataclasses.replace(low, hu=hu)))
    derived = result.derived_voxels
    assert np.array_equal(derived[:, 10:14, 10:14], hu[:, 10:14, 10:14].astype(np.float32))
    assert float(derived.min()) >= float(hu.min()) and float(derived.max()) <= float(hu.max())
    inside = (hu >= HU_RANGE[0]) & (hu <= HU_RANGE[1])
    assert not np.array_equal(derived[inside], hu[inside].astype(np.float32))


def test_model_output_writes_and_decodes_as_a_derived_series(spec, network, tmp_path: Path) -> None:
    low = low_dose_phantom(generate_ct_phantom(22, slices=8, size=64, nodules=0), 22)
    paths = write_ct_series(low, tmp_path / "low", series_description=LOW_DOSE_DESCRIPTION)
    first = pydicom.dcmread(paths[0], stop_before_pixels=True)
    series = SeriesInfo(first.StudyInstanceUID, first.SeriesInstanceUID, "CT", CTImageStorage,
                        series_description=str(first.SeriesDescription), instance_count=len(paths))
    assert spec.selector(series)
    volume = decode_series([p.read_bytes() for p in paths], series)
    result = run_model(spec, network, volume)
    artifacts = DerivedSeriesWriter().write(result, volume, spec)
    assert len(artifacts) == 8
    derived = decode_series([a.data for a in artifacts], series)
    assert np.abs(derived.voxels - result.derived_voxels).max() <= 0.5 + 1e-3
    written = pydicom.dcmread(io.BytesIO(artifacts[0].data))
    assert written.SeriesDescription == "ct-denoise 1.0.0 derived"
    assert not spec.selector(dataclasses.replace(series, series_description=written.SeriesDescription))


def test_selector_takes_low_dose_ct_series_only(spec) -> None:
    def series(description: str, modality: str = "CT", instances: int = 48, frames: int = 0) -> SeriesInfo:
        return SeriesInfo("1", "1.1", modality, CTImageStorage, series_description=description,
                          instance_count=instances, frame_count=frames)

    for description in (LOW_DOSE_DESCRIPTION, "CHEST LOW DOSE 1.25mm", "low-dose screening", "LowDose lung",
                        "LDCT thorax", "Thorax low_dose"):
        assert spec.selector(series(description)), description
    assert spec.selector(series("chest low dose", instances=1, frames=64))  # an enhanced (multi-frame) CT
    for description in ("Phantom chest CT", "CT chest standard dose", "", "slowdose", "ct-denoise 1.0.0 derived",
                        "lower dose"):
        assert not spec.selector(series(description)), description
    assert not spec.selector(series("low dose", modality="MR"))
    assert not spec.selector(series("low dose", instances=7))


def test_spec_exports_with_variable_slice_size(spec) -> None:
    spec.check()
    assert (spec.name, spec.version) == ("ct-denoise", "1.0.0")
    assert spec.outputs == ("result_json", "derived_series", "preview")
    assert spec.input_shape == (3, 256, 256) and spec.shape_multiple == 8
    assert spec.input_bounds() == ((3, 8, 8), (3, 1024, 1024))
    assert (ct_denoise.WEIGHTS.stat().st_size) < 3_000_000


@pytest.mark.slow
def test_onnx_export_matches_torch(spec, network, tmp_path: Path) -> None:
    onnxruntime = pytest.importorskip("onnxruntime")
    from engine.runtime.export import INPUT_NAME, export_onnx

    path = export_onnx(network, spec, tmp_path / "ct-denoise.onnx")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batch = torch.rand((3, 3, 96, 128), generator=torch.Generator().manual_seed(1)) * 4 - 2
    with torch.inference_mode():
        expected = network(batch).numpy()
    (output,) = session.run(None, {INPUT_NAME: batch.numpy()})
    assert output.shape == (3, 1, 96, 128) and np.abs(output - expected).max() < 1e-4


def test_noise_estimate_reads_a_known_noise_level() -> None:
    rng = np.random.default_rng(0)
    flat = np.full((2, 64, 64), 40.0, dtype=np.float32)
    noisy = flat + rng.normal(0.0, 30.0, flat.shape).astype(np.float32)
    std, blocks = noise_std_hu(noisy, flat)
    assert blocks == 2 * 8 * 8 and std == pytest.approx(30.0, rel=0.1)
    assert noise_std_hu(noisy, flat - 1000.0) == (pytest.approx(float("nan"), nan_ok=True), 0)  # no tissue blocks


def test_low_dose_phantom_is_deterministic_and_noisier_by_the_dose() -> None:
    standard = generate_ct_phantom(31, slices=8, size=128, pixel_mm=2.8)
    low = low_dose_phantom(standard, 5)
    assert np.array_equal(low.hu, low_dose_phantom(standard, 5).hu)
    assert not np.array_equal(low.hu, low_dose_phantom(standard, 6).hu)
    assert np.array_equal(low_dose_phantom(standard, 5, dose=1.0).hu, standard.hu)
    assert low.hu.dtype == np.int16 and np.array_equal(low.nodule_mask, standard.nodule_mask)
    assert low.nodules == standard.nodules and low.spacing == standard.spacing and low.origin == standard.origin
    soft = standard.tissue == SOFT
    for dose in (0.5, 0.25, 0.1):
        extra = (low_dose_phantom(standard, 5, dose=dose).hu.astype(np.float64) - standard.hu)[soft]
        expected = STANDARD_NOISE_HU * np.sqrt(1.0 / dose - 1.0)
        assert extra.std() == pytest.approx(expected, rel=0.35), dose
    weight = dose_noise_weight(standard.hu, standard.spacing[1])
    assert weight[standard.hu > -500].mean() == pytest.approx(1.0, rel=1e-3)
    assert weight[:, 64, 64].mean() > weight[standard.hu > -500].mean()  # the body's middle is noisiest
    with pytest.raises(ValueError, match="dose"):
        low_dose_phantom(standard, 5, dose=0.0)


def test_a_few_training_steps_write_loadable_weights_reproducibly(tmp_path: Path, capsys) -> None:
    args = ["--steps", "3", "--phantoms", "2", "--phantom-slices", "12", "--phantom-size", "128", "--batch", "2",
            "--crop", "32", "--seed", "5"]
    first = train_main([*args, "--out", str(tmp_path / "a.pt")])
    second = train_main([*args, "--out", str(tmp_path / "b.pt")])
    assert np.isfinite(first) and first == second
    assert "step 3/3 loss" in capsys.readouterr().out
    a, b = ct_denoise.load_network(tmp_path / "a.pt"), ct_denoise.load_network(tmp_path / "b.pt")
    assert not a.training
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(pa, pb), name
    with pytest.raises(ValueError, match="crop"):
        train_main(["--steps", "1", "--crop", "36", "--out", str(tmp_path / "unused.pt")])


def test_psnr_definition() -> None:
    reference = np.zeros((1, 4, 4), dtype=np.float32)
    region = np.ones_like(reference, dtype=bool)
    assert psnr(reference, reference, region) == float("inf")
    assert psnr(reference + 2048.0 / 100.0, reference, region) == pytest.approx(40.0)
    assert psnr(np.full_like(reference, 5000.0), np.full_like(reference, 1024.0), region) == float("inf")  # clipped
