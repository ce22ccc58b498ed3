"""``scanstream plugins check NAME`` on ``[[models]]`` entries: each entry's own fault, or every check run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from engine.cli import main
from engine.plugin_check.command import check_plugin
from engine.plugin_check.report import FAIL, PASS
from engine.config import EngineConfig
from engine.testing.harness import write_config


class Threshold3D(torch.nn.Module):
    """(N, 1, D, H, W) -> (N, 1, D, H, W) logits: 40 x (input - 0.5)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 40.0 * (x - 0.5)


def _entries(tmp_path: Path) -> list[dict]:
    network = tmp_path / "body3d.ts"
    torch.jit.script(Threshold3D().eval()).save(str(network))
    volumetric = {"orientation": "RAS", "spacing": [3.0, 3.0, 3.0], "roi_size": [32, 32, 16]}
    return [
        {"name": "missing", "version": "1", "file": str(tmp_path / "nowhere.ts"), "output": "segmentation"},
        {"name": "body-3d", "version": "1", "file": str(network), "output": "segmentation", "labels": ["body"],
         "preprocessing": {"window": [-500, 500]}, "volumetric": volumetric},
        {"name": "organs-3d", "version": "1", "file": str(network), "output": "segmentation",
         "labels": ["liver", "spleen"], "volumetric": volumetric},
    ]


def _config(tmp_path: Path) -> EngineConfig:
    return EngineConfig(models=_entries(tmp_path), worker={"torch_threads": 1, "model_cache": str(tmp_path / "cache")})


@pytest.mark.parametrize("name, reason", [
    ("missing", r"'missing': file .*nowhere\.ts does not exist"),
    ("organs-3d", r"'organs-3d': output shape \(1, 1, 32, 32, 16\) does not fit output 'segmentation' with 2 "
                  r"label\(s\) and volumetric\.roi_size \[32, 32, 16\]; expected \(1, 3, 32, 32, 16\)"),
])
def test_a_bad_entry_reports_its_own_fault(tmp_path: Path, name: str, reason: str) -> None:
    report = check_plugin(name, _config(tmp_path))
    register = next(check for check in report.all_checks() if check.name == "register")
    assert register.status == FAIL
    assert re.search(reason, register.reason), register.reason
    assert not report.ok


def test_a_good_entry_beside_bad_ones_passes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    torch.set_num_threads(1)
    config = write_config(tmp_path / "scanstream.toml", {"models": _entries(tmp_path),
                                                        "worker": {"torch_threads": 1,
                                                                   "model_cache": str(tmp_path / "cache")}})
    assert main(["plugins", "check", "body-3d", "--json", "--config", str(config)]) == 0
    document = json.loads(capsys.readouterr().out)
    (model,) = document["models"]
    checks = {check["name"]: check["status"] for check in model["checks"]}
    assert checks["network"] == checks["postprocess"] == checks["output:seg"] == PASS, model["checks"]
    assert main(["plugins", "check", "missing", "--config", str(config)]) == 1
    table = capsys.readouterr().out
    assert "models entry 'missing'" in table and "nowhere.ts" in table and "FAIL" in table
