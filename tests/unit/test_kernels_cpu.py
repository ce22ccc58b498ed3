"""The vectorised CPU preprocessing kernels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.kernels.cpu import (
    neighbour_slices,
    pad_to_multiple,
    resize_slices,
    resize_volume,
    spacing_to_size,
    window_normalise,
)


def test_window_normalise_maps_window_onto_unit_range_and_clips() -> None:
    hu = np.array([-2000.0, -1000.0, -300.0, 400.0, 3000.0], dtype=np.float32)
    out = window_normalise(hu, -1000.0, 400.0)
    assert out.dtype == torch.float32
    assert torch.allclose(out, torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0]))


def test_window_normalise_accepts_int_tensors_and_leaves_input_untouched() -> None:
    hu = torch.tensor([[-1024, 0, 1000]], dtype=torch.int16)
    out = window_normalise(hu, -1000, 1000)
    assert torch.allclose(out, torch.tensor([[0.0, 0.5, 1.0]]))
    assert hu.tolist() == [[-1024, 0, 1000]]


@pytest.mark.parametrize("low, high", [(0.0, 0.0), (10.0, -10.0)])
def test_window_normalise_rejects_empty_window(low: float, high: float) -> None:
    with pytest.raises(ValueError, match="must exceed"):
        window_normalise(np.zeros(3), low, high)


def test_pad_to_multiple_pads_bottom_right_and_reports_original_size() -> None:
    images = torch.ones(3, 1, 10, 17)
    padded, size = pad_to_multiple(images, 8, value=-1.0)
    assert size == (10, 17) and padded.shape == (3, 1, 16, 24)
    assert torch.equal(padded[..., :10, :17], images)
    assert bool((padded[..., 10:, :] == -1).all()) and bool((padded[..., :, 17:] == -1).all())


def test_pad_to_multiple_keeps_aligned_input() -> None:
    images = torch.rand(2, 1, 16, 32)
    padded, size = pad_to_multiple(images, 16)
    assert padded is images and size == (16, 32)
    with pytest.raises(ValueError):
        pad_to_multiple(images, 0)


def test_resize_slices_bilinear_keeps_constant_and_shape() -> None:
    images = torch.full((2, 1, 64, 48), 0.25)
    down = resize_slices(images, (32, 24))
    up = resize_slices(images, (100, 80))
    assert down.shape == (2, 1, 32, 24) and up.shape == (2, 1, 100, 80)
    assert torch.allclose(down, torch.tensor(0.25)) and torch.allclose(up, torch.tensor(0.25))


def test_resize_slices_nearest_keeps_labels() -> None:
    labels = torch.zeros(1, 1, 8, 8, dtype=torch.uint8)
    labels[..., 2:6, 2:6] = 3
    out = resize_slices(labels, (16, 16), mode="nearest")
    assert out.dtype == torch.uint8
    assert set(out.unique().tolist()) == {0, 3}
    assert int((out == 3).sum()) == 4 * int((labels == 3).sum())


def test_resize_slices_round_trip_preserves_smooth_image() -> None:
    rows = torch.linspace(0, 1, 128)
    image = (rows[:, None] * rows[None, :])[None, None]
    back = resize_slices(resize_slices(image, (256, 256)), (128, 128))
    assert float((back - image).abs().max()) < 0.02


def test_resize_slices_rejects_wrong_rank() -> None:
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        resize_slices(torch.zeros(4, 4), (2, 2))


def test_resize_volume_trilinear_and_nearest() -> None:
    volume = torch.arange(4 * 6 * 8, dtype=torch.float32).reshape(4, 6, 8)
    out = resize_volume(volume, (8, 12, 16))
    assert out.shape == (8, 12, 16)
    assert float(out.min()) >= float(volume.min()) and float(out.max()) <= float(volume.max())
    labels = (volume > 100).to(torch.uint8)
    nearest = resize_volume(labels, (8, 12, 16), mode="nearest")
    assert nearest.dtype == torch.uint8 and int(nearest.sum()) == 8 * int(labels.sum())
    assert resize_volume(volume, (4, 6, 8)) is volume
    with pytest.raises(ValueError):
        resize_volume(volume[0], (2, 2, 2))


def test_spacing_to_size_keeps_physical_extent() -> None:
    assert spacing_to_size((512, 512), (0.7, 0.7), (1.4, 1.4)) == (256, 256)
    assert spacing_to_size((100, 3), (2.0, 0.1), (1.0, 1.0)) == (200, 1)
    with pytest.raises(ValueError):
        spacing_to_size((1, 2), (1.0,), (1.0, 1.0))


def test_resize_slices_halving_averages_two_by_two_blocks() -> None:
    images = torch.rand(2, 1, 8, 6)
    expected = images.reshape(2, 1, 4, 2, 3, 2).mean(dim=(3, 5))
    assert torch.allclose(resize_slices(images, (4, 3)), expected, atol=1e-6)


def test_neighbour_slices_stacks_context_and_repeats_the_ends() -> None:
    images = torch.arange(5, dtype=torch.float32).reshape(5, 1, 1, 1).expand(5, 1, 3, 2).contiguous()
    out = neighbour_slices(images)
    assert out.shape == (5, 3, 3, 2)
    assert out[:, :, 0, 0].tolist() == [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 4]]
    wide = neighbour_slices(images, radius=2, step=2)[:, :, 0, 0]
    assert wide[2].tolist() == [0, 0, 2, 4, 4] and torch.equal(wide[:, 2], images[:, 0, 0, 0])
    assert torch.equal(neighbour_slices(images, radius=0), images)


def test_neighbour_slices_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"\(S, 1, H, W\)"):
        neighbour_slices(torch.zeros(4, 3, 2, 2))
    with pytest.raises(ValueError, match="step"):
        neighbour_slices(torch.zeros(4, 1, 2, 2), step=0)
