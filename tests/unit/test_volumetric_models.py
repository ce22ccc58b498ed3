"""Volumetric ``[[models]]`` entries: reorientation, resampling, sliding window and the labels back on the source grid.

The network is a small TorchScript 3D net made here: a 3x3x3 convolution
(the centre tap) then a per-voxel logit of "brighter than 0.5 in the window's
units", so the mask it gives is known from the phantom alone, wherever the
sphere lies and however the series is oriented.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from engine.api import PluginError, SeriesInfo, Volume
from engine.config.entries import ModelEntryConfig
from engine.model_files.plugin import check_entry_file, spec_for
from engine.model_files.sliding_window import WindowGrid, blend_weights, window_starts
from engine.model_files.volume_grid import axis_plan, from_network_axes, to_network_axes

SERIES = SeriesInfo(study_uid="1.2", series_uid="1.2.3", modality="CT", sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                    body_part="ABDOMEN", series_description="Abdomen", calling_ae="CT1", instance_count=24)


class Threshold3D(torch.nn.Module):
    """(N, 1, D, H, W) -> (N, 1, D, H, W) logits 40 x (input - 0.5), through a centre-tap 3x3x3 convolution."""

    def __init__(self) -> None:
        super().__init__()
        self.smooth = torch.nn.Conv3d(1, 1, 3, padding=1, bias=False)
        with torch.no_grad():
            self.smooth.weight.zero_()
            self.smooth.weight[0, 0, 1, 1, 1] = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 40.0 * (self.smooth(x) - 0.5)


@pytest.fixture(scope="module")
def network_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("net3d") / "seg3d.ts"
    torch.jit.script(Threshold3D().eval()).save(str(path))
    return path


def _sphere_volume(orientation: tuple[float, ...]) -> tuple[Volume, np.ndarray]:
    """A 24 x 64 x 56 CT (2 x 0.8 x 0.9 mm) with a 300 HU sphere off centre on -1000 HU air; its truth mask."""
    shape, spacing = (24, 64, 56), (2.0, 0.8, 0.9)
    z, y, x = np.meshgrid(*[np.arange(n) * mm for n, mm in zip(shape, spacing)], indexing="ij")
    truth = ((z - 22.0) ** 2 + (y - 20.0) ** 2 + (x - 30.0) ** 2) <= 13.0 ** 2
    hu = np.where(truth, 300, -1000).astype(np.int16)
    volume = Volume(stored=(hu + 1024).astype(np.uint16), spacing=spacing, origin=(0.0, 0.0, 0.0),
                    orientation=orientation, sources=[], frames=[(i, 1) for i in range(shape[0])], series=SERIES,
                    slope=1.0, intercept=-1024.0)
    return volume, truth


def _entry(file: Path, **volumetric) -> ModelEntryConfig:
    table = {"orientation": "RAS", "spacing": [1.5, 1.5, 1.5], "roi_size": [16, 16, 16], "overlap": 0.5}
    table.update(volumetric)
    return ModelEntryConfig.model_validate({
        "name": "sphere-seg", "version": "1", "file": str(file), "output": "segmentation", "labels": ["liver"],
        "preprocessing": {"window": [-200, 200]}, "volumetric": table})


def _dice(found: np.ndarray, truth: np.ndarray) -> float:
    return 2.0 * float((found & truth).sum()) / float(found.sum() + truth.sum())


@pytest.mark.parametrize("orientation", [(1.0, 0.0, 0.0, 0.0, 1.0, 0.0), (-1.0, 0.0, 0.0, 0.0, 0.0, -1.0)],
                         ids=["axial", "flipped-coronal"])
@pytest.mark.parametrize("blend, invert", [("gaussian", "logits"), ("constant", "labels")])
def test_segments_the_sphere_on_the_source_grid(network_file: Path, orientation, blend: str, invert: str) -> None:
    entry = _entry(network_file, blend=blend, invert=invert)
    check_entry_file(entry)
    spec = spec_for(entry)
    volume, truth = _sphere_volume(orientation)
    windows = spec.handler.preprocess(volume)
    assert windows.shape[1:] == (1, 16, 16, 16) and windows.shape[0] > 1
    network = spec.load_network()
    with torch.inference_mode():
        output = torch.cat([network(windows[i:i + 3]) for i in range(0, windows.shape[0], 3)])
    result = spec.handler.postprocess(output, volume)
    assert result.label_map.shape == truth.shape
    assert _dice(result.label_map == 1, truth) >= 0.93
    (finding,) = result.findings
    expected_ml = truth.sum() * volume.voxel_volume_ml
    assert finding.label == "liver" and abs(finding.volume_ml - expected_ml) < 0.15 * expected_ml


def test_ras_axes_run_right_anterior_superior() -> None:
    volume, _ = _sphere_volume((-1.0, 0.0, 0.0, 0.0, 0.0, -1.0))  # rows run left->right, columns superior->inferior
    plan = axis_plan(volume, "RAS")
    index = torch.arange(np.prod(volume.shape)).reshape(volume.shape)
    net = to_network_axes(index, plan)
    first, along = [], []
    for axis in range(3):
        step = [0, 0, 0]
        step[axis] = 1
        a = np.unravel_index(int(net[0, 0, 0]), volume.shape)
        b = np.unravel_index(int(net[tuple(step)]), volume.shape)
        first.append(a)
        along.append(volume.patient_coordinates(np.array(b))[0] - volume.patient_coordinates(np.array(a))[0])
    # LPS: right is -x, anterior is -y, superior is +z.
    assert along[0][0] < 0 and along[1][1] < 0 and along[2][2] > 0
    assert np.array_equal(from_network_axes(net.numpy(), plan), index.numpy())


def test_windows_cover_every_voxel_and_blend_back() -> None:
    assert window_starts(40, 16, 0.5) == [0, 8, 16, 24]
    assert window_starts(41, 16, 0.5) == [0, 8, 16, 24, 25]
    grid = WindowGrid((10, 33, 20), (16, 16, 16), 0.25)
    image = torch.rand(10, 33, 20)
    windows = grid.cut(image, value=-1.0)
    blended = grid.blend(windows, blend_weights((16, 16, 16), "gaussian"))
    assert torch.allclose(blended[0], image, atol=1e-5)


def test_wrong_output_channels_name_the_roi(tmp_path: Path, network_file: Path) -> None:
    entry = ModelEntryConfig.model_validate({
        "name": "two-organs", "version": "1", "file": str(network_file), "output": "segmentation",
        "labels": ["liver", "spleen"], "volumetric": {"roi_size": [16, 16, 16]}})
    with pytest.raises(PluginError, match=r"'two-organs'.*roi_size \[16, 16, 16\].*expected \(1, 3, 16, 16, 16\)"):
        check_entry_file(entry)


@pytest.mark.parametrize("bad, message", [
    ({"output": "detection"}, "volumetric models are segmentation or classification"),
    ({"preprocessing": {"context_slices": 1}}, "context_slices"),
    ({"volumetric": {"roi_size": [16, 0, 16]}}, "roi_size"),
    ({"volumetric": {"roi_size": [16, 16, 16], "orientation": "XYZ"}}, "orientation"),
])
def test_bad_volumetric_entries_are_refused(tmp_path: Path, bad: dict, message: str) -> None:
    data = {"name": "bad", "version": "1", "file": str(tmp_path / "m.ts"), "output": "segmentation",
            "volumetric": {"roi_size": [16, 16, 16]}}
    data.update(bad)
    with pytest.raises(ValueError, match=message):
        ModelEntryConfig.model_validate(data)


def test_onnx_volumetric_entry_runs_on_onnxruntime(tmp_path: Path) -> None:
    from engine.runtime.artifacts import ModelArtifacts
    from engine.runtime.base import InferenceRequest
    from engine.runtime.onnx_backend import OnnxRuntimeBackend

    onnx_file = tmp_path / "seg3d.onnx"
    torch.onnx.export(Threshold3D().eval(), (torch.zeros(2, 1, 16, 16, 16),), str(onnx_file),
                      input_names=["volume"], output_names=["logits"],
                      dynamic_shapes={"x": {0: torch.export.Dim("n", min=1, max=64)}}, dynamo=True)
    entry = _entry(onnx_file)
    check_entry_file(entry)
    spec = spec_for(entry)
    assert spec.onnx_file and spec.load_network is None and spec.input_shape == (1, 16, 16, 16)
    backend = OnnxRuntimeBackend("cpu", threads=1)
    backend.initialize(ModelArtifacts(spec, tmp_path / "cache"))
    volume, truth = _sphere_volume((1.0, 0.0, 0.0, 0.0, 1.0, 0.0))
    (response,) = backend.execute([InferenceRequest("job", spec.handler.preprocess(volume))])
    assert response.ok, response.error
    result = spec.handler.postprocess(response.outputs, volume)
    assert _dice(result.label_map == 1, truth) >= 0.93
