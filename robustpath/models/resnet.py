"""Residual families: CIFAR ResNet-20/32 (He et al. 2016, 3 stages of 16w/32w/64w
channels, projection shortcuts where the shape changes) and PreAct ResNet-18
(He et al. 2016b, the adversarial-training workhorse, 64w..512w)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from robustpath.models.common import scaled
from robustpath.models.registry import register


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN, plus identity or 1x1-conv-BN shortcut, then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for CIFAR: conv 3x3 (16w), 3 stages of n blocks, GAP, linear.

    With n = 5 (``resnet32``) this is Tatro et al.'s ResNet32 layer for layer
    (IBM/NeuronAlignment ``models/resnet.py``: bias-free 3x3 convolutions, 1x1-conv-BN
    projection shortcuts where the shape changes, a linear classifier with bias):
    466,906 parameters for CIFAR-10 and 472,756 for CIFAR-100 at width 1 (their README:
    "0.47M"; counted on their class)."""

    def __init__(self, channels: int, num_classes: int, n: int, width: float):
        super().__init__()
        w = [scaled(16, width), scaled(32, width), scaled(64, width)]
        self.conv1 = nn.Conv2d(channels, w[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(w[0])
        blocks, cin = [], w[0]
        for stage, cout in enumerate(w):
            for i in range(n):
                blocks.append(BasicBlock(cin, cout, 2 if (stage > 0 and i == 0) else 1))
                cin = cout
        self.layers = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, num_classes)
        # Tatro et al.'s ResNet32 (IBM/NeuronAlignment models/resnet.py:152-157):
        # Kaiming-normal (fan_out) convolutions, BatchNorm scale 1 / shift 0
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


@register("resnet20")
def resnet20(channels: int, size: int, num_classes: int, width: float) -> nn.Module:
    return CifarResNet(channels, num_classes, 3, width)


@register("resnet32")
def resnet32(channels: int, size: int, num_classes: int, width: float) -> nn.Module:
    return CifarResNet(channels, num_classes, 5, width)


class PreActBlock(nn.Module):
    """BN-ReLU-conv-BN-ReLU-conv with the shortcut taken after the first BN-ReLU when
    it needs a projection (He et al. 2016b)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        sc = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + sc


class PreActResNet18(nn.Module):
    def __init__(self, channels: int, num_classes: int, width: float):
        super().__init__()
        w = [scaled(c, width) for c in (64, 128, 256, 512)]
        self.conv1 = nn.Conv2d(channels, w[0], 3, 1, 1, bias=False)
        blocks, cin = [], w[0]
        for stage, cout in enumerate(w):
            for i in range(2):
                blocks.append(PreActBlock(cin, cout, 2 if (stage > 0 and i == 0) else 1))
                cin = cout
        self.layers = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(cin)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(self.conv1(x))
        out = F.relu(self.bn(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


@register("preact-resnet18")
def preact_resnet18(channels: int, size: int, num_classes: int, width: float) -> nn.Module:
    return PreActResNet18(channels, num_classes, width)
