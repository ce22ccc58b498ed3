"""The training script keeps working: a few steps write loadable weights with a finite loss."""

from __future__ import annotations

import math
from pathlib import Path

from plugins.nodule_seg import load_network
from plugins.nodule_seg.train import train


def test_a_few_training_steps(tmp_path: Path) -> None:
    out = tmp_path / "weights.pt"
    loss = train(steps=3, out=out, phantoms=2, batch=2, crop=32, log_every=1)
    assert math.isfinite(loss)
    network = load_network(out)
    assert sum(p.numel() for p in network.parameters()) > 10_000
