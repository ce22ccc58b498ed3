"""MONAI Bundles as ``[[models]]`` entries: metadata.json and inference.json read as data, never run.

MONAI's own config parser evaluates ``$`` expressions as Python, so a bundle is
not handed to it. Instead the ``preprocessing``, ``inferer`` and
``postprocessing`` sections of ``configs/inference.json`` are read as JSON and
each transform is mapped onto the entry's volumetric plan (:data:`MAPPED`), or
ignored where the engine does that step itself (:data:`ENGINE_STEPS`: loading,
channel handling, saving). Any other transform, a ``$`` expression in a value
that is used, or a value the plan cannot express stops start-up naming the
entry, the transform and the reason. Labels come from the output's
``channel_def`` in ``configs/metadata.json`` (channel 0 is the background).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engine.api import PluginError
from engine.config.entries import ModelEntryConfig

ENGINE_STEPS = {"LoadImage", "EnsureChannelFirst", "EnsureType", "ToTensor", "CastToType", "SaveImage",
                "FromMetaTensor", "ToDevice", "Activations", "Invert", "AsDiscrete"}
MAPPED = {"Orientation", "Spacing", "ScaleIntensityRange", "NormalizeIntensity"}
INFERERS = {"SlidingWindowInferer"}


class BundleError(PluginError):
    """A bundle the engine cannot run as declared."""


def _name(target: str) -> str:
    """A transform's class name without its module and dictionary suffix (``monai.transforms.Spacingd``)."""
    name = target.rsplit(".", 1)[-1]
    return name[:-1] if name.endswith("d") and name[:-1] in ENGINE_STEPS | MAPPED else name


class _Reader:
    """Literal values of one bundle's inference.json, ``@key`` references resolved to top-level literals."""

    def __init__(self, entry: ModelEntryConfig, root: Path) -> None:
        self.entry, self.root = entry, root
        self.config = self._json(root / "configs" / "inference.json")
        self.metadata = self._json(root / "configs" / "metadata.json")

    def fail(self, text: str) -> BundleError:
        return BundleError(f"models entry {self.entry.name!r}: bundle {self.root}: {text}")

    def _json(self, path: Path) -> dict[str, Any]:
        try:
            document = json.loads(path.read_text())
        except FileNotFoundError:
            raise self.fail(f"{path.relative_to(self.root)} is missing") from None
        except (OSError, ValueError) as error:
            raise self.fail(f"{path.relative_to(self.root)} is not readable JSON: {error}") from None
        if not isinstance(document, dict):
            raise self.fail(f"{path.relative_to(self.root)} is not a JSON object")
        return document

    def value(self, transform: str, args: dict[str, Any], key: str, default: Any = None) -> Any:
        """``args[key]`` as a literal; ``@name`` looked up at the top level; ``$`` expressions refused."""
        value = args.get(key, default)
        if isinstance(value, str) and value.startswith("@"):
            value = self.config.get(value[1:], default)
        if isinstance(value, str) and value.startswith("$") or isinstance(value, dict) and "_target_" in value:
            raise self.fail(f"{transform}.{key} is a Python expression ({str(value)[:60]!r}); ScanStream never "
                            f"evaluates bundle code: give a literal value")
        return value

    def transforms(self, section: str) -> list[dict[str, Any]]:
        """The transforms of a Compose section (or a bare list), each a dict with ``_target_``."""
        node = self.config.get(section, {})
        if isinstance(node, str) and node.startswith("@"):
            node = self.config.get(node[1:], {})
        items = node.get("transforms", []) if isinstance(node, dict) else node
        if isinstance(items, str) and items.startswith("@"):
            items = self.config.get(items[1:], [])
        if not isinstance(items, list) or not all(isinstance(t, dict) and "_target_" in t for t in items):
            raise self.fail(f"inference.json {section!r} is not a list of transforms with _target_")
        return items


def bundle_entry(entry: ModelEntryConfig) -> ModelEntryConfig:
    """The entry with the bundle's model file, labels, preprocessing and volumetric plan filled in."""
    assert entry.bundle is not None
    root = entry.bundle.expanduser()
    if not root.is_dir():
        raise BundleError(f"models entry {entry.name!r}: bundle {root} is not a folder")
    reader = _Reader(entry, root)
    model = next((root / "models" / name for name in ("model.ts", "model.onnx")
                  if (root / "models" / name).is_file()), None)
    if model is None:
        raise reader.fail("has neither models/model.ts nor models/model.onnx")
    pre = dict(entry.preprocessing.model_dump(exclude_unset=True))
    volumetric: dict[str, Any] = dict(entry.volumetric.model_dump(exclude_unset=True)) if entry.volumetric else {}
    for transform in reader.transforms("preprocessing"):
        name = _name(str(transform["_target_"]))
        if name in ENGINE_STEPS:
            continue
        if name not in MAPPED:
            raise reader.fail(f"preprocessing transform {transform['_target_']!r} is not one ScanStream maps "
                              f"(allowed: {', '.join(sorted(ENGINE_STEPS | MAPPED))})")
        if name == "Orientation":
            axcodes = reader.value(name, transform, "axcodes")
            if axcodes not in ("RAS", "LPS"):
                raise reader.fail(f"Orientation.axcodes {axcodes!r}: RAS or LPS")
            volumetric["orientation"] = axcodes
        elif name == "Spacing":
            pixdim = reader.value(name, transform, "pixdim")
            if not (isinstance(pixdim, list) and len(pixdim) == 3):
                raise reader.fail(f"Spacing.pixdim {pixdim!r}: three millimetre values")
            volumetric["spacing"] = pixdim
        elif name == "ScaleIntensityRange":
            low, high = reader.value(name, transform, "a_min"), reader.value(name, transform, "a_max")
            b_min, b_max = reader.value(name, transform, "b_min", 0.0), reader.value(name, transform, "b_max", 1.0)
            if (b_min, b_max) != (0, 1) or not reader.value(name, transform, "clip", False):
                raise reader.fail("ScaleIntensityRange: ScanStream maps b_min 0, b_max 1, clip true")
            pre.update(window=[low, high], normalise="window")
        else:  # NormalizeIntensity with fixed statistics
            mean, std = reader.value(name, transform, "subtrahend"), reader.value(name, transform, "divisor")
            if not isinstance(mean, (int, float)) or not isinstance(std, (int, float)):
                raise reader.fail("NormalizeIntensity: ScanStream maps fixed subtrahend and divisor (numbers); "
                                  "statistics of each volume are not supported")
            pre.update(window=[-1e9, 1e9], normalise="zscore", mean=mean, std=std)
    inferer = reader.config.get("inferer", {})
    inferer_name = _name(str(inferer.get("_target_", ""))) if isinstance(inferer, dict) else ""
    if inferer_name not in INFERERS:
        raise reader.fail(f"inferer {inferer_name or inferer!r} is not one ScanStream maps (allowed: "
                          f"{', '.join(sorted(INFERERS))})")
    volumetric["background_channel"] = True  # channel 0 is the background, also with one label
    volumetric["roi_size"] = reader.value("SlidingWindowInferer", inferer, "roi_size")
    volumetric["overlap"] = reader.value("SlidingWindowInferer", inferer, "overlap", 0.25)
    volumetric["blend"] = reader.value("SlidingWindowInferer", inferer, "mode", "constant")
    volumetric["sigma_scale"] = reader.value("SlidingWindowInferer", inferer, "sigma_scale", 0.125)
    max_batch = reader.value("SlidingWindowInferer", inferer, "sw_batch_size", 1)
    threshold = entry.threshold
    volumetric["invert"] = "labels"  # no Invert: the labels are taken on the network's grid
    activated = False
    for transform in reader.transforms("postprocessing"):
        name = _name(str(transform["_target_"]))
        if name not in ENGINE_STEPS:
            raise reader.fail(f"postprocessing transform {transform['_target_']!r} is not one ScanStream maps "
                              f"(allowed: {', '.join(sorted(ENGINE_STEPS))})")
        if name == "Activations":
            activated = True
        if name == "Invert":  # resamples what came before it: probabilities after Activations, else logits
            volumetric["invert"] = "probabilities" if activated else "logits"
        if name == "AsDiscrete" and reader.value(name, transform, "threshold") is not None:
            threshold = float(reader.value(name, transform, "threshold"))
    labels = _labels(reader)
    if "labels" in entry.model_fields_set and list(entry.labels) != labels:
        raise reader.fail(f"labels {list(entry.labels)} do not match the bundle's channel_def {labels}")
    data = entry.model_dump(exclude={"bundle", "file", "labels", "preprocessing", "volumetric", "output",
                                     "max_batch", "threshold"})
    data.update(file=str(model), output="segmentation", labels=labels, preprocessing=pre, volumetric=volumetric,
                max_batch=entry.max_batch if "max_batch" in entry.model_fields_set else max(1, int(max_batch)),
                threshold=threshold,
                description=entry.description or str(reader.metadata.get("name", "")) or f"MONAI Bundle {root.name}")
    try:
        return ModelEntryConfig.model_validate(data)
    except ValueError as error:
        raise reader.fail(f"does not make a valid entry: {error}") from None


def _labels(reader: _Reader) -> list[str]:
    """Label names from the first output's ``channel_def``, background (channel 0) left out."""
    outputs = reader.metadata.get("network_data_format", {}).get("outputs", {})
    if not isinstance(outputs, dict) or not outputs:
        raise reader.fail("metadata.json has no network_data_format.outputs")
    output = next(iter(outputs.values()))
    if output.get("format", "segmentation") != "segmentation":
        raise reader.fail(f"output format {output.get('format')!r}: ScanStream maps segmentation bundles")
    channels = {int(k): str(v) for k, v in (output.get("channel_def") or {}).items()}
    count = int(output.get("num_channels", len(channels)))
    if sorted(channels) != list(range(count)) or count < 2:
        raise reader.fail(f"output channel_def {channels} does not name channels 0..{count - 1} "
                          f"(0 the background, at least one label)")
    return [channels[i] for i in range(1, count)]
