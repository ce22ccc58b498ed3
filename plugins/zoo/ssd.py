"""SSD300 with a VGG-16 backbone (Liu et al. 2016, "SSD: Single Shot MultiBox Detector"), as torchvision builds it.

Backbone: VGG-16 conv1_1..conv5_3 (pool3 with ceil mode so 300 -> 38), the
L2-normalised conv4_3 map with a learned per-channel scale (initially 20),
pool5 as 3x3 stride 1, fc6 as a dilated 3x3 convolution (dilation 6) and fc7
as 1x1, then four extra blocks (conv8_2 .. conv11_2). Six feature maps
(38, 19, 10, 5, 3, 1 at 300x300) each get a 3x3 classification and a 3x3 box
regression head with 4, 6, 6, 6, 4, 4 default boxes per location: 8732 anchors.
At 91 classes (COCO with background, torchvision's default) that is
35,641,826 parameters, torchvision's ``ssd300_vgg16`` figure.

The network returns one tensor (N, anchors, 4 + classes): the box regression
(dx, dy, dw, dh) then the class logits, so every backend sees a single output.
Default boxes, decoding, softmax and NMS run in the handler's postprocessing
(:mod:`plugins.zoo.boxes`, :class:`plugins.zoo.handlers.DetectorHandler`).
Inputs from :data:`MIN_INPUT` up work (the last two extra blocks use unpadded
3x3 convolutions, which need a 5x5 and a 3x3 map).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from plugins.zoo.vgg import vgg16_features

REFERENCE_SIZE = 300
MIN_INPUT = 268  # the smallest side whose conv9_2 map is still 5x5, so conv11_2 gets a 3x3 map
SCALES = (0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05)
ASPECT_RATIOS: tuple[tuple[int, ...], ...] = ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,))
STEPS_300 = (8, 16, 32, 64, 100, 300)
HEAD_CHANNELS = (512, 1024, 512, 256, 256, 256)
L2_SCALE = 20.0


def anchors_per_location() -> list[int]:
    """Default boxes per feature-map location: two square boxes plus two per aspect ratio."""
    return [2 + 2 * len(ratios) for ratios in ASPECT_RATIOS]


class VggSsdBackbone(nn.Module):
    """VGG-16 features to the six SSD feature maps."""

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        vgg = vgg16_features(in_channels)
        pools = [i for i, layer in enumerate(vgg) if isinstance(layer, nn.MaxPool2d)]
        vgg[pools[2]].ceil_mode = True  # 75 -> 38 at 300x300, as the paper
        self.features = nn.Sequential(*vgg[:pools[3]])  # up to conv4_3 + ReLU
        self.scale_weight = nn.Parameter(torch.full((512,), L2_SCALE))
        fc = nn.Sequential(
            nn.MaxPool2d(3, stride=1, padding=1),  # pool5 modified
            nn.Conv2d(512, 1024, 3, padding=6, dilation=6), nn.ReLU(inplace=True),  # fc6, atrous
            nn.Conv2d(1024, 1024, 1), nn.ReLU(inplace=True),  # fc7
        )

        def extra(cin: int, mid: int, cout: int, stride: int, padding: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, mid, 1), nn.ReLU(inplace=True),
                                 nn.Conv2d(mid, cout, 3, stride=stride, padding=padding), nn.ReLU(inplace=True))

        self.extra = nn.ModuleList([
            nn.Sequential(*vgg[pools[3]:-1], fc),  # pool4, conv5_1..conv5_3, pool5, fc6, fc7
            extra(1024, 256, 512, 2, 1),  # conv8_2
            extra(512, 128, 256, 2, 1),  # conv9_2
            extra(256, 128, 256, 1, 0),  # conv10_2
            extra(256, 128, 256, 1, 0),  # conv11_2
        ])

    def zoo_initialise(self, generator: torch.Generator) -> None:
        """The L2-normalisation scale starts at 20 (the paper's value); children are filled by the zoo initialiser."""
        with torch.no_grad():
            self.scale_weight.fill_(L2_SCALE)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.features(x)
        maps = [self.scale_weight.view(1, -1, 1, 1) * F.normalize(x)]
        for block in self.extra:
            x = block(x)
            maps.append(x)
        return maps


class SSD300(nn.Module):
    """(N, C, H, W) images to (N, anchors, 4 + classes): box regression then class logits per default box."""

    def __init__(self, in_channels: int = 3, num_classes: int = 91) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.backbone = VggSsdBackbone(in_channels)
        counts = anchors_per_location()
        self.classification = nn.ModuleList([nn.Conv2d(c, a * num_classes, 3, padding=1)
                                             for c, a in zip(HEAD_CHANNELS, counts)])
        self.regression = nn.ModuleList([nn.Conv2d(c, a * 4, 3, padding=1) for c, a in zip(HEAD_CHANNELS, counts)])

    @staticmethod
    def _flatten(output: torch.Tensor, width: int) -> torch.Tensor:
        """(N, A * K, H, W) to (N, H * W * A, K): locations row-major, then anchors (the default-box order)."""
        n, _, h, w = output.shape
        return output.view(n, -1, width, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.backbone(x)
        boxes = torch.cat([self._flatten(head(m), 4) for head, m in zip(self.regression, maps)], 1)
        logits = torch.cat([self._flatten(head(m), self.num_classes) for head, m in zip(self.classification, maps)], 1)
        return torch.cat([boxes, logits], 2)


def feature_map_sizes(size: int) -> list[int]:
    """Side of each of the six feature maps for a ``size`` x ``size`` input (38, 19, 10, 5, 3, 1 at 300)."""
    if size < MIN_INPUT:
        raise ValueError(f"SSD300 needs inputs of at least {MIN_INPUT}x{MIN_INPUT}, got {size}")
    side = size
    for _ in range(2):
        side //= 2  # pool1, pool2
    side = math.ceil(side / 2)  # pool3, ceil mode
    sides = [side, side // 2]  # conv4_3, fc7 (pool4)
    sides += [(sides[-1] + 1) // 2]  # conv8_2: 3x3 stride 2 pad 1
    sides += [(sides[-1] + 1) // 2]  # conv9_2
    sides += [sides[-1] - 2, sides[-1] - 4]  # conv10_2, conv11_2: unpadded 3x3
    return sides


def default_boxes(size: int) -> torch.Tensor:
    """(anchors, 4) default boxes (cx, cy, w, h) in units of the image side, in the network's output order.

    As torchvision's ``DefaultBoxGenerator`` for SSD300: scales 0.07 .. 1.05, an
    extra square box of scale sqrt(s_k s_k+1), widths and heights clipped to 1,
    centres at (j + 0.5) * step / size with the SSD300 steps scaled to ``size``.
    """
    rows = []
    for k, side in enumerate(feature_map_sizes(size)):
        s_k, s_next = SCALES[k], SCALES[k + 1]
        shapes = [(s_k, s_k), (math.sqrt(s_k * s_next),) * 2]
        for ratio in ASPECT_RATIOS[k]:
            root = math.sqrt(ratio)
            shapes += [(s_k * root, s_k / root), (s_k / root, s_k * root)]
        wh = torch.tensor(shapes, dtype=torch.float32).clamp(0.0, 1.0)
        step = STEPS_300[k] * size / REFERENCE_SIZE
        centres = (torch.arange(side, dtype=torch.float32) + 0.5) * step / size
        cy, cx = torch.meshgrid(centres, centres, indexing="ij")
        xy = torch.stack([cx, cy], -1).reshape(-1, 1, 2).expand(-1, len(shapes), 2)
        rows.append(torch.cat([xy, wh.expand(side * side, -1, -1)], -1).reshape(-1, 4))
    return torch.cat(rows)
