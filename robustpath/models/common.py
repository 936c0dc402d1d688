"""Layers shared by the model families."""

from __future__ import annotations

import torch
import torch.nn as nn


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; mean/std are buffers of shape ``[1, C, 1, 1]``.

    Keeps the models' inputs in pixel space [0, 1], so one eps means the same thing
    for every model and every point of a path.
    """

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def scaled(base: int, width: float) -> int:
    """A hidden width scaled by the multiplier, at least 1."""
    return max(1, int(round(base * width)))


def conv_bn_relu(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=False),
    )
