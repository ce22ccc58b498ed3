"""The zoo's models as :class:`~engine.api.ModelSpec` objects, built from :class:`~plugins.zoo.options.ZooOptions`.

Every model takes any CT series (one slice or more), so the benchmark's phantom
studies route to whichever zoo model ``routing.models`` names; none is meant
to be enabled for routing by default.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

from torch import nn

from engine.api import ModelHandler, ModelSpec, PluginError, SeriesInfo
from plugins.zoo import dcgan, inception, resnet, ssd, unet3d, vgg
from plugins.zoo.handlers import ClassifierHandler, DetectorHandler, GeneratorHandler
from plugins.zoo.labels import Provenance
from plugins.zoo.options import ZooOptions
from plugins.zoo.sliding_window import SlidingWindowHandler
from plugins.zoo.weights import WeightsError, WeightsSource, build

CLASSIFIER_OUTPUTS = ("result_json", "sr")
DETECTOR_OUTPUTS = ("result_json", "sr")
SEGMENTATION_OUTPUTS = ("result_json", "seg")
RECONSTRUCTION_OUTPUTS = ("result_json", "derived_series")


def takes_series(series: SeriesInfo) -> bool:
    """Any CT series with at least one slice (instances, or frames of an enhanced CT)."""
    return series.modality.upper() == "CT" and max(series.instance_count, series.frame_count) >= 1


@dataclass(frozen=True)
class ZooModel:
    """One zoo entry: how to build its network and handler at the configured sizes."""

    name: str
    architecture: str
    make_network: Callable[[], nn.Module]
    make_handler: Callable[[Provenance], ModelHandler]
    input_shape: tuple[int, ...]
    outputs: tuple[str, ...]
    max_batch: int

    def spec(self, options: ZooOptions) -> ModelSpec:
        """The registered spec: network loader (random or file weights), handler, labels."""
        try:
            source = WeightsSource.from_option(options.weights.get(self.name))
        except WeightsError as error:
            raise PluginError(f"model {self.name!r}: {error}") from None
        provenance = Provenance(self.name, self.architecture, source)
        shape = "x".join(map(str, self.input_shape))
        return ModelSpec(
            name=self.name,
            version=provenance.version,
            description=provenance.description(f"{self.architecture}, input {shape}"),
            selector=takes_series,
            load_network=partial(_load, self.name, self.make_network, source),
            handler=self.make_handler(provenance),
            outputs=self.outputs,
            max_batch=options.batch_limit(self.max_batch),
            input_shape=self.input_shape,
        )


def _load(name: str, make: Callable[[], nn.Module], source: WeightsSource) -> nn.Module:
    try:
        return build(make, source)
    except WeightsError as error:
        raise PluginError(f"model {name!r}: {error}") from None


def catalogue(options: ZooOptions) -> list[ZooModel]:
    """Every zoo model at the sizes ``options`` ask for."""
    size, channels, classes = options.input_size, options.channels, options.num_classes

    def classifier(provenance: Provenance) -> ClassifierHandler:
        return ClassifierHandler(provenance, size, channels, options.top_k)

    def detector(provenance: Provenance) -> DetectorHandler:
        return DetectorHandler(provenance, options.ssd_input_size, channels, ssd.default_boxes(options.ssd_input_size),
                               score_threshold=options.ssd_score_threshold, iou_threshold=options.ssd_iou_threshold,
                               max_findings=options.ssd_max_findings)

    def segmenter(provenance: Provenance) -> SlidingWindowHandler:
        return SlidingWindowHandler(provenance, options.unet3d_patch, options.unet3d_overlap, options.unet3d_blend)

    def generator(provenance: Provenance) -> GeneratorHandler:
        return GeneratorHandler(provenance, options.dcgan_input_size)

    image = (channels, size, size)
    return [
        ZooModel("zoo-resnet18", "ResNet-18", partial(resnet.resnet18, channels, classes), classifier, image,
                 CLASSIFIER_OUTPUTS, 32),
        ZooModel("zoo-resnet50", "ResNet-50", partial(resnet.resnet50, channels, classes), classifier, image,
                 CLASSIFIER_OUTPUTS, 32),
        ZooModel("zoo-inception-v3", "Inception-v3", partial(inception.InceptionV3, channels, classes), classifier,
                 image, CLASSIFIER_OUTPUTS, 32),
        ZooModel("zoo-vgg16", "VGG-16", partial(vgg.VGG16, channels, classes), classifier, image,
                 CLASSIFIER_OUTPUTS, 16),
        ZooModel("zoo-ssd", "SSD300 (VGG-16 backbone)", partial(ssd.SSD300, channels, options.ssd_num_classes),
                 detector, (channels, options.ssd_input_size, options.ssd_input_size), DETECTOR_OUTPUTS, 16),
        ZooModel("zoo-unet3d", "MLPerf 3D U-Net (KiTS19)", unet3d.UNet3D, segmenter, (1, *options.unet3d_patch),
                 SEGMENTATION_OUTPUTS, 2),
        ZooModel("zoo-dcgan", "pix2pix U-Net generator (unet_256)", dcgan.Pix2PixGenerator, generator,
                 (1, options.dcgan_input_size, options.dcgan_input_size), RECONSTRUCTION_OUTPUTS, 16),
    ]


def zoo_specs(options: ZooOptions, names: set[str] | None = None) -> list[ModelSpec]:
    """The specs of the zoo models named in ``names`` (all when None); unknown weights keys raise PluginError."""
    models = catalogue(options)
    known = {model.name for model in models}
    unknown = sorted(set(options.weights) - known)
    if unknown:
        raise PluginError(f"plugins.options zoo.weights.{unknown[0]}: no zoo model is called {unknown[0]!r}; "
                          f"zoo models: {', '.join(sorted(known))}")
    return [model.spec(options) for model in models if names is None or model.name in names]
