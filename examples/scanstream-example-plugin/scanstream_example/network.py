"""The network: one 3x3 convolution with fixed weights, so "bright region" is a smoothed HU threshold.

Input is HU / :data:`HU_SCALE` per slice, (N, 1, H, W); output is a logit per
pixel, (N, 1, H, W): ``GAIN * (mean of the 3x3 neighbourhood - THRESHOLD_HU) / HU_SCALE``,
positive where the neighbourhood averages above the threshold. A real plugin
builds its trained architecture here and loads its weights in ``load_network``.
"""

from __future__ import annotations

import torch
from torch import nn

THRESHOLD_HU = 300.0  # above soft tissue and blood (< 100 HU), below cortical bone (> 700 HU)
HU_SCALE = 1000.0  # the handler feeds HU / HU_SCALE, so values stay near [-1, 3]
GAIN = 40.0  # logit per HU_SCALE above the threshold: 100 HU above it is a probability of 0.98


class BrightSpotNet(nn.Module):
    """Averages each pixel's 3x3 neighbourhood (edges replicated) and subtracts the threshold."""

    def __init__(self, threshold_hu: float = THRESHOLD_HU, gain: float = GAIN) -> None:
        super().__init__()
        self.smooth = nn.Conv2d(1, 1, kernel_size=3, padding=1, padding_mode="replicate")
        with torch.no_grad():
            self.smooth.weight.fill_(gain / 9.0)
            self.smooth.bias.fill_(-gain * threshold_hu / HU_SCALE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.smooth(x)


def load_network() -> BrightSpotNet:
    """The network in eval mode; its weights are set in code, so there is no weights file to load.

    A trained model ships a state dict and loads it without unpickling code::

        network.load_state_dict(torch.load(WEIGHTS, map_location="cpu", weights_only=True))
    """
    return BrightSpotNet().eval()
