"""The types plugins and the engine exchange: series facts, volumes, models, results.

Everything a model plugin needs to import lives here (plus :data:`engine.hookimpl`),
so the plugin API is one small module that changes with care.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from collections.abc import Sequence
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np

OUTPUT_KINDS_BUILTIN = ("result_json", "seg")
"""The default ``ModelSpec.outputs``; every built-in kind is in :data:`OUTPUT_KINDS_ALL`."""
OUTPUT_KINDS_ALL = ("result_json", "seg", "sr", "derived_series", "preview")
_NAME_RE = re.compile(r"^[a-z][a-z0-9_\-]{0,62}$")


@dataclass(frozen=True)
class SeriesInfo:
    """What a selector sees of a series: header values only, never pixels or patient data.

    ``revision`` counts the series' completions: a late instance after the
    series completed makes revision 2, re-run with its own result UIDs.
    """

    study_uid: str
    series_uid: str
    modality: str
    sop_class_uid: str
    body_part: str = ""
    series_description: str = ""
    calling_ae: str = ""
    instance_count: int = 0
    frame_count: int = 0
    revision: int = 1


@dataclass
class Volume:
    """A decoded series: stored pixel values, their rescale, and the geometry needed to write results back.

    ``stored`` has shape (slices, rows, columns) ordered along the slice normal
    (ascending), in the stored type (uint8/int16/uint16 as decoded; float32 when
    the slices had different rescales and were rescaled while stacking).
    ``voxels`` is ``stored * slope + intercept`` (HU for CT), computed on first use:
    the engine's preprocessing paths read ``stored`` directly.
    ``frames`` maps each slice index to (index into ``sources``, 1-based frame number).
    ``sources`` are the instances as pydicom datasets, in arrival order; the
    engine builds each on first access, so read only the ones you need.
    """

    stored: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    orientation: tuple[float, ...]
    sources: Sequence[Any]
    frames: list[tuple[int, int]]
    series: SeriesInfo
    slope: float = 1.0
    intercept: float = 0.0

    @cached_property
    def voxels(self) -> np.ndarray:
        """Values in physical units as float32: ``stored * slope + intercept``."""
        voxels = self.stored.astype(np.float32)
        if self.slope != 1.0:
            voxels *= np.float32(self.slope)
        if self.intercept != 0.0:
            voxels += np.float32(self.intercept)
        return voxels

    @property
    def shape(self) -> tuple[int, int, int]:
        """(slices, rows, columns)."""
        return tuple(int(n) for n in self.stored.shape)  # type: ignore[return-value]

    def patient_coordinates(self, indices: np.ndarray) -> np.ndarray:
        """Patient coordinates (x, y, z) mm of (slice, row, col) voxel indices, shape (K, 3) -> (K, 3)."""
        row_dir = np.asarray(self.orientation[:3], dtype=float)
        col_dir = np.asarray(self.orientation[3:6], dtype=float)
        normal = np.cross(row_dir, col_dir)
        slice_mm, row_mm, col_mm = self.spacing
        indices = np.asarray(indices, dtype=float).reshape(-1, 3)
        return (np.asarray(self.origin, dtype=float) + np.outer(indices[:, 2] * col_mm, row_dir)
                + np.outer(indices[:, 1] * row_mm, col_dir) + np.outer(indices[:, 0] * slice_mm, normal))

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in millilitres (mm^3 / 1000)."""
        s, r, c = self.spacing
        return float(s * r * c) / 1000.0


@dataclass(frozen=True)
class ImageRegion:
    """A box on one slice of the volume, in that slice's pixel coordinates (DICOM SCOORD convention).

    ``slice_index`` indexes ``Volume.stored`` (and so ``Volume.frames``/``sources``);
    ``box`` is (column_min, row_min, column_max, row_max) with pixel centres at
    integer + 0.5, as DICOM SCOORD expects (the top-left corner of the image is 0, 0).
    """

    slice_index: int
    box: tuple[float, float, float, float]


@dataclass
class Finding:
    """One thing a model found; the optional fields are filled per family.

    Segmentation: ``volume_ml``, ``voxel_count``, ``centroid_mm``. Detection:
    ``regions`` (one box per slice the finding spans) and ``centroid_mm``.
    Classification: ``probability`` of the study-level label.
    """

    label: str
    probability: float | None = None
    volume_ml: float | None = None
    voxel_count: int | None = None
    centroid_mm: tuple[float, float, float] | None = None
    regions: list[ImageRegion] = field(default_factory=list)


@dataclass
class ModelResult:
    """What a model's postprocess returns for one series.

    Each family fills what its writers read:

    - ``label_map`` (uint8, the volume's shape, 0 = background, k =
      ``segment_labels[k-1]``): the SEG writer (segmentation); ``segment_codes``
      optionally gives a label's (category, type) codes, each (scheme, value,
      meaning), else :mod:`engine.outputs.segment_codes` picks defaults;
    - ``findings`` with ``regions``: the SR writer's image regions (detection);
    - ``class_probabilities`` (label -> study-level probability) and
      ``findings`` for the labels judged present: the SR writer (classification);
    - ``derived_voxels`` (float32, the volume's shape, physical units such as
      HU): the derived-series writer (reconstruction).

    The preview writer reads whichever of these is set.
    """

    summary: str
    findings: list[Finding] = field(default_factory=list)
    label_map: np.ndarray | None = None
    segment_labels: list[str] = field(default_factory=list)
    segment_codes: dict[str, tuple[tuple[str, str, str], tuple[str, str, str]]] = field(default_factory=dict)
    class_probabilities: dict[str, float] = field(default_factory=dict)
    derived_voxels: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class ModelHandler(Protocol):
    """The model-specific halves around the network call (Triton-style split).

    ``preprocess`` turns a volume into a batch tensor (N, C, H, W) or (N, C, D, H, W);
    the backend runs the network on it (possibly in several micro-batches);
    ``postprocess`` turns the concatenated network output back into a result.
    """

    def preprocess(self, volume: Volume) -> Any: ...

    def postprocess(self, output: Any, volume: Volume) -> ModelResult: ...


@dataclass(frozen=True)
class Artifact:
    """One output file: a name relative to the job's result folder, and its bytes."""

    name: str
    data: bytes
    media_type: str = "application/octet-stream"


@runtime_checkable
class OutputWriter(Protocol):
    """Turns a model result into files (a DICOM SEG, a JSON summary, ...)."""

    def write(self, result: ModelResult, volume: Volume, spec: "ModelSpec") -> list[Artifact]: ...


Selector = Callable[[SeriesInfo], bool]


@dataclass(frozen=True)
class ModelSpec:
    """A model as registered by a plugin.

    ``load_network`` builds the torch module with its weights (called once per worker);
    ``handler`` does pre/postprocessing; ``selector`` says which series the model takes.
    ``outputs`` names registered output writers, run in order.

    ``input_shape`` is one item's typical network input, (C, H, W) or (C, D, H, W):
    it is the example for ONNX export, TensorRT's optimum profile and backend
    probing. ``min_input_shape``/``max_input_shape`` bound the axes that vary
    between series (default: fixed at ``input_shape``); a varying axis must be a
    multiple of ``shape_multiple`` (a U-Net's pooling depth). A model without an
    ``input_shape`` runs on the torch backend only.

    ``onnx_file`` names a ready ONNX graph instead of a torch network (config-only
    models): it runs on ONNX Runtime or TensorRT, and ``load_network`` may be None.
    """

    name: str
    version: str
    description: str
    selector: Selector
    load_network: Callable[[], Any] | None
    handler: ModelHandler
    outputs: tuple[str, ...] = OUTPUT_KINDS_BUILTIN
    max_batch: int = 16
    input_shape: tuple[int, ...] = ()
    min_input_shape: tuple[int, ...] = ()
    max_input_shape: tuple[int, ...] = ()
    shape_multiple: int = 1
    onnx_file: str = ""

    def check(self) -> None:
        """Raise :class:`PluginError` naming the model when a field is unusable."""
        where = f"model {self.name!r}"
        problem = self._identity_problem() or self._parts_problem() or self._shape_problem()
        if problem:
            raise PluginError(f"{where}: {problem}")

    def _identity_problem(self) -> str | None:
        if not _NAME_RE.match(self.name):
            return f"name must match {_NAME_RE.pattern}"
        if not self.version or not isinstance(self.version, str):
            return "version must be a non-empty string"
        return None

    def _parts_problem(self) -> str | None:
        """What is wrong with the selector, network, handler, outputs or batch size, if anything."""
        if not callable(self.selector):
            return "selector must be callable (SeriesInfo) -> bool"
        if not callable(self.load_network) and not self.onnx_file:
            return "load_network must be callable () -> torch.nn.Module (or set onnx_file)"
        if self.onnx_file and not self.input_shape:
            return "a model given as onnx_file needs input_shape"
        if not isinstance(self.handler, ModelHandler):
            return "handler must define preprocess(volume) and postprocess(output, volume)"
        if not self.outputs:
            return "outputs must name at least one output writer"
        if self.max_batch < 1:
            return "max_batch must be >= 1"
        return None

    def _shape_problem(self) -> str | None:
        """What is wrong with the declared input shapes and their bounds, if anything."""
        shapes = {"input_shape": self.input_shape, "min_input_shape": self.min_input_shape,
                  "max_input_shape": self.max_input_shape}
        for key, shape in shapes.items():
            if shape and (not all(isinstance(n, int) and n >= 1 for n in shape) or len(shape) not in (3, 4)):
                return f"{key} must be 3 or 4 positive ints (C, H, W) or (C, D, H, W), got {shape}"
        if (self.min_input_shape or self.max_input_shape) and not self.input_shape:
            return "min_input_shape/max_input_shape need input_shape"
        if self.shape_multiple < 1:
            return "shape_multiple must be >= 1"
        low, high = self.input_bounds()
        if self.input_shape and not all(lo <= n <= hi for lo, n, hi in zip(low, self.input_shape, high)):
            return (f"need min_input_shape <= input_shape <= max_input_shape on every axis, "
                    f"got {low} / {self.input_shape} / {high}")
        return None

    def input_bounds(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(smallest, largest) per-item input shape; both ``input_shape`` where not declared."""
        low = self.min_input_shape or self.input_shape
        high = self.max_input_shape or self.input_shape
        if len(low) != len(self.input_shape) or len(high) != len(self.input_shape):
            raise PluginError(f"model {self.name!r}: input shape bounds must have as many axes as input_shape")
        return tuple(low), tuple(high)


class PluginError(Exception):
    """A plugin registered something unusable; the message names the plugin piece."""


class ModelRegistry:
    """Models registered by plugins, keyed by name (handed to ``scanstream_register_models``)."""

    def __init__(self) -> None:
        self._models: dict[str, ModelSpec] = {}

    def add(self, spec: ModelSpec) -> None:
        """Register a model; a duplicate name or an invalid spec raises :class:`PluginError`."""
        spec.check()
        if spec.name in self._models:
            raise PluginError(f"model {spec.name!r} is registered twice")
        self._models[spec.name] = spec

    def get(self, name: str) -> ModelSpec:
        """Return the model called ``name`` or raise naming the known ones."""
        try:
            return self._models[name]
        except KeyError:
            known = ", ".join(sorted(self._models)) or "none"
            raise PluginError(f"unknown model {name!r}; registered models: {known}") from None

    def all(self) -> list[ModelSpec]:
        """Every registered model, sorted by name."""
        return [self._models[k] for k in sorted(self._models)]

    def select(self, series: SeriesInfo) -> list[ModelSpec]:
        """The models whose selector takes ``series`` (several may)."""
        return [m for m in self.all() if m.selector(series)]

    def __len__(self) -> int:
        return len(self._models)


class OutputRegistry:
    """Output writers by kind (handed to ``scanstream_register_outputs``)."""

    def __init__(self) -> None:
        self._writers: dict[str, OutputWriter] = {}

    def add(self, kind: str, writer: OutputWriter) -> None:
        """Register ``writer`` for ``kind``; duplicates and non-writers raise :class:`PluginError`."""
        if not isinstance(writer, OutputWriter):
            raise PluginError(f"output {kind!r}: writer must define write(result, volume, spec)")
        if kind in self._writers:
            raise PluginError(f"output {kind!r} is registered twice")
        self._writers[kind] = writer

    def get(self, kind: str) -> OutputWriter:
        """Return the writer for ``kind`` or raise naming the known kinds."""
        try:
            return self._writers[kind]
        except KeyError:
            known = ", ".join(sorted(self._writers)) or "none"
            raise PluginError(f"unknown output kind {kind!r}; registered outputs: {known}") from None

    def kinds(self) -> list[str]:
        """Registered output kinds, sorted."""
        return sorted(self._writers)
