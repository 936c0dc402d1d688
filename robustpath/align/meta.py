"""Models on the meta device (structure without weights), as the zoo builds them to
derive a permutation spec without downloading or allocating a checkpoint.

A rule that must *run* a module (the attention rule checks a random head permutation
numerically) gets :func:`materialise`'s CPU copy instead: seeded random parameters
(N(0, 0.02): the rule checks that the module's function is invariant, whatever its
weights) and the model's real buffers where the caller gave them (buffers can hold
indices or masks that the forward reads).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def is_meta(module: nn.Module) -> bool:
    """Whether any parameter or buffer of ``module`` is on the meta device."""
    return any(t.is_meta for t in (*module.parameters(), *module.buffers()))


def materialise(module: nn.Module, buffers: dict[str, torch.Tensor] | None = None,
                seed: int = 0, copy_first: bool = True) -> nn.Module:
    """``module`` (a copy unless ``copy_first=False``) on the CPU: parameters drawn from
    N(0, 0.02) with ``seed``, then ``buffers`` (name relative to ``module`` -> tensor)
    put in place; buffers not given stay uninitialised."""
    if copy_first:
        module = copy.deepcopy(module)
    module.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.02, generator=gen)
    put_buffers(module, buffers or {})
    return module


def put_buffers(module: nn.Module, buffers: dict[str, torch.Tensor]) -> None:
    """Put each tensor of ``buffers`` (name relative to ``module``) in place as that
    buffer, whatever device the module is on."""
    for name, buf in buffers.items():
        owner, _, leaf = name.rpartition(".")
        module.get_submodule(owner)._buffers[leaf] = buf


def buffers_under(buffers: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of ``buffers`` (full names) below module ``prefix``, renamed relative
    to it."""
    if not prefix:
        return dict(buffers)
    return {n[len(prefix) + 1:]: t for n, t in buffers.items() if n.startswith(f"{prefix}.")}
