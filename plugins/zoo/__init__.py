"""Plugin: canonical architectures as benchmark workloads (not built in; load with ``plugins.modules``).

ResNet-18/50, Inception-v3, VGG-16, SSD300, the MLPerf 3D U-Net and the
pix2pix generator, written here in plain PyTorch (no torchvision) with
deterministic random weights unless ``zoo.weights.<model>`` names a state-dict
file. Every output is labelled as coming from an untrained benchmark model
(:mod:`plugins.zoo.labels`). Enable in the configuration::

    [plugins]
    modules = ["plugins.zoo"]
    options = { "zoo.input_size" = 224, "zoo.unet3d.patch" = 128 }

    [routing]
    models = ["zoo-resnet50"]

``scanstream bench --model zoo-resnet50`` does the same. Every zoo model takes
any CT series, so ``routing.models`` picks which one runs; while it names any
model, only the zoo models it names are registered (so a worker does not
build, export and time networks that can never receive a job). The settings
are listed in :mod:`plugins.zoo.options`; ``python -m benchmarks.zoo`` measures
them all on this machine.
"""

from __future__ import annotations

from engine import hookimpl
from engine.api import ModelRegistry
from engine.config import EngineConfig
from engine.logs import get_logger
from plugins.zoo.catalogue import zoo_specs
from plugins.zoo.options import ZooOptions

log = get_logger(__name__)


@hookimpl
def scanstream_register_models(registry: ModelRegistry, config: EngineConfig) -> None:
    """Register the zoo models ``routing.models`` names (every one when it names none)."""
    options = ZooOptions.from_mapping(config.plugins.options)
    named = set(config.routing.models)
    specs = zoo_specs(options, named or None)
    for spec in specs:
        registry.add(spec)
    log.info("zoo.registered", models=[spec.name for spec in specs], routing_filter=bool(named))
