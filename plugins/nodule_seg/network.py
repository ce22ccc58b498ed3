"""A small 2D U-Net: four resolution levels of double 3x3 convolutions with batch norm.

It reads a slice with its two neighbours as input channels (2.5D): on one
slice a vessel's cross-section looks like a small nodule, across three it
is a tube that moves. About 0.48 M parameters at the default 16 base channels
(1.9 MB of fp32 weights): small enough to train on two CPU cores in minutes.
"""

from __future__ import annotations

import torch
from torch import nn

LEVELS = 4
DEPTH_MULTIPLE = 2 ** (LEVELS - 1)  # input height and width must be multiples of this (three 2x poolings)
BASE_CHANNELS = 16
IN_CHANNELS = 3  # a slice and its two neighbours


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    """Two 3x3 conv + batch norm + ReLU blocks at one resolution."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class UNet2D(nn.Module):
    """(N, C, H, W) slices in, (N, 1, H, W) nodule logits of the middle slice out.

    C is :data:`IN_CHANNELS` (the slice and its neighbours); H and W are
    multiples of :data:`DEPTH_MULTIPLE`.
    """

    def __init__(self, base: int = BASE_CHANNELS, in_channels: int = IN_CHANNELS) -> None:
        super().__init__()
        widths = [base * 2 ** level for level in range(LEVELS)]
        self.down = nn.ModuleList([_double_conv(in_channels, widths[0])]
                                  + [_double_conv(widths[i], widths[i + 1]) for i in range(LEVELS - 1)])
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList([nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2)
                                 for i in reversed(range(LEVELS - 1))])
        self.merge = nn.ModuleList([_double_conv(widths[i] * 2, widths[i]) for i in reversed(range(LEVELS - 1))])
        self.head = nn.Conv2d(widths[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] % DEPTH_MULTIPLE or x.shape[-1] % DEPTH_MULTIPLE:
            raise ValueError(f"input height and width must be multiples of {DEPTH_MULTIPLE}, got {tuple(x.shape)}")
        skips = []
        for level, block in enumerate(self.down):
            x = block(x)
            if level < LEVELS - 1:
                skips.append(x)
                x = self.pool(x)
        for up, merge, skip in zip(self.up, self.merge, reversed(skips)):
            x = merge(torch.cat([up(x), skip], dim=1))
        return self.head(x)
