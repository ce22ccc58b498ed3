"""CPU preprocessing ops against plain numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.kernels.cpu import pad_to_multiple, resize_slices, window_normalise


def test_window_matches_numpy() -> None:
    values = np.random.default_rng(0).normal(-300, 600, size=(3, 17, 19)).astype(np.float32)
    expected = (np.clip(values, -1000, 400) + 1000) / 1400
    assert np.allclose(window_normalise(values, -1000, 400).numpy(), expected, atol=1e-6)
    with pytest.raises(ValueError):
        window_normalise(values, 10, 10)


def test_pad_and_resize() -> None:
    images = torch.ones(2, 1, 17, 30)
    padded, original = pad_to_multiple(images, 8)
    assert padded.shape == (2, 1, 24, 32) and original == (17, 30)
    assert padded[..., :17, :30].eq(1).all() and padded[..., 17:, :].eq(0).all()
    assert resize_slices(images, (17, 30)) is images
    assert resize_slices(images, (34, 60)).shape == (2, 1, 34, 60)
