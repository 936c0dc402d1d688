"""The units REPAIR corrects and their statistics (:mod:`robustpath.paths.repair`).

Units (:func:`find_units`, found by one traced forward pass, in call order): every
affine norm layer (BatchNorm tracking statistics, LayerNorm over one dimension,
GroupNorm) and every Conv / Linear whose output neither enters a norm layer directly
nor is the network's output (the logits). A unit's pre-activation is that layer's
output; its statistics are the mean and (biased) standard deviation per channel over
all other dimensions (dim 1 for conv / BatchNorm / GroupNorm outputs ``[N, C, ...]``,
the last dim for Linear / LayerNorm outputs ``[..., F]``), over every example of the
measuring batches (the path evaluation's ``bn_batches`` training batches).

:func:`measure` gives every unit's statistics in one pass, :func:`_measure_one` one
unit's (passes stop at the unit), :func:`interpolate` the target at t; the
correction itself is :func:`robustpath.paths.repair.repair_model`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from robustpath.paths.bn import BN_TYPES

NORM_TYPES = (*BN_TYPES, nn.LayerNorm, nn.GroupNorm)
LAYER_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass
class Unit:
    """A layer whose output channels REPAIR corrects; ``dim``: the channel dim."""

    name: str
    module: nn.Module
    dim: int

    @property
    def is_bn(self) -> bool:
        return isinstance(self.module, BN_TYPES)


Stats = list[tuple[torch.Tensor, torch.Tensor]]   # per unit: (mean [C], std [C]), float64


class _Stop(Exception):
    pass


def _channel_dim(m: nn.Module) -> int:
    return -1 if isinstance(m, (nn.Linear, nn.LayerNorm)) else 1


def _eligible_norm(m: nn.Module) -> bool:
    if isinstance(m, BN_TYPES):
        return m.affine and m.track_running_stats
    if isinstance(m, nn.LayerNorm):
        return m.elementwise_affine and len(m.normalized_shape) == 1 and m.bias is not None
    return isinstance(m, nn.GroupNorm) and m.affine


def find_units(model: nn.Module, x: torch.Tensor) -> list[Unit]:
    """The units of ``model`` in call order, from one forward pass on ``x`` (a few
    examples suffice). A layer called more than once is left out (its statistics
    would mix two places of the network)."""
    calls: list[tuple[str, nn.Module, torch.Tensor]] = []
    norm_inputs: list[torch.Tensor] = []
    count: dict[str, int] = {}
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, LAYER_TYPES) or (isinstance(m, NORM_TYPES) and _eligible_norm(m)):
            def hook(mod, inp, out, name=name):
                count[name] = count.get(name, 0) + 1
                calls.append((name, mod, out))
                if isinstance(mod, NORM_TYPES):
                    norm_inputs.append(inp[0])
            handles.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            logits = model.eval()(x)
    finally:
        for h in handles:
            h.remove()
    units = []
    for name, m, out in calls:
        feeds_norm = any(out is i for i in norm_inputs)
        if count[name] != 1 or out is logits or (isinstance(m, LAYER_TYPES) and feeds_norm):
            continue
        units.append(Unit(name, m, _channel_dim(m)))
    return units


def _moments(y: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per-channel sum and sum of squares (float64) of ``y`` over all dims but ``dim``."""
    flat = y.detach().movedim(dim, -1).reshape(-1, y.shape[dim]).double()
    return flat.sum(0), flat.pow(2).sum(0), flat.shape[0]


def _finish(acc) -> tuple[torch.Tensor, torch.Tensor]:
    s, sq, n = acc
    mean = s / n
    return mean, (sq / n - mean.pow(2)).clamp_min(0.0).sqrt()


def measure(model: nn.Module, units: Sequence[Unit], batches: Sequence[torch.Tensor]) -> Stats:
    """Per-unit (mean, std) of ``model``'s pre-activations over every example of
    ``batches`` (input tensors ``[B, C, H, W]``), in one pass, ``model`` in eval mode."""
    by_name = dict(model.named_modules())
    acc: dict[int, list] = {}
    handles = []
    for k, u in enumerate(units):
        def hook(mod, inp, out, k=k, dim=u.dim):
            s, sq, n = _moments(out, dim)
            a = acc.setdefault(k, [0.0, 0.0, 0])
            a[0], a[1], a[2] = a[0] + s, a[1] + sq, a[2] + n
        handles.append(by_name[u.name].register_forward_hook(hook))
    try:
        with torch.no_grad():
            model.eval()
            for x in batches:
                model(x)
    finally:
        for h in handles:
            h.remove()
    return [_finish(acc[k]) for k in range(len(units))]


def _measure_one(model: nn.Module, unit: Unit, batches, of_input: bool):
    """Moments of one unit's output (or input) over ``batches``; every pass stops at
    the unit, so correcting layer k costs k-deep forward passes only."""
    acc = [0.0, 0.0, 0]

    def hook(mod, inp, out):
        s, sq, n = _moments(inp[0] if of_input else out, unit.dim)
        acc[0], acc[1], acc[2] = acc[0] + s, acc[1] + sq, acc[2] + n
        raise _Stop

    h = dict(model.named_modules())[unit.name].register_forward_hook(hook)
    try:
        with torch.no_grad():
            for x in batches:
                try:
                    model(x)
                except _Stop:
                    pass
    finally:
        h.remove()
    return _finish(acc)


def interpolate(stats_a: Stats, stats_b: Stats, t: float) -> Stats:
    """``(1 - t) stats_a + t stats_b``, means and stds alike (Jordan et al.)."""
    return [((1 - t) * ma + t * mb, (1 - t) * sa + t * sb)
            for (ma, sa), (mb, sb) in zip(stats_a, stats_b)]
