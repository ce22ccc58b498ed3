"""Config-only models: ``[[models]]`` entries checked at start-up and run by family.

The networks are the built-in nodule U-Net exported to TorchScript and ONNX, and
small hand-made networks for the other families' output contracts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from engine.api import PluginError, SeriesInfo, Volume
from engine.config import ConfigError, load_config
from engine.config.entries import ModelEntryConfig
from engine.model_files.plugin import EntryHandler, EntrySelector, check_entry_file, spec_for
from engine.synthetic.ct_phantom import generate_ct_phantom
from engine.runtime.artifacts import ModelArtifacts
from engine.runtime.onnx_backend import OnnxRuntimeBackend
from plugins.nodule_seg import load_network

SERIES = SeriesInfo(study_uid="1.2", series_uid="1.2.3", modality="CT", sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                    body_part="CHEST", series_description="Chest 1.4 mm", calling_ae="CT1", instance_count=24)


def _phantom_volume(seed: int = 5) -> tuple[Volume, np.ndarray]:
    phantom = generate_ct_phantom(seed, slices=24, size=256, nodules=2)
    stored = (phantom.hu.astype(np.int32) + 1024).astype(np.uint16)
    volume = Volume(stored=stored, spacing=phantom.spacing, origin=phantom.origin,
                    orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0), sources=[], frames=[(i, 1) for i in range(24)],
                    series=SERIES, slope=1.0, intercept=-1024.0)
    return volume, phantom.nodule_mask


def _entry(file: Path, **overrides) -> ModelEntryConfig:
    data = {"name": "lung-nodules", "version": "2.0", "file": str(file), "output": "segmentation",
            "labels": ["nodule"], "preprocessing": {"window": [-1000, 400], "size": [256, 256], "context_slices": 1},
            "selector": {"modality": ["CT"], "min_slices": 8}}
    data.update(overrides)
    return ModelEntryConfig.model_validate(data)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    """The nodule U-Net as TorchScript and as ONNX (input named differently from ScanStream's own exports)."""
    folder = tmp_path_factory.mktemp("exported")
    network = load_network()
    example = torch.zeros(2, 3, 256, 256)
    torchscript = folder / "unet.pt"
    torch.jit.trace(network, example).save(str(torchscript))
    onnx_file = folder / "unet.onnx"
    torch.onnx.export(network, (example,), str(onnx_file), input_names=["images"], output_names=["logits"],
                      dynamic_shapes={"x": {0: torch.export.Dim("n", min=1, max=64)}}, dynamo=True)
    return {"torchscript": torchscript, "onnx": onnx_file}


def _dice(label_map: np.ndarray, truth: np.ndarray) -> float:
    found = label_map > 0
    return 2.0 * float((found & truth).sum()) / float(found.sum() + truth.sum())


def test_torchscript_entry_segments_like_the_plugin(exported) -> None:
    entry = _entry(exported["torchscript"])
    check_entry_file(entry)
    spec = spec_for(entry)
    assert spec.outputs == ("result_json", "seg", "preview") and not spec.onnx_file
    volume, truth = _phantom_volume()
    network = spec.load_network()
    with torch.inference_mode():
        result = spec.handler.postprocess(network(spec.handler.preprocess(volume)), volume)
    assert result.segment_labels == ["nodule"] and _dice(result.label_map, truth) >= 0.8
    assert result.findings and result.findings[0].volume_ml > 0


def test_onnx_entry_runs_on_onnxruntime(exported, tmp_path: Path) -> None:
    entry = _entry(exported["onnx"])
    check_entry_file(entry)
    spec = spec_for(entry)
    assert spec.onnx_file and spec.load_network is None and spec.input_shape == (3, 256, 256)
    backend = OnnxRuntimeBackend("cpu", threads=1)
    backend.initialize(ModelArtifacts(spec, tmp_path))
    volume, truth = _phantom_volume()
    output = backend._run(spec.handler.preprocess(volume))
    result = spec.handler.postprocess(output, volume)
    assert _dice(result.label_map, truth) >= 0.8


def test_selector_rules() -> None:
    entry = _entry(Path("x.onnx"), selector={"modality": ["ct"], "body_part": ["CHEST"], "calling_ae": ["CT1"],
                                             "series_description": r"1\.4 ?mm", "min_slices": 20})
    select = EntrySelector(entry)
    assert select(SERIES)
    for change in ({"modality": "MR"}, {"body_part": "HEAD"}, {"calling_ae": "CT2"},
                   {"series_description": "Chest 5 mm"}, {"instance_count": 10}):
        assert not select(SeriesInfo(**{**SERIES.__dict__, **change})), change


class _Classifier(torch.nn.Module):
    """Logit = 10 * (mean of the window-normalised slice - 0.3): bright slices are 'positive'."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 10.0 * (x.mean(dim=(1, 2, 3))[:, None] - 0.3)


class _Identity(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1]


class _CornerDetector(torch.nn.Module):
    """One box per slice at the top-left quarter with score 0.9, class 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        box = torch.tensor([0.0, 0.0, 64.0, 64.0, 0.9, 0.0])
        return box.expand(n, 1, 6) + 0 * x.mean()


def _script(module: torch.nn.Module, path: Path) -> Path:
    torch.jit.trace(module, torch.zeros(2, 1, 128, 128)).save(str(path))
    return path


def test_other_families_follow_their_contract(tmp_path: Path) -> None:
    volume, _ = _phantom_volume()
    small = {"window": [-1000, 400], "size": [128, 128]}
    classification = _entry(_script(_Classifier(), tmp_path / "c.pt"), output="classification",
                            labels=["bright"], preprocessing=small)
    check_entry_file(classification)
    handler = EntryHandler(classification)
    result = handler.postprocess(spec_for(classification).load_network()(handler.preprocess(volume)), volume)
    assert set(result.class_probabilities) == {"bright"} and 0.0 <= result.class_probabilities["bright"] <= 1.0

    reconstruction = _entry(_script(_Identity(), tmp_path / "r.pt"), output="reconstruction", preprocessing=small)
    check_entry_file(reconstruction)
    handler = EntryHandler(reconstruction)
    result = handler.postprocess(spec_for(reconstruction).load_network()(handler.preprocess(volume)), volume)
    assert result.derived_voxels.shape == volume.shape
    lung = volume.voxels[:, 128, 60]
    assert np.abs(result.derived_voxels[:, 128, 60] - np.clip(lung, -1000, 400)).mean() < 60.0

    detection = _entry(_script(_CornerDetector(), tmp_path / "d.pt"), output="detection", preprocessing=small)
    check_entry_file(detection)
    handler = EntryHandler(detection)
    result = handler.postprocess(spec_for(detection).load_network()(handler.preprocess(volume)), volume)
    (finding,) = result.findings  # one box per slice on every slice: one finding across slices
    assert len(finding.regions) == volume.shape[0] and finding.probability == pytest.approx(0.9)
    assert finding.regions[0].box == (0.0, 0.0, 128.0, 128.0)  # 64 input pixels = 128 volume pixels


def test_bad_entries_stop_start_up_naming_the_entry(exported, tmp_path: Path) -> None:
    with pytest.raises(PluginError, match="'lung-nodules'.*does not exist"):
        check_entry_file(_entry(tmp_path / "missing.onnx"))
    with pytest.raises(PluginError, match=r"'lung-nodules': output shape \(\?, 1, 256, 256\) does not fit"):
        check_entry_file(_entry(exported["onnx"], labels=["a", "b"]))
    with pytest.raises(PluginError, match=r"'lung-nodules': input shape"):
        check_entry_file(_entry(exported["onnx"], preprocessing={"size": [256, 256], "context_slices": 0}))
    with pytest.raises(PluginError, match="'lung-nodules'.*does not take input"):
        check_entry_file(_entry(exported["torchscript"], preprocessing={"size": [256, 256]}))
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    with pytest.raises(PluginError, match="'lung-nodules'.*not a readable ONNX model"):
        check_entry_file(_entry(garbage))
    environ = {"SCANSTREAM_MODELS": f'[{{"name": "x-ray", "version": "1", "file": "{garbage}", '
                                    '"output": "caption"}]'}
    with pytest.raises(ConfigError, match=r'models\[0\] \("x-ray"\)\.output'):
        load_config(environ=environ)
