"""Weight matching (Ainsworth et al. 2022, "Git Re-Basin", Algorithm 1). Needs no data.

Maximises ``sum_l <W_l^A, P_l W_l^B P_{l-1}^T>`` over the permutations of all groups by
coordinate descent: visit the groups in a random (seeded) order; for group g, with
every other group's permutation held fixed, the objective is linear in ``P_g``:
``S_g[i, j] = sum over (weight, axis) in g of <A's unit i, B's unit j>`` where B's other
axes are already permuted; ``linear_sum_assignment(S_g, maximize=True)`` gives the best
``P_g``. Sweeps repeat until one changes no group (at most ``max_iter`` sweeps).

Only parameters enter the objective (BatchNorm running statistics do not, as in the
paper); block-permuted axes (Linear after flatten) compare whole ``inner`` blocks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from robustpath.align.context import MATCHERS, MatchContext, solve_assignment
from robustpath.align.permute import permute_tensor
from robustpath.align.spec import AxisSpec, PermutationSpec


def _unit_rows(t: torch.Tensor, axis: int, offset: int, size: int, inner: int) -> torch.Tensor:
    """``[size, -1]``: one row per unit (its ``inner`` indices and all other axes)."""
    return t.narrow(axis, offset, size * inner).movedim(axis, 0).reshape(size, -1)


def _entries(spec: PermutationSpec, keys: set[str]):
    """group -> [(AxisSpec, offset, size, inner, start)] over parameter axes."""
    out: dict[str, list] = {g: [] for g in spec.groups}
    for ax in spec.axes:
        if ax.key not in keys:
            continue
        offset = 0
        for s in ax.segments:
            if s.group is not None:
                out[s.group].append((ax, offset, s.size, s.inner, s.start))
            offset += s.length
    return out


def _by_key(spec: PermutationSpec) -> dict[str, list[AxisSpec]]:
    by: dict[str, list[AxisSpec]] = {}
    for ax in spec.axes:
        by.setdefault(ax.key, []).append(ax)
    return by


def weight_matching(spec: PermutationSpec, params_a: dict[str, torch.Tensor],
                    params_b: dict[str, torch.Tensor], seed: int = 0,
                    max_iter: int = 100, keep=()) -> dict[str, torch.Tensor]:
    """Permutations ``{group: p}`` aligning B's parameters onto A's (gather convention).
    Groups in ``keep`` stay in place; attention groups are solved by
    :meth:`~.blocks.Blocks.solve` (heads as wholes)."""
    entries = _entries(spec, set(params_a) & set(params_b))
    by_key = _by_key(spec)
    a64 = {k: v.detach().double().cpu() for k, v in params_a.items()}
    b64 = {k: v.detach().double().cpu() for k, v in params_b.items()}
    perms = {g: torch.arange(n) for g, n in spec.groups.items()}
    names = [g for g in spec.groups if entries[g] and g not in keep]
    gen = torch.Generator().manual_seed(int(seed))
    for _ in range(max_iter):
        progress = False
        for i in torch.randperm(len(names), generator=gen).tolist():
            g = names[i]
            n = spec.groups[g]
            score = torch.zeros(n, n, dtype=torch.float64)
            for ax, off, size, inner, start in entries[g]:
                wb = permute_tensor(b64[ax.key], by_key[ax.key], perms, skip_axis=ax.axis)
                score[start:start + size, start:start + size] += \
                    _unit_rows(a64[ax.key], ax.axis, off, size, inner) @ \
                    _unit_rows(wb, ax.axis, off, size, inner).T
            blocks = spec.blocks.get(g)
            new = blocks.solve(score) if blocks is not None else solve_assignment(score)
            rows = torch.arange(n)
            old_val, new_val = score[rows, perms[g]].sum(), score[rows, new].sum()
            if new_val > old_val + 1e-12 * max(1.0, abs(float(old_val))):
                perms[g] = new
                progress = True
        if not progress:
            break
    return perms


def weight_similarity(spec: PermutationSpec, params_a: dict[str, torch.Tensor],
                      params_b: dict[str, torch.Tensor],
                      perms: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per group: mean cosine similarity of matched units' weights (all the group's
    parameter axes concatenated), B permuted by ``perms``."""
    entries = _entries(spec, set(params_a) & set(params_b))
    by_key = _by_key(spec)
    out = {}
    for g, ents in entries.items():
        if not ents:
            continue
        ra: dict[int, list] = {}
        rb: dict[int, list] = {}
        for ax, off, size, inner, start in ents:  # one row block per part of the group
            wb = permute_tensor(params_b[ax.key].detach().double().cpu(), by_key[ax.key], perms)
            ra.setdefault(start, []).append(
                _unit_rows(params_a[ax.key].detach().double().cpu(), ax.axis, off, size, inner))
            rb.setdefault(start, []).append(_unit_rows(wb, ax.axis, off, size, inner))
        cos = [F.cosine_similarity(torch.cat(ra[s], 1), torch.cat(rb[s], 1), dim=1) for s in ra]
        out[g] = float(torch.cat(cos).mean())
    return out


@MATCHERS.register("weight")
def _weight_matcher(ctx: MatchContext) -> dict[str, torch.Tensor]:
    pa = dict(ctx.model_a.named_parameters())
    pb = dict(ctx.model_b.named_parameters())
    return weight_matching(ctx.spec, pa, pb, seed=ctx.seed, keep=ctx.keep)
