"""The training script keeps working: a few steps write loadable weights with a finite loss, reproducibly."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from plugins.nodule_seg import load_network
from plugins.nodule_seg.train import build_pool, context_index, main, sample_batch


def test_a_few_steps_write_loadable_weights_reproducibly(tmp_path: Path, capsys) -> None:
    args = ["--steps", "3", "--phantoms", "2", "--batch", "2", "--crop", "32", "--seed", "5"]
    first = main([*args, "--out", str(tmp_path / "a" / "weights.pt")])
    second = main([*args, "--out", str(tmp_path / "b.pt")])
    assert math.isfinite(first) and first == second
    assert "step 3/3 loss" in capsys.readouterr().out
    a, b = load_network(tmp_path / "a" / "weights.pt"), load_network(tmp_path / "b.pt")
    assert not a.training
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(pa, pb), name
    assert (tmp_path / "b.pt").stat().st_size < 5_000_000


def test_batches_oversample_nodules() -> None:
    pool = build_pool(2, seed=3)
    images, masks = sample_batch(pool, np.random.default_rng(0), batch=32, crop=64, shares=(1.0, 0.0, 0.0))
    assert images.shape == (32, 3, 64, 64) and masks.shape == (32, 1, 64, 64)
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    assert all(bool(m.any()) for m in masks)


def test_slice_context_stays_inside_each_phantom() -> None:
    assert context_index(4).tolist() == [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 3]]
    pool = build_pool(2, seed=4, slices=12)
    assert pool.images.shape[0] == 24
    assert pool.neighbours[11].tolist() == [10, 11, 11] and pool.neighbours[12].tolist() == [12, 12, 13]


def test_crop_must_fit_the_network() -> None:
    with pytest.raises(ValueError, match="crop"):
        main(["--steps", "1", "--crop", "30", "--out", "unused.pt"])
