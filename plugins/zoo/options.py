"""The zoo's settings, read from the flat ``[plugins.options]`` table (keys prefixed ``zoo.``) and checked.

Every key is optional; an unknown ``zoo.*`` key or a bad value stops start-up
with a :class:`~engine.api.PluginError` naming the key, so a typo never runs a
benchmark at a size nobody asked for.

===========================  =========  ==============================================================
key                          default    meaning
===========================  =========  ==============================================================
zoo.input_size               224        side of the classifiers' square input (ResNet, Inception, VGG), >= 75
zoo.channels                 3          input channels of classifiers and SSD: odd; the slice and its
                                        (channels - 1) / 2 neighbours on each side (2.5D)
zoo.num_classes              1000       classifier outputs (ImageNet)
zoo.top_k                    5          classes reported per study
zoo.ssd.input_size           300        SSD input side (at least 268)
zoo.ssd.num_classes          91         SSD classes including background (COCO, as torchvision)
zoo.ssd.score_threshold      0.01       SSD detection score floor before NMS (the paper's value)
zoo.ssd.iou_threshold        0.45       SSD NMS overlap
zoo.ssd.max_findings         20         detections reported as findings per study (highest scores)
zoo.unet3d.patch             128        3D U-Net patch: a side or DxHxW, multiples of 32
zoo.unet3d.overlap           0.5        sliding-window overlap, in [0, 1)
zoo.unet3d.blend             gaussian   sliding-window blending: gaussian or uniform
zoo.dcgan.input_size         256        generator input side, a multiple of 256
zoo.max_batch                per model  overrides every zoo model's max_batch
zoo.weights.<model>          (none)     a state-dict file for <model> (e.g. zoo.weights.zoo-resnet50)
===========================  =========  ==============================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from engine.api import PluginError

PREFIX = "zoo."
WEIGHTS_PREFIX = "zoo.weights."
UNET_MULTIPLE = 32
DCGAN_MULTIPLE = 256
CLASSIFIER_MIN_INPUT = 75  # Inception-v3's smallest input; ResNet and VGG take 32 and up
SSD_MIN_INPUT = 268  # plugins.zoo.ssd.MIN_INPUT, repeated here so reading options imports no network code


def _integer(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise PluginError(f"plugins.options {key!r}: expected an integer, got {value!r}")
    try:
        return int(value)
    except ValueError:
        raise PluginError(f"plugins.options {key!r}: expected an integer, got {value!r}") from None


def _number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise PluginError(f"plugins.options {key!r}: expected a number, got {value!r}")
    try:
        return float(value)
    except ValueError:
        raise PluginError(f"plugins.options {key!r}: expected a number, got {value!r}") from None


def _patch(key: str, value: Any) -> tuple[int, int, int]:
    """A side (``128``) or ``DxHxW`` (``"64x32x32"``)."""
    if isinstance(value, str) and "x" in value.lower():
        parts = value.lower().split("x")
        if len(parts) != 3:
            raise PluginError(f"plugins.options {key!r}: expected a side or DxHxW, got {value!r}")
        sides = tuple(_integer(key, part.strip()) for part in parts)
    else:
        side = _integer(key, value)
        sides = (side, side, side)
    return sides  # type: ignore[return-value]


@dataclass(frozen=True)
class ZooOptions:
    """Validated zoo settings (see the module docstring for each key)."""

    input_size: int = 224
    channels: int = 3
    num_classes: int = 1000
    top_k: int = 5
    ssd_input_size: int = 300
    ssd_num_classes: int = 91
    ssd_score_threshold: float = 0.01
    ssd_iou_threshold: float = 0.45
    ssd_max_findings: int = 20
    unet3d_patch: tuple[int, int, int] = (128, 128, 128)
    unet3d_overlap: float = 0.5
    unet3d_blend: str = "gaussian"
    dcgan_input_size: int = 256
    max_batch: int = 0
    weights: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        def need(ok: bool, key: str, text: str) -> None:
            if not ok:
                raise PluginError(f"plugins.options {key!r}: {text}, got {getattr(self, _FIELD_OF[key])!r}")

        need(self.input_size >= CLASSIFIER_MIN_INPUT, "zoo.input_size",
             f"must be at least {CLASSIFIER_MIN_INPUT} (Inception-v3's smallest input)")
        need(self.channels >= 1 and self.channels % 2 == 1, "zoo.channels",
             "must be odd (the slice and the same number of neighbours on each side)")
        need(self.num_classes >= 1, "zoo.num_classes", "must be at least 1")
        need(1 <= self.top_k, "zoo.top_k", "must be at least 1")
        need(self.ssd_input_size >= SSD_MIN_INPUT, "zoo.ssd.input_size",
             f"must be at least {SSD_MIN_INPUT} (SSD300's last feature maps)")
        need(self.ssd_num_classes >= 2, "zoo.ssd.num_classes", "must be at least 2 (background and one class)")
        need(0.0 <= self.ssd_score_threshold < 1.0, "zoo.ssd.score_threshold", "must be in [0, 1)")
        need(0.0 < self.ssd_iou_threshold <= 1.0, "zoo.ssd.iou_threshold", "must be in (0, 1]")
        need(self.ssd_max_findings >= 0, "zoo.ssd.max_findings", "must be >= 0")
        bottleneck = 1
        for side in self.unet3d_patch:
            bottleneck *= side // UNET_MULTIPLE
        need(all(side >= UNET_MULTIPLE and side % UNET_MULTIPLE == 0 for side in self.unet3d_patch) and bottleneck > 1,
             "zoo.unet3d.patch", f"sides must be multiples of {UNET_MULTIPLE}, and at least one side 64 or more "
             "(instance norm needs more than one voxel at the bottleneck)")
        need(0.0 <= self.unet3d_overlap < 1.0, "zoo.unet3d.overlap", "must be in [0, 1)")
        need(self.unet3d_blend in ("gaussian", "uniform"), "zoo.unet3d.blend", "must be gaussian or uniform")
        need(self.dcgan_input_size >= DCGAN_MULTIPLE and self.dcgan_input_size % DCGAN_MULTIPLE == 0,
             "zoo.dcgan.input_size", f"must be a multiple of {DCGAN_MULTIPLE} (eight 2x reductions)")
        need(self.max_batch >= 0, "zoo.max_batch", "must be >= 1 (or absent)")

    def batch_limit(self, default: int) -> int:
        """``zoo.max_batch`` where given, else the model's own ``default``."""
        return self.max_batch or default

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> "ZooOptions":
        """Read the ``zoo.*`` keys of a ``plugins.options`` table; other plugins' keys are ignored."""
        values: dict[str, Any] = {}
        weights: dict[str, str] = {}
        for key, value in options.items():
            if not key.startswith(PREFIX):
                continue
            if key.startswith(WEIGHTS_PREFIX):
                if not isinstance(value, str) or not value:
                    raise PluginError(f"plugins.options {key!r}: expected a file path, got {value!r}")
                weights[key[len(WEIGHTS_PREFIX):]] = value
                continue
            if key not in _READERS:
                known = ", ".join(sorted([*_READERS, WEIGHTS_PREFIX + "<model>"]))
                raise PluginError(f"plugins.options {key!r} is not a zoo setting; known: {known}")
            name, read = _READERS[key]
            values[name] = read(key, value)
        return cls(**values, weights=weights)


def _text(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise PluginError(f"plugins.options {key!r}: expected a string, got {value!r}")
    return value.strip().lower()


_READERS: dict[str, tuple[str, Callable[[str, Any], Any]]] = {
    "zoo.input_size": ("input_size", _integer),
    "zoo.channels": ("channels", _integer),
    "zoo.num_classes": ("num_classes", _integer),
    "zoo.top_k": ("top_k", _integer),
    "zoo.ssd.input_size": ("ssd_input_size", _integer),
    "zoo.ssd.num_classes": ("ssd_num_classes", _integer),
    "zoo.ssd.score_threshold": ("ssd_score_threshold", _number),
    "zoo.ssd.iou_threshold": ("ssd_iou_threshold", _number),
    "zoo.ssd.max_findings": ("ssd_max_findings", _integer),
    "zoo.unet3d.patch": ("unet3d_patch", _patch),
    "zoo.unet3d.overlap": ("unet3d_overlap", _number),
    "zoo.unet3d.blend": ("unet3d_blend", _text),
    "zoo.dcgan.input_size": ("dcgan_input_size", _integer),
    "zoo.max_batch": ("max_batch", _integer),
}
_FIELD_OF = {key: name for key, (name, _) in _READERS.items()}
