"""Permutations of hidden units: representation, sampling, applying.

A :class:`Permutation` is a ``dict[str, torch.LongTensor]`` mapping each group name of a
:class:`~.spec.PermutationSpec` to an index vector ``p`` of length ``spec.groups[name]``
with the gather convention: **unit i of the permuted model is unit p[i] of the model
the permutation is applied to** (``W_new = W[p]`` along every axis of that group). It
carries its spec as ``perm.spec``, so ``apply(model, perm)`` needs nothing else. Groups
missing from the dict are left as they are.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from robustpath.align.spec import AxisSpec, PermutationSpec, permutation_spec
from robustpath.errors import UserError


class Permutation(dict):
    """``{group: LongTensor p}``; unit ``i`` of the result is unit ``p[i]`` of the input."""

    def __init__(self, spec: PermutationSpec, perms: dict[str, torch.Tensor] | None = None):
        super().__init__()
        self.spec = spec
        for g, p in (perms or {}).items():
            self[g] = p

    def __setitem__(self, group: str, p) -> None:
        if group not in self.spec.groups:
            raise UserError(f"unknown permutation group {group!r}")
        p = torch.as_tensor(p, dtype=torch.long).cpu()
        n = self.spec.groups[group]
        if p.shape != (n,) or not torch.equal(p.sort().values, torch.arange(n)):
            raise UserError(f"permutation of group {group!r} is not a permutation of {n} units")
        blocks = self.spec.blocks.get(group)
        why = blocks.check(p) if blocks is not None else None
        if why:
            raise UserError(f"permutation of attention group {group!r} {why}: heads move as "
                            "wholes, the same way for query/key and value units")
        super().__setitem__(group, p)

    def inverse(self) -> Permutation:
        """The permutation that undoes this one: ``apply(apply(m, p), p.inverse()) == m``."""
        return Permutation(self.spec, {g: torch.argsort(p) for g, p in self.items()})

    def is_identity(self) -> bool:
        return all(torch.equal(p, torch.arange(len(p))) for p in self.values())

    def to_dict(self) -> dict[str, list[int]]:
        """JSON-serialisable ``{group: [indices]}``."""
        return {g: p.tolist() for g, p in self.items()}


def identity_permutation(spec: PermutationSpec) -> Permutation:
    return Permutation(spec, {g: torch.arange(n) for g, n in spec.groups.items()})


def random_permutation(model: nn.Module | None = None, example_input: torch.Tensor | None = None,
                       seed: int = 0, *, spec: PermutationSpec | None = None) -> Permutation:
    """A uniformly random permutation of every group (seeded, CPU generator).

    Pass ``model`` and ``example_input`` (the spec is derived) or a ready ``spec``.
    """
    if spec is None:
        if model is None or example_input is None:
            raise UserError("random_permutation needs (model, example_input) or spec=")
        spec = permutation_spec(model, example_input)
    g = torch.Generator().manual_seed(int(seed))
    return Permutation(spec, {name: spec.blocks[name].random(g) if name in spec.blocks
                              else torch.randperm(n, generator=g)
                              for name, n in spec.groups.items()})


def axis_index(ax: AxisSpec, perms: dict[str, torch.Tensor]) -> torch.Tensor:
    """The full gather index along ``ax.axis``: each segment's units are reordered by its
    group's permutation, keeping each unit's ``inner`` indices together."""
    parts, offset = [], 0
    for s in ax.segments:
        p = perms.get(s.group) if s.group is not None else None
        if p is None:
            parts.append(torch.arange(offset, offset + s.length))
        else:
            # a segment may hold a part of its group (attention: the value units)
            p = p[s.start:s.start + s.size] - s.start
            block = p.view(-1, 1) * s.inner + torch.arange(s.inner).view(1, -1)
            parts.append(offset + block.reshape(-1))
        offset += s.length
    return torch.cat(parts)


def permute_tensor(t: torch.Tensor, axes: list[AxisSpec], perms: dict[str, torch.Tensor],
                   skip_axis: int | None = None) -> torch.Tensor:
    """``t`` with every axis in ``axes`` (except ``skip_axis``) permuted by ``perms``."""
    for ax in axes:
        if ax.axis != skip_axis:
            t = t.index_select(ax.axis, axis_index(ax, perms).to(t.device))
    return t


def permuted_state(model: nn.Module, perm: Permutation) -> dict[str, torch.Tensor]:
    """The permuted tensors, keyed like ``model.state_dict()`` (only the changed ones)."""
    tensors = model.state_dict(keep_vars=False)
    by_key: dict[str, list[AxisSpec]] = {}
    for ax in perm.spec.axes:
        by_key.setdefault(ax.key, []).append(ax)
    out = {}
    for key, axes in by_key.items():
        if key not in tensors:
            raise UserError(f"model has no parameter/buffer {key!r} named by the spec")
        out[key] = permute_tensor(tensors[key], axes, perm)
    return out


def apply(model: nn.Module, perm: Permutation, spec: PermutationSpec | None = None) -> nn.Module:
    """A deep copy of ``model`` with its hidden units reordered by ``perm``.

    Computes the same function (exactly, up to float summation order). ``model`` is not
    modified. ``spec`` overrides ``perm.spec``.
    """
    if spec is not None:
        perm = Permutation(spec, dict(perm))
    new_values = permuted_state(model, perm)
    out = copy.deepcopy(model)
    named = dict(out.named_parameters(remove_duplicate=False))
    named.update(dict(out.named_buffers(remove_duplicate=False)))
    with torch.no_grad():
        for key, value in new_values.items():
            named[key].copy_(value)
    return out
