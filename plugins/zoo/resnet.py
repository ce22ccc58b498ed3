"""ResNet-18 and ResNet-50 (He et al. 2015, "Deep Residual Learning for Image Recognition").

The layout is torchvision's (ResNet v1.5: a bottleneck block strides in its
3x3 convolution, not its first 1x1), so the parameter counts are the published
ones: 11,689,512 (ResNet-18) and 25,557,032 (ResNet-50) at 3 input channels and
1000 classes. The input channels are a parameter (only the stem convolution
changes); any input of at least 32x32 works (global average pooling).
"""

from __future__ import annotations

import torch
from torch import nn

from plugins.zoo.weights import RESIDUAL_BRANCH_GAIN


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


def _residual_norm(channels: int) -> nn.BatchNorm2d:
    """The last batch norm of a residual branch, marked for the small initial gain (see :mod:`plugins.zoo.weights`)."""
    norm = nn.BatchNorm2d(channels)
    norm.zoo_gain = RESIDUAL_BRANCH_GAIN  # read by plugins.zoo.weights.initialise; a plain attribute
    return norm


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity (or 1x1 projection) shortcut."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv3x3(cin, planes, stride), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = _conv3x3(planes, planes), _residual_norm(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _projection(cin, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + shortcut)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4, with an identity (or projection) shortcut."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv1x1(cin, planes), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = _conv3x3(planes, planes, stride), nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = _conv1x1(planes, planes * self.expansion), _residual_norm(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _projection(cin, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + shortcut)


def _projection(cin: int, cout: int, stride: int) -> nn.Sequential | None:
    """The 1x1 strided projection shortcut where the shape changes, else None (identity)."""
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(_conv1x1(cin, cout, stride), nn.BatchNorm2d(cout))


class ResNet(nn.Module):
    """(N, C, H, W) images to (N, classes) logits."""

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: tuple[int, int, int, int],
                 in_channels: int = 3, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        stages, cin = [], 64
        for index, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers)):
            stride = 1 if index == 0 else 2
            stage = [block(cin, planes, stride)]
            cin = planes * block.expansion
            stage += [block(cin, planes) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512 * block.expansion, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(in_channels: int = 3, num_classes: int = 1000) -> ResNet:
    """ResNet-18: basic blocks [2, 2, 2, 2]."""
    return ResNet(BasicBlock, (2, 2, 2, 2), in_channels, num_classes)


def resnet50(in_channels: int = 3, num_classes: int = 1000) -> ResNet:
    """ResNet-50: bottleneck blocks [3, 4, 6, 3]."""
    return ResNet(Bottleneck, (3, 4, 6, 3), in_channels, num_classes)
