"""VGG-11 with BatchNorm (Simonyan & Zisserman 2015), sized for 28x28 / 32x32 inputs."""

from __future__ import annotations

import torch.nn as nn

from robustpath.models.common import conv_bn_relu, scaled
from robustpath.models.registry import register

VGG11 = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]


@register("vgg11")
def vgg11(channels: int, size: int, num_classes: int, width: float) -> nn.Module:
    """VGG-11-BN: 8 conv-BN-ReLU layers (64w..512w), max pools while the feature map is
    larger than 1x1 (28x28 inputs skip the last one), global average pool, linear."""
    layers, cin, spatial = [], channels, size
    for v in VGG11:
        if v == "M":
            if spatial >= 2:
                layers.append(nn.MaxPool2d(2))
                spatial //= 2
        else:
            cout = scaled(v, width)
            layers.append(conv_bn_relu(cin, cout))
            cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
    return nn.Sequential(*layers)
