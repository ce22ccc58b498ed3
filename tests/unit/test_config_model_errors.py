"""A ``[[models]]`` network that does not take the configured input: one line naming the shape and its keys."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.api import PluginError
from engine.config.entries import ModelEntryConfig
from engine.model_files.plugin import check_entry_file


def _traced(tmp_path: Path, network: torch.nn.Module, example: torch.Tensor) -> Path:
    path = tmp_path / "net.pt"
    torch.jit.trace(network.eval(), example).save(str(path))
    return path


def test_torchscript_channel_mismatch_is_one_clear_line(tmp_path: Path) -> None:
    file = _traced(tmp_path, torch.nn.Conv2d(3, 1, 3, padding=1), torch.zeros(1, 3, 32, 32))
    entry = ModelEntryConfig.model_validate({"name": "three-channel", "version": "1", "file": str(file),
                                             "output": "segmentation", "preprocessing": {"size": [32, 32]}})
    with pytest.raises(PluginError) as raised:
        check_entry_file(entry)
    message = str(raised.value)
    assert "\n" not in message and "TorchScript interpreter" not in message
    assert message.startswith("models entry 'three-channel': the network does not take input (1, 1, 32, 32)")
    assert "C = 2 x preprocessing.context_slices + 1 = 1" in message
    assert "to have 3 channels, but got 1 channels" in message


def test_volumetric_mismatch_names_the_roi(tmp_path: Path) -> None:
    file = _traced(tmp_path, torch.nn.Conv3d(2, 1, 3, padding=1), torch.zeros(1, 2, 8, 8, 8))
    entry = ModelEntryConfig.model_validate({"name": "two-channel-3d", "version": "1", "file": str(file),
                                             "output": "segmentation", "volumetric": {"roi_size": [8, 8, 8]}})
    with pytest.raises(PluginError, match=r"input \(1, 1, 8, 8, 8\) \(1 channel, volumetric\.roi_size \[8, 8, 8\]\)"
                                          r": .*to have 2 channels"):
        check_entry_file(entry)
