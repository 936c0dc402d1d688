"""``vit-tiny``: a Vision Transformer (Dosovitskiy et al. 2021) small enough to PGD-train
on CPU, for studying the robust barrier of attention models.

Patches of ``size // 4`` pixels (7x7 on 28x28 Fashion-MNIST, 8x8 on 32x32 CIFAR: 16
patches) embedded by a strided convolution, a class token and learned position
embeddings, ``depth = 4`` pre-LayerNorm encoder blocks (``nn.MultiheadAttention`` with 4
heads, batch first; MLP of ``2 * dim`` GELU units), a final LayerNorm and a linear head
on the class token. ``dim = 4 * round(16 * width)`` (64 at width 1: about 0.14 M
parameters, ~2.5 M multiply-adds per image). No dropout. Traceable by ``torch.fx``;
:mod:`robustpath.align` permutes its residual stream, MLP units and attention heads.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from robustpath.models.common import scaled
from robustpath.models.registry import register

HEADS, DEPTH = 4, 4


class Block(nn.Module):
    """``x + attn(ln1(x))`` then ``x + mlp(ln2(x))``."""

    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class ViT(nn.Module):
    """Input ``[N, C, S, S]`` -> logits ``[N, classes]``."""

    def __init__(self, channels: int, size: int, num_classes: int, dim: int, heads: int,
                 depth: int, hidden: int):
        super().__init__()
        patch = size // 4
        tokens = (size // patch) ** 2
        self.embed = nn.Conv2d(channels, dim, patch, stride=patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*(Block(dim, heads, hidden) for _ in range(depth)))
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x).flatten(2).transpose(1, 2)  # [N, tokens, dim]
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        x = self.ln(self.blocks(x))
        return self.head(x[:, 0])


@register("vit-tiny")
def vit_tiny(channels: int, size: int, num_classes: int, width: float) -> nn.Module:
    """See the module docstring: 4 blocks, 4 heads of ``round(16 * width)`` features."""
    dim = HEADS * scaled(16, width)
    return ViT(channels, size, num_classes, dim, HEADS, DEPTH, 2 * dim)
