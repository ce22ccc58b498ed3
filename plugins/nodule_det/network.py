"""A small single-shot detector (SSD-style): three conv stages and anchor heads on two feature maps.

Input is a slice with its two neighbours as channels (2.5D, like nodule-seg):
on one slice a vessel's cross-section looks like a small nodule, across three
it is a tube that moves. Heads sit on the stride-4 map (small anchors, with
the stride-8 features added back through a learned upsampling) and on the
stride-8 map (larger anchors). Each anchor gets a nodule logit and four SSD
box offsets (:func:`plugins.nodule_det.boxes.encode`). About 0.1 M parameters.

The output is one tensor (N, anchors, 1 + 4), anchors in the order of
:func:`plugins.nodule_det.boxes.grid_anchors` for the input's height and
width, so the network exports to ONNX with dynamic batch and image size.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from plugins.nodule_det.boxes import AnchorLevel

IN_CHANNELS = 3  # a slice and its two neighbours
BASE_CHANNELS = 16
LEVELS = (AnchorLevel(stride=4, sizes=(4.0, 7.0)), AnchorLevel(stride=8, sizes=(10.0, 15.0)))
SHAPE_MULTIPLE = 8  # the deepest stride: input height and width must be multiples of it
PRIOR_PROBABILITY = 0.01  # initial nodule probability of every anchor (RetinaNet's prior: stable early training)


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    """3x3 conv + batch norm + ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class _Head(nn.Module):
    """Per-anchor outputs of one feature map: (N, C, H, W) -> (N, H * W * anchors, 5)."""

    def __init__(self, channels: int, anchors: int) -> None:
        super().__init__()
        self.anchors = anchors
        self.body = _conv(channels, channels)
        self.out = nn.Conv2d(channels, anchors * 5, 1)
        with torch.no_grad():
            bias = self.out.bias.view(anchors, 5)
            bias.zero_()
            bias[:, 0] = -math.log((1 - PRIOR_PROBABILITY) / PRIOR_PROBABILITY)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.out(self.body(x))
        n, _, h, w = y.shape
        return y.view(n, self.anchors, 5, h, w).permute(0, 3, 4, 1, 2).reshape(n, h * w * self.anchors, 5)


class SingleShotDetector(nn.Module):
    """(N, C, H, W) slices in, (N, anchors, 5) out: [..., 0] nodule logit, [..., 1:] SSD box offsets.

    C is :data:`IN_CHANNELS`; H and W are multiples of :data:`SHAPE_MULTIPLE`.
    """

    def __init__(self, base: int = BASE_CHANNELS, in_channels: int = IN_CHANNELS,
                 levels: tuple[AnchorLevel, ...] = LEVELS) -> None:
        super().__init__()
        if tuple(level.stride for level in levels) != (4, 8):
            raise ValueError(f"the backbone provides strides 4 and 8, got levels {levels}")
        self.levels = levels
        self.stem = nn.Sequential(_conv(in_channels, base, stride=2), _conv(base, base))  # stride 2
        self.stage4 = nn.Sequential(_conv(base, base * 2, stride=2), _conv(base * 2, base * 2))  # stride 4
        self.stage8 = nn.Sequential(_conv(base * 2, base * 4, stride=2), _conv(base * 4, base * 4))  # stride 8
        self.up = nn.ConvTranspose2d(base * 4, base * 2, 2, stride=2)
        self.head4 = _Head(base * 2, len(levels[0].sizes))
        self.head8 = _Head(base * 4, len(levels[1].sizes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] % SHAPE_MULTIPLE or x.shape[-1] % SHAPE_MULTIPLE:
            raise ValueError(f"input height and width must be multiples of {SHAPE_MULTIPLE}, got {tuple(x.shape)}")
        c4 = self.stage4(self.stem(x))
        c8 = self.stage8(c4)
        return torch.cat([self.head4(c4 + self.up(c8)), self.head8(c8)], dim=1)
