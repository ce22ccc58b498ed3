"""A small ResNet-style image classifier: one "nodule present" logit per image.

A 3x3 stem convolution (stride 2), four stages of one residual basic block
each (two 3x3 convolutions with batch norm; the first stage keeps or halves
the resolution, the others halve it), global average pooling and a linear head.
At the default widths (16, 32, 64, 128) it has about 0.31 M parameters (1.2 MB
of fp32 weights). The CT model reads a slice with its neighbours as channels
(2.5D) at 128 x 128; the radiograph model reads the image and its local
contrast at 256 x 256 and halves in the first stage too, so both see 8 x 8
features before pooling.
"""

from __future__ import annotations

import torch
from torch import nn

WIDTHS = (16, 32, 64, 128)
CT_IN_CHANNELS = 5  # a slice and two neighbours either side (about +-5 mm)
CT_SIZE = 128
DX_IN_CHANNELS = 2  # the radiograph and its local contrast
DX_SIZE = 256


class BasicBlock(nn.Module):
    """Two 3x3 conv + batch norm layers and a shortcut (a strided 1x1 conv + batch norm when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNetClassifier(nn.Module):
    """(N, C, H, W) images in, (N, 1) logits out.

    ``first_stride`` is the first stage's stride (1 keeps the stem's resolution,
    2 halves it for larger inputs); every later stage halves the resolution.
    """

    def __init__(self, in_channels: int, widths: tuple[int, ...] = WIDTHS, first_stride: int = 1) -> None:
        super().__init__()
        if in_channels < 1 or not widths:
            raise ValueError(f"need at least one input channel and one stage, got {in_channels}, {widths}")
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        stages, cin = [], widths[0]
        for index, width in enumerate(widths):
            stages.append(BasicBlock(cin, width, stride=first_stride if index == 0 else 2))
            cin = width
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(cin, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.stages(self.stem(x))
        return self.head(features.mean(dim=(2, 3)))


def ct_network() -> ResNetClassifier:
    """The CT slice classifier: 2.5D input of :data:`CT_IN_CHANNELS` channels at :data:`CT_SIZE`."""
    return ResNetClassifier(CT_IN_CHANNELS, first_stride=1)


def dx_network() -> ResNetClassifier:
    """The radiograph classifier: :data:`DX_IN_CHANNELS` channels at :data:`DX_SIZE`, halving in the first stage too."""
    return ResNetClassifier(DX_IN_CHANNELS, first_stride=2)
