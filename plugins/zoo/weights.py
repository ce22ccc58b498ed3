"""Weights of the zoo networks: a deterministic random initialisation, or a state dict from a file.

The zoo's networks are throughput workloads, so by default their weights are
drawn from a fixed :class:`torch.Generator` seed: every process, every run and
every machine builds bit-identical networks (the same ONNX export, the same
cache fingerprint) without touching torch's global random state. Networks are
built on the ``meta`` device first, so the large ones (VGG-16's 138 M
parameters) are allocated and filled once instead of being initialised twice.

Initialisation (He et al. 2015 for convolutions, fan-in, so activations keep
their scale through ReLU layers; normal(0, 0.01) for linear layers as
torchvision's VGG; normalisation layers as identity with zero-mean, unit-variance
running statistics). Residual networks scale the last normalisation of each
residual branch by :data:`RESIDUAL_BRANCH_GAIN` so an untrained ResNet's
activations stay O(1) instead of doubling in variance at every block, which
keeps ONNX parity checks meaningful; compute is unaffected.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

SEED = 20261128
RESIDUAL_BRANCH_GAIN = 0.2
LINEAR_STD = 0.01
_CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d,
          nn.GroupNorm, nn.LayerNorm)


class WeightsError(ValueError):
    """A weights file is missing, unreadable or does not fit the network; the message names both."""


@dataclass(frozen=True)
class WeightsSource:
    """Where a zoo model's weights come from: ``path`` is None for the deterministic random initialisation."""

    path: Path | None = None
    sha256: str = ""

    @property
    def untrained(self) -> bool:
        """True when the network gets the random initialisation (no weights file)."""
        return self.path is None

    @classmethod
    def from_option(cls, value: str | None) -> "WeightsSource":
        """The source named by a ``zoo.weights.<model>`` option (None or "" for random weights)."""
        if not value:
            return cls()
        path = Path(value).expanduser()
        if not path.is_file():
            raise WeightsError(f"weights file {path} does not exist")
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return cls(path, digest.hexdigest())


def _fill(module: nn.Module, generator: torch.Generator) -> None:
    """Initialise the parameters and buffers ``module`` owns directly (not its children's)."""
    custom = getattr(module, "zoo_initialise", None)
    if callable(custom):
        custom(generator)
        return
    with torch.no_grad():
        if isinstance(module, _CONVOLUTIONS):
            # He normal with the fan-in of the operation: in_channels / groups * kernel volume. A transposed
            # convolution stores its weight as (in, out / groups, k...), so its fan-in is read from dim 0.
            fan_in = module.weight[0].numel() if not isinstance(module, nn.modules.conv._ConvTransposeNd) else (
                module.weight.shape[0] // module.groups * module.weight[0, 0].numel())
            module.weight.normal_(0.0, (2.0 / fan_in) ** 0.5, generator=generator)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, nn.Linear):
            module.weight.normal_(0.0, LINEAR_STD, generator=generator)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, _NORMS):
            if getattr(module, "weight", None) is not None:
                module.weight.fill_(getattr(module, "zoo_gain", 1.0))
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()
            if getattr(module, "running_mean", None) is not None:
                module.running_mean.zero_()
                module.running_var.fill_(1.0)
            if getattr(module, "num_batches_tracked", None) is not None:
                module.num_batches_tracked.zero_()
        elif any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False)):
            raise TypeError(f"{type(module).__name__} owns tensors the zoo initialiser does not know how to fill; "
                            "give it a zoo_initialise(generator) method")


def initialise(network: nn.Module, seed: int = SEED) -> nn.Module:
    """Fill every parameter and buffer of ``network`` deterministically from ``seed`` (modules in definition order)."""
    generator = torch.Generator().manual_seed(seed)
    for module in network.modules():
        _fill(module, generator)
    return network


def build(make: Callable[[], nn.Module], source: WeightsSource, seed: int = SEED) -> nn.Module:
    """Construct ``make()`` on the meta device, allocate it on the CPU and fill it from ``source``, in eval mode.

    A weights file must hold a state dict (tensors only: loaded with
    ``weights_only=True``) whose keys and shapes match the network exactly.
    """
    with torch.device("meta"):
        network = make()
    network = network.to_empty(device="cpu")
    if source.untrained:
        initialise(network, seed)
        return network.eval()
    try:
        state = torch.load(source.path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError) as error:
        raise WeightsError(f"weights file {source.path} is not a loadable state dict: {error}") from None
    if not isinstance(state, dict):
        raise WeightsError(f"weights file {source.path} holds a {type(state).__name__}, expected a state dict")
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise WeightsError(f"weights file {source.path} does not fit {type(network).__name__}: "
                           f"{str(error).splitlines()[0]}") from None
    return network.eval()


def parameter_count(network: nn.Module) -> int:
    """Number of parameters (buffers such as running statistics not counted, as torchvision's figures)."""
    return sum(p.numel() for p in network.parameters())
