"""A small convolutional denoising autoencoder that predicts the noise and subtracts it (residual learning).

Encoder: a 3x3 convolution block at full resolution, then three levels that
each halve the resolution with a stride-2 convolution; decoder: transposed
convolutions back up, each merged with the encoder features of its resolution
(U-Net style skips, so edges and small nodules survive). The head estimates
the noise of the middle input channel, and the output is that channel minus
the estimate: an identity-like start, and the network only has to learn the
noise. No batch norm: denoising needs the absolute intensity scale kept.
About 0.48 M parameters (1.9 MB of fp32 weights) at 16 base channels.
"""

from __future__ import annotations

import torch
from torch import nn

LEVELS = 4  # full resolution and three stride-2 downsamplings
DEPTH_MULTIPLE = 2 ** (LEVELS - 1)  # input height and width must be multiples of this
BASE_CHANNELS = 16
IN_CHANNELS = 3  # a slice and its two neighbours (2.5D); the middle one is denoised


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    """Two 3x3 convolutions with ReLU; the first may downsample with ``stride``."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU(inplace=True),
    )


class DenoiseNet(nn.Module):
    """(N, C, H, W) scaled HU in, (N, 1, H, W) denoised middle slice out, in the same scale.

    C is :data:`IN_CHANNELS`; H and W are multiples of :data:`DEPTH_MULTIPLE`.
    """

    def __init__(self, base: int = BASE_CHANNELS, in_channels: int = IN_CHANNELS) -> None:
        super().__init__()
        widths = [base * 2 ** level for level in range(LEVELS)]
        self.in_channels = in_channels
        self.encode = nn.ModuleList([_block(in_channels, widths[0])]
                                    + [_block(widths[i], widths[i + 1], stride=2) for i in range(LEVELS - 1)])
        self.up = nn.ModuleList([nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2)
                                 for i in reversed(range(LEVELS - 1))])
        self.merge = nn.ModuleList([_block(widths[i] * 2, widths[i]) for i in reversed(range(LEVELS - 1))])
        self.noise = nn.Conv2d(widths[0], 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] % DEPTH_MULTIPLE or x.shape[-1] % DEPTH_MULTIPLE:
            raise ValueError(f"input height and width must be multiples of {DEPTH_MULTIPLE}, got {tuple(x.shape)}")
        middle = x[:, self.in_channels // 2:self.in_channels // 2 + 1]
        features, skips = x, []
        for block in self.encode:
            features = block(features)
            skips.append(features)
        skips.pop()  # the deepest level is the decoder's start, not a skip
        for up, merge, skip in zip(self.up, self.merge, reversed(skips)):
            features = merge(torch.cat([up(features), skip], dim=1))
        return middle - self.noise(features)
