"""Models registered from configuration alone: ``[[models]]`` entries with a TorchScript or ONNX file.

A built-in plugin: for each entry it builds a selector from the entry's header
rules, a handler from its preprocessing and output family (the network contract
is in :class:`engine.config.entries.ModelEntryConfig`), and checks the file at
start-up (it exists, loads, and its input and output shapes fit the family), so
a bad entry stops start-up with a message naming it instead of failing jobs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from engine import hookimpl
from engine.api import Finding, ImageRegion, ModelRegistry, ModelResult, ModelSpec, PluginError, SeriesInfo, Volume
from engine.postprocess.boxes import pairwise_iou
from engine.config import EngineConfig
from engine.config.entries import ModelEntryConfig
from engine.kernels.cpu import resize_slices, run_slice_plan
from engine.kernels.plan import Intensity, SlicePlan
from engine.model_files.volumetric import VolumetricHandler

OUTPUTS_BY_FAMILY = {
    "segmentation": ("result_json", "seg", "preview"),
    "classification": ("result_json", "sr", "preview"),
    "detection": ("result_json", "sr", "preview"),
    "reconstruction": ("result_json", "derived_series", "preview"),
}
MERGE_IOU = 0.3  # boxes on consecutive slices overlapping this much are one finding


@dataclass(frozen=True)
class EntrySelector:
    """The series rule of one entry: every configured field must match."""

    entry: ModelEntryConfig

    def __call__(self, series: SeriesInfo) -> bool:
        rule = self.entry.selector
        if rule.modality and series.modality.upper() not in {m.upper() for m in rule.modality}:
            return False
        if rule.body_part and series.body_part.upper() not in {b.upper() for b in rule.body_part}:
            return False
        if rule.sop_class_uid and series.sop_class_uid not in rule.sop_class_uid:
            return False
        if rule.calling_ae and series.calling_ae not in rule.calling_ae:
            return False
        if rule.series_description and not re.search(rule.series_description, series.series_description,
                                                      re.IGNORECASE):
            return False
        return max(series.instance_count, series.frame_count) >= rule.min_slices


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two corner boxes (:func:`engine.postprocess.boxes.pairwise_iou` of one box each)."""
    return float(pairwise_iou(torch.as_tensor(a, dtype=torch.float64)[None],
                              torch.as_tensor(b, dtype=torch.float64)[None])[0, 0])


class EntryHandler:
    """Pre- and postprocessing of one ``[[models]]`` entry, by its output family."""

    def __init__(self, entry: ModelEntryConfig) -> None:
        self.entry = entry

    def plan(self, volume: Volume) -> SlicePlan:
        """Resample to the configured size, window/normalise, neighbours as channels (CPU or GPU path)."""
        pre = self.entry.preprocessing
        low, high = pre.window
        if pre.normalise == "window":
            intensity = Intensity.window(low, high)
        else:
            intensity = Intensity.zscore(low, high, pre.mean, pre.std)
        return SlicePlan(size=tuple(pre.size), intensity=intensity.with_rescale(volume.slope, volume.intercept),
                         context_radius=pre.context_slices)

    def preprocess(self, volume: Volume) -> torch.Tensor:
        """The volume as (slices, C, H, W) float32 network input."""
        return run_slice_plan(volume.stored, self.plan(volume))

    def postprocess(self, output: Any, volume: Volume) -> ModelResult:
        """The network output turned into the family's result."""
        tensor = torch.as_tensor(output[0] if isinstance(output, (tuple, list)) else output)
        tensor = tensor.detach().to("cpu", torch.float32)
        family = self.entry.output
        if family == "segmentation":
            return self._segmentation(tensor, volume)
        if family == "classification":
            return self._classification(tensor)
        if family == "detection":
            return self._detection(tensor, volume)
        return self._reconstruction(tensor, volume)

    def _segmentation(self, logits: torch.Tensor, volume: Volume) -> ModelResult:
        rows, cols = volume.shape[1:]
        logits = resize_slices(logits, (rows, cols))
        if logits.shape[1] == 1:
            label_map = (torch.sigmoid(logits[:, 0]) > self.entry.threshold).to(torch.uint8).numpy()
        else:
            label_map = logits.argmax(dim=1).to(torch.uint8).numpy()
        findings = []
        for index, label in enumerate(self.entry.labels, start=1):
            count = int((label_map == index).sum())
            if count:
                centre = volume.patient_coordinates(np.argwhere(label_map == index).mean(axis=0))[0]
                findings.append(Finding(label=label, voxel_count=count,
                                        volume_ml=round(count * volume.voxel_volume_ml, 3),
                                        centroid_mm=tuple(round(float(v), 1) for v in centre)))
        summary = f"{self.entry.name}: " + (", ".join(f"{f.label} {f.volume_ml:.2f} ml" for f in findings)
                                            or "nothing segmented")
        return ModelResult(summary=summary, findings=findings, label_map=label_map,
                           segment_labels=list(self.entry.labels), segment_codes=self.entry.segment_codes())

    def _classification(self, logits: torch.Tensor) -> ModelResult:
        study = torch.sigmoid(logits.reshape(logits.shape[0], -1)).max(dim=0).values
        probabilities = {label: round(float(p), 4) for label, p in zip(self.entry.labels, study)}
        findings = [Finding(label=label, probability=p) for label, p in probabilities.items()
                    if p >= self.entry.threshold]
        summary = f"{self.entry.name}: " + ", ".join(f"{label} {p:.2f}" for label, p in probabilities.items())
        return ModelResult(summary=summary, findings=findings, class_probabilities=probabilities)

    def _detection(self, rows_out: torch.Tensor, volume: Volume) -> ModelResult:
        height, width = self.entry.preprocessing.size
        rows, cols = volume.shape[1:]
        scale = np.array([cols / width, rows / height, cols / width, rows / height])
        open_tracks: list[dict[str, Any]] = []
        closed: list[dict[str, Any]] = []
        for slice_index, detections in enumerate(rows_out.numpy()):
            kept = detections[detections[:, 4] >= self.entry.threshold]
            still_open = []
            for x0, y0, x1, y1, score, cls in kept:
                box = np.clip(np.array([x0, y0, x1, y1]) * scale, 0, [cols, rows, cols, rows])
                label = self.entry.labels[min(max(int(cls), 0), len(self.entry.labels) - 1)]
                track = next((t for t in open_tracks if t["label"] == label and t["last"] == slice_index - 1
                              and _iou(t["boxes"][-1][1], box) >= MERGE_IOU
                              and not any(t is s for s in still_open)), None)
                if track is None:
                    track = {"label": label, "boxes": [], "score": 0.0}
                track["boxes"].append((slice_index, box))
                track["score"] = max(track["score"], float(score))
                track["last"] = slice_index
                still_open.append(track)
            closed.extend(t for t in open_tracks if not any(t is s for s in still_open))
            open_tracks = still_open
        findings = []
        for track in closed + open_tracks:
            regions = [ImageRegion(index, tuple(round(float(v), 2) for v in box)) for index, box in track["boxes"]]
            middle_index, middle_box = track["boxes"][len(track["boxes"]) // 2]
            centre = volume.patient_coordinates(np.array([middle_index, (middle_box[1] + middle_box[3]) / 2 - 0.5,
                                                          (middle_box[0] + middle_box[2]) / 2 - 0.5]))[0]
            findings.append(Finding(label=track["label"], probability=round(track["score"], 4), regions=regions,
                                    centroid_mm=tuple(round(float(v), 1) for v in centre)))
        findings.sort(key=lambda f: -(f.probability or 0.0))
        return ModelResult(summary=f"{self.entry.name}: {len(findings)} finding(s)", findings=findings)

    def _reconstruction(self, images: torch.Tensor, volume: Volume) -> ModelResult:
        pre = self.entry.preprocessing
        rows, cols = volume.shape[1:]
        images = resize_slices(images[:, :1], (rows, cols))[:, 0]
        if pre.normalise == "window":
            low, high = pre.window
            values = images * (high - low) + low
        else:
            values = images * pre.std + pre.mean
        return ModelResult(summary=f"{self.entry.name}: derived series of {volume.shape[0]} slices",
                           derived_voxels=values.numpy().astype(np.float32))


def expected_output(entry: ModelEntryConfig) -> tuple[int, ...]:
    """The output shape (batch 1) the entry's family requires; -1 where any size goes."""
    height, width = entry.preprocessing.size
    labels = len(entry.labels)
    if entry.volumetric is not None:
        if entry.output == "classification":
            return (1, labels)
        channels = 1 if labels == 1 and not entry.volumetric.background_channel else labels + 1
        return (1, channels, *entry.volumetric.roi_size)
    if entry.output == "segmentation":
        return (1, 1 if labels == 1 else labels + 1, height, width)
    if entry.output == "classification":
        return (1, labels)
    if entry.output == "detection":
        return (1, -1, 6)
    return (1, 1, height, width)


def _shape_fits(found: tuple[int | str | None, ...], wanted: tuple[int, ...], what: str, entry: ModelEntryConfig) -> None:
    """Symbolic (None/str) or -1 axes match anything; fixed ones must be equal."""
    ok = len(found) == len(wanted) and all(not isinstance(f, int) or w == -1 or f == w or (i == 0 and f >= 1)
                                           for i, (f, w) in enumerate(zip(found, wanted)))
    if not ok:
        def text(shape: tuple) -> str:
            return "(" + ", ".join(str(n) if isinstance(n, int) and n != -1 else "?" for n in shape) + ")"

        size = (f"volumetric.roi_size {list(entry.volumetric.roi_size)}" if entry.volumetric is not None
                else f"size {list(entry.preprocessing.size)}")
        raise PluginError(f"models entry {entry.name!r}: {what} shape {text(found)} does not fit output "
                          f"{entry.output!r} with {len(entry.labels)} label(s) and {size}; "
                          f"expected {text(wanted)}")


def _onnx_dims(value: Any) -> tuple[int | str | None, ...]:
    dims = value.type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in dims)


def check_entry_file(entry: ModelEntryConfig) -> None:
    """The file exists and its shapes fit the entry; :class:`PluginError` naming the entry otherwise."""
    if not entry.file.is_file():
        raise PluginError(f"models entry {entry.name!r}: file {entry.file} does not exist")
    example = input_example(entry)
    if entry.is_onnx:
        import onnx
        from google.protobuf.message import DecodeError

        try:
            graph = onnx.load(str(entry.file), load_external_data=False).graph
        except (OSError, DecodeError, ValueError) as error:
            raise PluginError(f"models entry {entry.name!r}: {entry.file} is not a readable ONNX model: "
                              f"{error}") from None
        initializers = {tensor.name for tensor in graph.initializer}
        inputs = [value for value in graph.input if value.name not in initializers]
        if len(inputs) != 1 or not graph.output:
            raise PluginError(f"models entry {entry.name!r}: the graph must have one input and an output, "
                              f"has {len(inputs)} input(s), {len(graph.output)} output(s)")
        _shape_fits(_onnx_dims(inputs[0]), example, "input", entry)
        _shape_fits(_onnx_dims(graph.output[0]), expected_output(entry), "output", entry)
        return
    network = load_torchscript(entry)
    with torch.inference_mode():
        try:
            output = network(torch.zeros(example))
        except RuntimeError as error:
            raise PluginError(f"models entry {entry.name!r}: the network does not take input {tuple(example)} "
                              f"({_input_source(entry)}): {_interpreter_error(error)}") from None
    output = output[0] if isinstance(output, (tuple, list)) else output
    _shape_fits(tuple(int(n) for n in output.shape), expected_output(entry), "output", entry)


def _interpreter_error(error: RuntimeError) -> str:
    """The message of a TorchScript interpreter failure (its last line), not the trace above it."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    last = lines[-1]
    return last.split(": ", 1)[1] if re.match(r"^[A-Za-z]*Error: ", last) else last


def _input_source(entry: ModelEntryConfig) -> str:
    """Where the input shape comes from, in config keys."""
    if entry.volumetric is not None:
        return f"1 channel, volumetric.roi_size {list(entry.volumetric.roi_size)}"
    pre = entry.preprocessing
    return (f"C = 2 x preprocessing.context_slices + 1 = {pre.channels}, preprocessing.size {list(pre.size)}")


def input_example(entry: ModelEntryConfig) -> tuple[int, ...]:
    """One item's input shape with batch 1: (1, C, H, W), or (1, 1, D, H, W) for a volumetric entry."""
    if entry.volumetric is not None:
        return (1, 1, *entry.volumetric.roi_size)
    height, width = entry.preprocessing.size
    return (1, entry.preprocessing.channels, height, width)


def load_torchscript(entry: ModelEntryConfig) -> torch.nn.Module:
    """The entry's TorchScript network on the CPU, in eval mode."""
    try:
        return torch.jit.load(str(entry.file), map_location="cpu").eval()
    except (RuntimeError, ValueError, OSError) as error:
        raise PluginError(f"models entry {entry.name!r}: {entry.file} is not a loadable TorchScript file: "
                          f"{str(error).splitlines()[0] if str(error) else type(error).__name__}") from None


def spec_for(entry: ModelEntryConfig) -> ModelSpec:
    """The :class:`ModelSpec` of one checked entry."""
    return ModelSpec(
        name=entry.name,
        version=entry.version,
        description=entry.description or f"{entry.output} model from {entry.file.name} (configured)",
        selector=EntrySelector(entry),
        load_network=None if entry.is_onnx else (lambda: load_torchscript(entry)),
        handler=VolumetricHandler(entry) if entry.volumetric is not None else EntryHandler(entry),
        outputs=OUTPUTS_BY_FAMILY[entry.output],
        max_batch=entry.max_batch,
        input_shape=input_example(entry)[1:] if entry.is_onnx else (),
        onnx_file=str(entry.file) if entry.is_onnx else "",
    )


@hookimpl
def scanstream_register_models(registry: ModelRegistry, config: EngineConfig) -> None:
    """Register every ``[[models]]`` entry after checking its file."""
    for entry in config.models:
        entry = resolved(entry)
        check_entry_file(entry)
        registry.add(spec_for(entry))


def resolved(entry: ModelEntryConfig) -> ModelEntryConfig:
    """The entry as run: a MONAI Bundle's entry read into file, labels and plan; others as given."""
    if entry.bundle is None:
        return entry
    from engine.model_files.bundle import bundle_entry

    return bundle_entry(entry)
