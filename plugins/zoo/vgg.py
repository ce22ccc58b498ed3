"""VGG-16 (Simonyan and Zisserman 2014, configuration "D"), as torchvision builds it.

Thirteen 3x3 convolutions with bias and ReLU in five stages separated by 2x2
max-pooling, adaptive average pooling to 7x7 and three fully connected layers
(4096, 4096, classes) with dropout: 138,357,544 parameters at 3 channels and
1000 classes. Any input of at least 32x32 works. The convolution stages are
shared with the SSD detector's backbone (:mod:`plugins.zoo.ssd`).
"""

from __future__ import annotations

import torch
from torch import nn

VGG16_STAGES: tuple[tuple[int, ...], ...] = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


def vgg16_features(in_channels: int = 3) -> nn.Sequential:
    """conv1_1 ... conv5_3 with ReLUs and a max-pool after every stage (torchvision's ``features`` indexing)."""
    layers: list[nn.Module] = []
    cin = in_channels
    for stage in VGG16_STAGES:
        for cout in stage:
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True)]
            cin = cout
        layers.append(nn.MaxPool2d(2, stride=2))
    return nn.Sequential(*layers)


class VGG16(nn.Module):
    """(N, C, H, W) images to (N, classes) logits."""

    def __init__(self, in_channels: int = 3, num_classes: int = 1000, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = vgg16_features(in_channels)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))
