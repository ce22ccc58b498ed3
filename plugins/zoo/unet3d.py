"""The MLPerf 3D U-Net (KiTS19 kidney and tumour segmentation), as the MLCommons reference builds it.

Layer for layer the reference implementation (mlcommons/training,
``image_segmentation/pytorch/model/unet3d.py`` and ``layers.py``; MLPerf
Inference's ``3d-unet-kits19`` runs the same network) with its defaults
(instance norm, ReLU, 1 input channel, 3 classes): an input block of two
3x3x3 convolutions at 32 channels; four downsampling blocks (a stride-2 3x3x3
convolution then a 3x3x3 convolution) to 64, 128, 256, 320 channels; a
stride-2 bottleneck block at 320; five upsampling blocks (a 2x2x2 stride-2
transposed convolution with bias, concatenation with the skip, two 3x3x3
convolutions) back to 32 channels; a 1x1x1 output convolution to 3 logits.
Convolutions followed by instance norm have no bias. 31,190,243 parameters
(see ``tests/unit/test_zoo.py`` for the layer-by-layer sum). Five stride-2
stages: patch sides must be multiples of :data:`SHAPE_MULTIPLE` (MLPerf uses
128x128x128).
"""

from __future__ import annotations

import torch
from torch import nn

FILTERS = (32, 64, 128, 256, 320)
SHAPE_MULTIPLE = 32
CLASSES = 3  # background, kidney, kidney tumour


def _conv_block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    """3x3x3 convolution (no bias), affine instance norm, ReLU."""
    return nn.Sequential(nn.Conv3d(cin, cout, 3, stride=stride, padding=1, bias=False),
                         nn.InstanceNorm3d(cout, affine=True), nn.ReLU(inplace=True))


class DownsampleBlock(nn.Module):
    """Stride-2 convolution block then a stride-1 one."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = _conv_block(cin, cout, stride=2)
        self.conv2 = _conv_block(cout, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))


class UpsampleBlock(nn.Module):
    """2x2x2 transposed convolution (with bias), concatenation with the skip, two convolution blocks."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.upsample_conv = nn.ConvTranspose3d(cin, cout, 2, stride=2)
        self.conv1 = _conv_block(2 * cout, cout)
        self.conv2 = _conv_block(cout, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(torch.cat((self.upsample_conv(x), skip), dim=1)))


class UNet3D(nn.Module):
    """(N, 1, D, H, W) normalised CT patches (sides multiples of 32) to (N, 3, D, H, W) logits."""

    def __init__(self, in_channels: int = 1, classes: int = CLASSES) -> None:
        super().__init__()
        widths = FILTERS
        self.input_block = nn.Sequential(_conv_block(in_channels, widths[0]), _conv_block(widths[0], widths[0]))
        self.downsample = nn.ModuleList([DownsampleBlock(i, o) for i, o in zip(widths[:-1], widths[1:])])
        self.bottleneck = DownsampleBlock(widths[-1], widths[-1])
        self.upsample = nn.ModuleList([UpsampleBlock(widths[-1], widths[-1])]
                                      + [UpsampleBlock(i, o) for i, o in zip(reversed(widths[1:]),
                                                                             reversed(widths[:-1]))])
        self.output = nn.Conv3d(widths[0], classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_block(x)
        skips = [x]
        for block in self.downsample:
            x = block(x)
            skips.append(x)
        x = self.bottleneck(x)
        for block, skip in zip(self.upsample, reversed(skips)):
            x = block(x, skip)
        return self.output(x)
