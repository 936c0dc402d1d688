"""Small feed-forward families: ``mlp``, ``cnn-small`` and Tatro et al.'s ``tinyten``."""

from __future__ import annotations

import torch.nn as nn

from robustpath.models.common import conv_bn_relu, scaled
from robustpath.models.registry import register


@register("mlp")
def mlp(channels: int, size: int, num_classes: int, width: float) -> nn.Module:
    """Flatten -> Linear(512w) -> ReLU -> Linear(512w) -> ReLU -> Linear(classes)."""
    h = scaled(512, width)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(channels * size * size, h), nn.ReLU(),
        nn.Linear(h, h), nn.ReLU(),
        nn.Linear(h, num_classes),
    )


@register("cnn-small")
def cnn_small(channels: int, size: int, num_classes: int, width: float) -> nn.Module:
    """CPU-friendly default: two conv-BN-ReLU-maxpool blocks (16w, 32w channels, 3x3),
    then Linear(128w)-ReLU and the classifier. About 0.3 M parameters at width 1 on
    28x28 inputs, ~1.2 M multiply-adds per image."""
    c1, c2, h = scaled(16, width), scaled(32, width), scaled(128, width)
    spatial = size // 4
    return nn.Sequential(
        conv_bn_relu(channels, c1), nn.MaxPool2d(2),
        conv_bn_relu(c1, c2), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(c2 * spatial * spatial, h), nn.ReLU(),
        nn.Linear(h, num_classes),
    )


@register("tinyten")
def tinyten(channels: int, size: int, num_classes: int, width: float) -> nn.Module:
    """TinyTen as in Tatro et al. 2020's code (IBM/NeuronAlignment ``models/tiny_ten.py``,
    after Kornblith et al. 2019): 8 conv(bias)-BN-ReLU blocks of widths 16, 16,
    32 (stride 2), 32, 32, 64 (stride 2) with 3x3 kernels and padding 1, then 64 (3x3,
    *padding 0*) and 64 (1x1, padding 0), global average pooling and a linear classifier.

    Every convolution has a bias (their ``bias=True`` default), weights are Xavier-normal
    and biases zero at initialisation, BatchNorm scale 1 and shift 0. 86,778 parameters
    for CIFAR-10 and 92,628 for CIFAR-100 at width 1 (their README: "0.09M"; counted on
    their class); spatial size 32 -> 16 -> 8 -> 6.
    """
    plan = [(16, 3, 1, 1), (16, 3, 1, 1), (32, 3, 2, 1), (32, 3, 1, 1), (32, 3, 1, 1),
            (64, 3, 2, 1), (64, 3, 1, 0), (64, 1, 1, 0)]
    layers, cin = [], channels
    for base, k, s, pad in plan:
        cout = scaled(base, width)
        layers.append(nn.Sequential(nn.Conv2d(cin, cout, k, stride=s, padding=pad, bias=True),
                                    nn.BatchNorm2d(cout), nn.ReLU(inplace=False)))
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
    net = nn.Sequential(*layers)
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_normal_(m.weight)
            nn.init.zeros_(m.bias)
    return net
