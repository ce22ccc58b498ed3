"""A small 2D U-Net: three resolution levels, double 3x3 convolutions with batch norm."""

from __future__ import annotations

import torch
from torch import nn

DEPTH_MULTIPLE = 8  # input height and width must be multiples of this (three 2x poolings)


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class UNet2D(nn.Module):
    """(N, 1, H, W) image in, (N, 1, H, W) nodule logits out."""

    def __init__(self, base: int = 8) -> None:
        super().__init__()
        widths = [base, base * 2, base * 4, base * 8]
        self.down = nn.ModuleList([_double_conv(1, widths[0])] +
                                  [_double_conv(widths[i], widths[i + 1]) for i in range(3)])
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList([nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in reversed(range(3))])
        self.merge = nn.ModuleList([_double_conv(widths[i] * 2, widths[i]) for i in reversed(range(3))])
        self.head = nn.Conv2d(widths[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for level, block in enumerate(self.down):
            x = block(x)
            if level < 3:
                skips.append(x)
                x = self.pool(x)
        for up, merge, skip in zip(self.up, self.merge, reversed(skips)):
            x = merge(torch.cat([up(x), skip], dim=1))
        return self.head(x)
