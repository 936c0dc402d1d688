"""Activation matching (Tatro et al. 2020, "Optimizing Mode Connectivity via Neuron
Alignment"; Li et al. 2016 "Convergent Learning").

For every permutation group, both models are run (eval mode, no gradients) on the same
batches and the group's units are observed at its *taps* (:class:`~.taps.Tap`):
post-activation by default (outputs of ReLU etc.; for Swish ``x * sigmoid(x)``),
pre-activation on request (the activation's input); a group without a nonlinearity is
observed at its layers' outputs. Each unit is z-scored over samples *and* spatial
positions and the cross-correlation matrix ``corr[i, j]`` (unit i of A, unit j of B) is
formed; a residual stream is observed at every tap in it and its correlation matrices
are averaged. ``scipy.optimize.linear_sum_assignment`` then picks the permutation
maximising the total matched correlation.

Statistics are streamed batch by batch (count, means, centred sums of squares and of
cross products, merged with Chan et al.'s pairwise update in float64), so memory is
``O(C^2)`` per tap whatever the number of samples. Units with zero variance (dead
ReLUs) correlate 0 with everything at that tap; in post-activation mode their
pairs are scored with the pre-activation correlation instead (collected in the same
pass), so dead units are still matched by what they compute.

With ``inputs="adv"`` the attack is generated against each model on its own
(``attack(model_a, x, y)`` for A's activations, ``attack(model_b, x, y)`` for B's), and
row k of both is the same clean example k.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import fx

from robustpath.align.context import MATCHERS, MatchContext, solve_assignment
from robustpath.align.spec import PermutationSpec
from robustpath.align.taps import Tap
from robustpath.attacks.base import eval_mode
from robustpath.errors import UserError


class CoMoments:
    """Streaming means, variances and cross-covariance of the units of two models
    (``C`` units each), observed over any number of ``[C, M]`` batches."""

    def __init__(self, c: int):
        self.n = 0
        self.mean_a = torch.zeros(c, dtype=torch.float64)
        self.mean_b = torch.zeros(c, dtype=torch.float64)
        self.m2_a = torch.zeros(c, dtype=torch.float64)
        self.m2_b = torch.zeros(c, dtype=torch.float64)
        self.cab = torch.zeros(c, c, dtype=torch.float64)

    def update(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Add observations: ``a``, ``b`` of shape ``[C, M]`` (units x observations)."""
        m = a.shape[1]
        if m == 0:
            return
        a, b = a.float(), b.float()
        ma, mb = a.mean(1, keepdim=True), b.mean(1, keepdim=True)
        ac, bc = a - ma, b - mb  # batch-centred: no cancellation in float32
        cab = (ac @ bc.T).double().cpu()
        va, vb = (ac * ac).sum(1).double().cpu(), (bc * bc).sum(1).double().cpu()
        ma, mb = ma.view(-1).double().cpu(), mb.view(-1).double().cpu()
        n = self.n + m
        da, db = ma - self.mean_a, mb - self.mean_b
        w = self.n * m / n
        self.cab += cab + torch.outer(da, db) * w
        self.m2_a += va + da * da * w
        self.m2_b += vb + db * db * w
        self.mean_a += da * (m / n)
        self.mean_b += db * (m / n)
        self.n = n

    def constant_a(self, tol: float = 1e-12) -> torch.Tensor:
        """Units of A whose variance is (numerically) zero, e.g. dead ReLUs."""
        return self.m2_a <= tol * max(self.n, 1)

    def constant_b(self, tol: float = 1e-12) -> torch.Tensor:
        return self.m2_b <= tol * max(self.n, 1)

    def correlation(self, eps: float = 1e-12) -> torch.Tensor:
        """Pearson correlation ``[C, C]`` (0 where a unit has no variance)."""
        sa, sb = self.m2_a.sqrt(), self.m2_b.sqrt()
        denom = torch.outer(sa, sb)
        corr = torch.where(denom > eps, self.cab / denom.clamp_min(eps),
                           torch.zeros_like(self.cab))
        return corr.clamp_(-1.0, 1.0)  # float32 batch products can overshoot by ~1e-6


def _units(t: torch.Tensor, tap: Tap) -> torch.Tensor:
    """``[C, M]``: one row per unit of the tap; columns are samples x positions (x the
    unit's ``inner`` indices), in the same order for both models."""
    if tap.offset or t.shape[tap.axis] != tap.size * tap.inner:
        t = t.narrow(tap.axis, tap.offset, tap.size * tap.inner)
    return t.movedim(tap.axis, 0).reshape(tap.size, -1)


def _tid(tap: Tap) -> tuple:
    return (tap.node, tap.start, tap.proj, tap.offset)


def _project(t: torch.Tensor, tap: Tap, state: dict[str, torch.Tensor]) -> torch.Tensor:
    """Units computed inside an opaque layer (attention's query/key/value projections):
    ``F.linear`` of the tapped input with the rows of the observed model's weight."""
    if tap.proj is None:
        return t
    wkey, wrow, bkey, brow = tap.proj
    w = state[wkey][wrow:wrow + tap.size]
    bias = state[bkey][brow:brow + tap.size] if bkey else None
    return F.linear(t, w, bias)


def select_taps(spec: PermutationSpec, pre_activation: bool = False) -> list[Tap]:
    """Per group: post- (or pre-) activation taps, else the layers' outputs."""
    chosen = []
    for g in spec.groups:
        taps = spec.taps_of(g, "pre" if pre_activation else "post") or spec.taps_of(g, "out")
        if not taps:
            raise UserError(f"permutation group {g!r} has no observable tensor")
        chosen += taps
    return chosen


def tap_module(spec: PermutationSpec, model: torch.nn.Module, taps: list[Tap]) -> fx.GraphModule:
    """A GraphModule over ``model``'s own submodules that returns the tap tensors."""
    src = spec.graph_module.graph
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    graph.graph_copy(src, env)
    by_name = {n.name: n for n in src.nodes}
    outs = []
    for t in taps:  # copied where computed: a later in-place op (ReLU(inplace=True)) would
        node = env[by_name[t.node]]  # overwrite a pre-activation tap
        with graph.inserting_after(node):
            outs.append(graph.call_method("clone", (node,)))
    graph.output(tuple(outs))
    return fx.GraphModule(model, graph)


def check_compatible(model_a: torch.nn.Module, model_b: torch.nn.Module) -> None:
    sa, sb = model_a.state_dict(), model_b.state_dict()
    if sa.keys() != sb.keys() or any(sa[k].shape != sb[k].shape for k in sa):
        diff = sorted(set(sa) ^ set(sb)) or [k for k in sa if sa[k].shape != sb[k].shape]
        raise UserError(f"models have different architectures (first difference: {diff[0]})")


def correlations(ctx: MatchContext) -> tuple[dict[str, torch.Tensor], int]:
    """``({group: mean correlation matrix [C, C] float64}, number of samples)`` - computed
    once per context and cached."""
    if "corr" in ctx.cache:
        return ctx.cache["corr"]
    if ctx.inputs not in ("clean", "adv"):
        raise UserError(f"inputs must be 'clean' or 'adv', got {ctx.inputs!r}")
    if ctx.inputs == "adv" and ctx.attack is None:
        raise UserError("inputs='adv' needs an attack")
    t0 = time.perf_counter()
    taps = select_taps(ctx.spec, ctx.pre_activation)
    pre_taps = {(t.node, t.offset): t for t in ctx.spec.taps if t.kind == "pre"}
    observed = {_tid(t): t for t in taps}
    for t in taps:  # pre-activations as the fallback for dead (constant) units
        if t.pre is not None and not ctx.pre_activation:
            pre = pre_taps[(t.pre, t.offset)]
            observed.setdefault(_tid(pre), pre)
    order = list(observed.values())
    gm_a, gm_b = tap_module(ctx.spec, ctx.model_a, order), tap_module(ctx.spec, ctx.model_b, order)
    state_a, state_b = ctx.model_a.state_dict(), ctx.model_b.state_dict()
    stats = {_tid(t): CoMoments(t.size) for t in order}
    samples = 0
    with eval_mode(gm_a), eval_mode(gm_b):
        for x, y in ctx.batches():
            xa = xb = x
            if ctx.inputs == "adv":
                if y is None:
                    raise UserError("inputs='adv' needs labelled data: (x, y) batches")
                xa, xb = ctx.attack(ctx.model_a, x, y), ctx.attack(ctx.model_b, x, y)
            with torch.no_grad():
                outs_a, outs_b = gm_a(xa), gm_b(xb)
                for tap, ta, tb in zip(order, outs_a, outs_b):
                    ta, tb = _project(ta, tap, state_a), _project(tb, tap, state_b)
                    stats[_tid(tap)].update(_units(ta, tap), _units(tb, tap))
            samples += len(x)
    if samples == 0:
        raise UserError("the data for alignment is empty")
    corr = {g: torch.zeros(n, n, dtype=torch.float64) for g, n in ctx.spec.groups.items()}
    count = {g: torch.zeros(n, 1, dtype=torch.float64) for g, n in ctx.spec.groups.items()}
    for tap in taps:
        s = stats[_tid(tap)]
        c = s.correlation()
        pre = (tap.pre, 0, None, tap.offset)
        if pre in stats and tap.pre != tap.node:
            dead = s.constant_a()[:, None] | s.constant_b()[None, :]
            if dead.any():
                c = torch.where(dead, stats[pre].correlation(), c)
        units = slice(tap.start, tap.start + tap.size)  # attention: a part of the group
        corr[tap.group][units, units] += c
        count[tap.group][units] += 1
    result = ({g: corr[g] / count[g].clamp_min(1) for g in ctx.spec.groups}, samples)
    ctx.cache["corr"] = result
    ctx.cache["seconds"] = time.perf_counter() - t0
    return result


@MATCHERS.register("activation")
def activation_matching(ctx: MatchContext) -> dict[str, torch.Tensor]:
    """One Hungarian assignment per group on the (stream-averaged) correlation matrix;
    groups are independent because B's unit activations do not depend on how B's other
    groups are ordered."""
    corr, _ = correlations(ctx)
    return {g: torch.arange(len(c)) if g in ctx.keep else
            ctx.spec.blocks[g].solve(c) if g in ctx.spec.blocks else solve_assignment(c)
            for g, c in corr.items()}
