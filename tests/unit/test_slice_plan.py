"""The fused CPU preprocessing path against the step-by-step reference, and the nodule handler's plan."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.kernels.cpu import neighbour_slices, pad_to_multiple, resize_slices, run_slice_plan
from engine.kernels.plan import Intensity, SlicePlan

TOLERANCE = 2e-6  # float32 rounding of the folded multiply-add on values in [0, 1]


def reference(stored: np.ndarray, plan: SlicePlan) -> torch.Tensor:
    """Rescale, resample, window/normalise, pad, neighbours: one step at a time, as the kernels define it."""
    p = plan.intensity
    values = torch.as_tensor(stored.astype(np.float64) * p.slope + p.intercept, dtype=torch.float32)[:, None]
    values = resize_slices(values, plan.size)
    values = (values.clamp(p.low, p.high) - p.offset) * p.scale
    values, _ = pad_to_multiple(values, plan.multiple, value=p.pad_value)
    return neighbour_slices(values, plan.context_radius, plan.context_step)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16, np.float32])
@pytest.mark.parametrize("size", [(20, 24), (37, 51), (64, 48)])
def test_fused_path_matches_the_reference(dtype, size) -> None:
    rng = np.random.default_rng(7)
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
    low, high = (info.min, info.max) if info else (-2000, 3000)
    stored = rng.integers(max(low, -2000), min(high, 3000), size=(9, 40, 48), endpoint=True).astype(dtype)
    plan = SlicePlan(size, Intensity.window(-400.0, 600.0).with_rescale(0.5, -100.0), multiple=16,
                     context_radius=1, context_step=2)
    got = run_slice_plan(stored, plan, chunk=4)
    expected = reference(stored, plan)
    assert got.shape == plan.output_shape(9) == expected.shape
    assert float((got - expected).abs().max()) <= TOLERANCE


def test_zscore_normalisation_padding_value_and_fp16_output() -> None:
    stored = np.random.default_rng(3).integers(-1024, 2000, size=(5, 30, 30)).astype(np.int16)
    intensity = Intensity.zscore(-1000.0, 1000.0, mean=-200.0, std=350.0, pad_value=-7.5)
    plan = SlicePlan((30, 30), intensity, multiple=8, dtype=np.dtype(np.float16))
    got = run_slice_plan(stored, plan)
    assert got.dtype == torch.float16
    assert torch.all(got[..., 30:, :] == -7.5) and torch.all(got[..., :, 30:] == -7.5)
    expected = reference(stored, SlicePlan((30, 30), intensity, multiple=8))
    assert float((got.float() - expected).abs().max()) <= 4e-3  # fp16 rounding of values up to ~3.4


def test_the_callers_float_array_is_never_modified() -> None:
    stored = np.linspace(-1000, 1000, 2 * 8 * 8, dtype=np.float32).reshape(2, 8, 8)
    before = stored.copy()
    run_slice_plan(stored, SlicePlan((8, 8), Intensity.window(-100.0, 100.0)))
    assert np.array_equal(stored, before)


def test_plan_checks_its_fields() -> None:
    with pytest.raises(ValueError, match="size"):
        SlicePlan((0, 4), Intensity.window(0.0, 1.0))
    with pytest.raises(ValueError, match="dtype"):
        SlicePlan((4, 4), Intensity.window(0.0, 1.0), dtype=np.dtype(np.int16))
    with pytest.raises(ValueError, match="context_step"):
        SlicePlan((4, 4), Intensity.window(0.0, 1.0), context_step=0)


def test_nodule_handler_plan_equals_its_training_preprocessing() -> None:
    from engine.synthetic.ct_phantom import generate_ct_phantom
    from plugins.nodule_seg.evaluate import phantom_volume
    from plugins.nodule_seg.handler import NoduleSegHandler, neighbour_step, preprocess_volume, working_size

    volume = phantom_volume(generate_ct_phantom(seed=11, slices=12, size=96, pixel_mm=0.9))
    handler = NoduleSegHandler()
    fused = handler.preprocess(volume)
    stepwise = neighbour_slices(preprocess_volume(volume.voxels, working_size(volume)), 1, neighbour_step(volume))
    assert fused.shape == stepwise.shape
    assert float((fused - stepwise).abs().max()) <= TOLERANCE
