"""`scanstream plugins check`: a broken plugin names the failing check; a good one passes every check."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from typing import Callable, Iterator

import pytest
import torch

from engine.api import PluginError
from engine.cli import main
from engine.config import EngineConfig
from engine.plugin_check import FAIL, PASS, SKIP, PluginReport, check_plugin
from engine.testing import write_config

# A small working plugin: identity network, a label map of the voxels above 300 HU. Each case below
# breaks one piece of it by replacing a line.
GOOD = '''
import numpy as np
import torch

from engine import hookimpl
from engine.api import ModelResult, ModelSpec
from engine.kernels.cpu import run_slice_plan
from engine.kernels.plan import Intensity, SlicePlan


class Handler:
    def plan(self, volume):
        return SlicePlan(size=volume.shape[1:], intensity=Intensity.zscore(-1024.0, 3071.0, 0.0, 1000.0)
                         .with_rescale(volume.slope, volume.intercept))

    def preprocess(self, volume):
        return run_slice_plan(volume.stored, self.plan(volume))

    def postprocess(self, output, volume):
        label_map = (output[:, 0].numpy() > 0.3).astype(np.uint8)
        return ModelResult(summary="bright", label_map=label_map, segment_labels=["Bright"])


def load_network():
    return torch.nn.Identity()


def takes(series):
    return series.modality == "CT"


@hookimpl
def scanstream_register_models(registry):
    registry.add(ModelSpec(name="MODEL", version="1", description="test", selector=takes,
                           load_network=load_network, handler=Handler(), outputs=("result_json", "seg"),
                           input_shape=(1, 256, 256), min_input_shape=(1, 16, 16), max_input_shape=(1, 512, 512)))
'''

CASES = {
    "import_error": ("import numpy as np", "import numpy as np\nimport scanstream_no_such_module",
                     "load", "ModuleNotFoundError"),
    "unknown_hook_argument": ("def scanstream_register_models(registry):",
                              "def scanstream_register_models(registry, settings):", "hooks", "settings"),
    "hook_not_marked": ("@hookimpl\n", "", "hooks", "not marked @hookimpl"),
    "unknown_hook": ("@hookimpl\ndef scanstream_register_models(registry):",
                     "@hookimpl\ndef scanstream_register_model(registry):", "hooks", "not a ScanStream hook"),
    "hook_raises": ('    registry.add(ModelSpec(', '    raise KeyError("no config")\n    registry.add(ModelSpec(',
                    "register", "KeyError"),
    "handler_without_postprocess": ("    def postprocess(self, output, volume):",
                                    "    def post_process(self, output, volume):", "spec", "handler must define"),
    "unknown_output": ('outputs=("result_json", "seg")', 'outputs=("result_json", "nifti")', "spec",
                       "unknown output kind 'nifti'"),
    "weights_missing": ("    return torch.nn.Identity()",
                        "    return torch.load('/nonexistent/weights.pt', weights_only=True)", "weights",
                        "FileNotFoundError"),
    "weights_pickled": ("    return torch.nn.Identity()",
                        "    import io\n    buffer = io.BytesIO()\n    torch.save(torch.nn.Identity(), buffer)\n"
                        "    buffer.seek(0)\n    return torch.load(buffer, weights_only=False)",
                        "weights", "weights_only=False"),
    "selector_raises": ("    return series.modality == \"CT\"", "    return series.modality_code == \"CT\"",
                        "phantom", "AttributeError"),
    "preprocess_numpy": ("        return run_slice_plan(volume.stored, self.plan(volume))",
                         "        return volume.voxels[:, None]", "preprocess", "torch.Tensor"),
    "plan_disagrees": ("        return run_slice_plan(volume.stored, self.plan(volume))",
                       "        return run_slice_plan(volume.stored, self.plan(volume)) * 2.0", "plan", "differ"),
    "input_outside_declared_shape": ("input_shape=(1, 256, 256), min_input_shape=(1, 16, 16), max_input_shape=(1, 512",
                                     "input_shape=(1, 64, 64), min_input_shape=(1, 16, 16), max_input_shape=(1, 128",
                                     "network", "outside the model's input range"),
    "label_map_wrong_shape": ("output[:, 0].numpy() > 0.3)", "output[:, 0, ::2].numpy() > 0.3)", "postprocess",
                              "label_map shape"),
    "seg_without_label_map": ("label_map=label_map, segment_labels", "segment_labels", "output:seg",
                              "label_map None"),
}


@pytest.fixture
def plugin_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str, str], EngineConfig]]:
    """Writes a plugin module into tmp_path, importable, listed in ``plugins.modules``; returns the config."""
    torch.set_num_threads(1)
    names: list[str] = []

    def write(name: str, source: str) -> EngineConfig:
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        monkeypatch.syspath_prepend(str(tmp_path))
        names.append(name)
        return EngineConfig(plugins={"modules": [name]},
                            worker={"torch_threads": 1, "model_cache": str(tmp_path / "cache")})

    yield write
    for name in names:
        sys.modules.pop(name, None)


def statuses(report: PluginReport) -> dict[str, str]:
    return {check.name: check.status for check in report.all_checks()}


def test_a_good_plugin_passes_every_check(plugin_module: Callable[[str, str], EngineConfig]) -> None:
    config = plugin_module("check_good", GOOD.replace("MODEL", "check-good"))
    report = check_plugin("check_good", config)
    assert report.ok, report.to_json()
    assert report.source == "plugins.modules"
    assert [m.model for m in report.models] == ["check-good"]
    assert statuses(report) == dict.fromkeys(
        ["load", "hooks", "register", "spec", "weights", "phantom", "preprocess", "plan", "network", "postprocess",
         "output:result_json", "output:seg"], PASS)
    seg = next(c for c in report.models[0].checks if c.name == "output:seg")
    assert "Segmentation Storage" in seg.reason and "highdicom" in seg.reason
    by_model = check_plugin("check-good", config)  # a model name finds its plugin
    assert by_model.plugin == "check_good" and by_model.ok


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_broken_plugin_names_the_failing_check(case: str, plugin_module: Callable[[str, str], EngineConfig]) -> None:
    old, new, failing, reason = CASES[case]
    name = f"check_{case}"
    assert old in GOOD
    config = plugin_module(name, GOOD.replace("MODEL", name.replace("_", "-")).replace(old, new))
    report = check_plugin(name, config)
    assert not report.ok
    failed = [check for check in report.all_checks() if check.status == FAIL]
    assert [check.name for check in failed] == [failing], report.to_json()
    assert reason in failed[0].reason


def test_a_model_no_phantom_fits_is_skipped_not_failed(plugin_module: Callable[[str, str], EngineConfig]) -> None:
    source = GOOD.replace("MODEL", "check-mr").replace('series.modality == "CT"', 'series.modality == "MR"')
    report = check_plugin("check_mr", plugin_module("check_mr", source))
    assert report.ok
    checks = {c.name: c for c in report.all_checks()}
    assert checks["phantom"].status == SKIP and "no built-in phantom matches" in checks["phantom"].reason
    assert "modality=CT" in checks["phantom"].reason
    assert checks["weights"].status == PASS
    assert checks["output:seg"].status == SKIP


def test_a_duplicate_model_name_fails_the_spec_check(plugin_module: Callable[[str, str], EngineConfig]) -> None:
    config = plugin_module("check_dup", GOOD.replace("MODEL", "nodule-seg"))
    report = check_plugin("check_dup", config)
    spec = next(c for c in report.all_checks() if c.name == "spec")
    assert spec.status == FAIL and "plugins.nodule_seg" in spec.reason


def test_an_unknown_name_lists_plugins_and_models() -> None:
    with pytest.raises(PluginError, match=r"no plugin or model named 'nope'.*plugins\.nodule_seg.*nodule-seg"):
        check_plugin("nope", EngineConfig())


def test_cli_exit_code_and_json(plugin_module: Callable[[str, str], EngineConfig], tmp_path: Path,
                                capsys: pytest.CaptureFixture) -> None:
    old, new, _, _ = CASES["label_map_wrong_shape"]
    plugin_module("check_cli", GOOD.replace("MODEL", "check-cli").replace(old, new))
    config = write_config(tmp_path / "scanstream.toml", {"plugins": {"modules": ["check_cli"]},
                                                        "worker": {"torch_threads": 1}})
    assert main(["plugins", "check", "check-cli", "--json", "--config", str(config)]) == 1
    document = json.loads(capsys.readouterr().out)
    assert document["ok"] is False and document["plugin"] == "check_cli"
    (model,) = document["models"]
    failed = [c for c in model["checks"] if c["status"] == FAIL]
    assert [c["name"] for c in failed] == ["postprocess"]
    assert main(["plugins", "--config", str(config), "check", "check-cli"]) == 1
    table = capsys.readouterr().out
    assert "postprocess" in table and "FAIL" in table and "label_map shape" in table
    assert main(["plugins", "check", "nope", "--config", str(config)]) == 2


@pytest.mark.slow
def test_nodule_seg_passes(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    config = write_config(tmp_path / "scanstream.toml", {"worker": {"torch_threads": 1}})
    assert main(["plugins", "check", "nodule-seg", "--json", "--config", str(config)]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["plugin"] == "plugins.nodule_seg" and document["ok"]
    (model,) = document["models"]
    checks = {c["name"]: c["status"] for c in model["checks"]}
    assert set(checks.values()) == {PASS}, model["checks"]
    assert {"spec", "weights", "phantom", "preprocess", "plan", "network", "postprocess", "output:result_json",
            "output:seg"} <= set(checks)  # and one output check per kind nodule-seg declares


def test_engine_options_for_plugin_tests_make_a_valid_config(tmp_path: Path) -> None:
    from engine.config import load_config
    from engine.testing import engine_process

    engine = engine_process(tmp_path / "data", plugin_modules=["my_model"], plugin_paths=[tmp_path], models=["m"],
                            config={"plugins": {"options": {"my_model.threshold": 0.4}},
                                    "models": [{"name": "m", "version": "1", "file": str(tmp_path / "m.onnx"),
                                                "output": "segmentation", "selector": {"modality": ["CT"]}}]})
    config = load_config(write_config(tmp_path / "scanstream.toml", engine.config_sections()))
    assert config.plugins.modules == ["my_model"] and config.routing.models == ["m"]
    assert config.plugins.options == {"my_model.threshold": 0.4}
    assert [(m.name, m.selector.modality) for m in config.models] == [("m", ["CT"])]
    assert engine.env["PYTHONPATH"].split(":")[0] == str(tmp_path)
