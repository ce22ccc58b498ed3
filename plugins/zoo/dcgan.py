"""The pix2pix U-Net generator (Isola et al. 2017, "Image-to-Image Translation with Conditional Adversarial Networks").

A DCGAN-style encoder-decoder used for image-to-image reconstruction (for CT:
a slice in, a restored slice out). Layer for layer ``UnetGenerator`` of the
authors' pytorch-CycleGAN-and-pix2pix code, configuration ``unet_256``: eight
4x4 stride-2 convolutions (64, 128, 256, 512, 512, 512, 512, 512 channels;
LeakyReLU 0.2, batch norm except on the first and the innermost), eight 4x4
stride-2 transposed convolutions back (ReLU, batch norm, dropout 0.5 on the
three innermost 512-channel decoder blocks, as pix2pix trains it; identity at
inference), skip connections concatenating each encoder map to the decoder
map of the same size, and a tanh output in [-1, 1]. Convolutions followed by
batch norm have no bias. 54,413,955 parameters at 3 channels in and out
(pix2pix prints "54.414 M" for ``unet_256`` with batch norm); sides must be
multiples of 256.
"""

from __future__ import annotations

import torch
from torch import nn

DEPTH = 8
SHAPE_MULTIPLE = 2 ** DEPTH
BASE_CHANNELS = 64


class SkipBlock(nn.Module):
    """One U-Net level: down, the inner levels, up; all but the outermost return [skip, up path] concatenated.

    The reference starts an inner level with an in-place LeakyReLU on its input,
    which is also the tensor it concatenates, so its skip connections carry
    LeakyReLU(x), not x. This block computes the same thing without the in-place
    write: the activation is applied once and used for both.
    """

    def __init__(self, outer: int, inner: int, submodule: "SkipBlock | None", *, input_channels: int | None = None,
                 outermost: bool = False, dropout: bool = False) -> None:
        super().__init__()
        self.outermost = outermost
        source = outer if input_channels is None else input_channels
        down_conv = nn.Conv2d(source, inner, 4, stride=2, padding=1, bias=False)
        up_in = inner if submodule is None else inner * 2
        self.activation = None if outermost else nn.LeakyReLU(0.2)
        if outermost:
            layers: list[nn.Module] = [down_conv, submodule, nn.ReLU(),
                                       nn.ConvTranspose2d(up_in, outer, 4, stride=2, padding=1), nn.Tanh()]
        elif submodule is None:  # innermost: no norm on the 1x1 bottleneck
            layers = [down_conv, nn.ReLU(), nn.ConvTranspose2d(up_in, outer, 4, stride=2, padding=1, bias=False),
                      nn.BatchNorm2d(outer)]
        else:
            layers = [down_conv, nn.BatchNorm2d(inner), submodule, nn.ReLU(),
                      nn.ConvTranspose2d(up_in, outer, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(outer)]
            if dropout:
                layers.append(nn.Dropout(0.5))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activation is None:
            return self.model(x)
        activated = self.activation(x)
        return torch.cat([activated, self.model(activated)], 1)


class Pix2PixGenerator(nn.Module):
    """(N, C_in, H, W) images in [-1, 1] (sides multiples of 256) to (N, C_out, H, W) images in [-1, 1]."""

    def __init__(self, in_channels: int = 1, out_channels: int = 1, base: int = BASE_CHANNELS,
                 depth: int = DEPTH) -> None:
        super().__init__()
        if depth < 5:
            raise ValueError(f"the pix2pix U-Net needs at least 5 levels, got {depth}")
        block = SkipBlock(base * 8, base * 8, None)
        for _ in range(depth - 5):
            block = SkipBlock(base * 8, base * 8, block, dropout=True)
        block = SkipBlock(base * 4, base * 8, block)
        block = SkipBlock(base * 2, base * 4, block)
        block = SkipBlock(base, base * 2, block)
        self.model = SkipBlock(out_channels, base, block, input_channels=in_channels, outermost=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)
