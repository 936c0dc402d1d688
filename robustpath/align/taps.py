"""Taps: the tensors of the traced graph where activation matching observes each
permutation group's units (:class:`~.taps.Tap`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from torch import fx, nn

from robustpath.align import rules
from robustpath.align.rules import Perm


@dataclass(frozen=True)
class Tap:
    """A tensor in the graph (node name) whose axis ``axis`` holds the ``size`` units of
    ``group``, each ``inner`` indices wide. ``kind``: ``post`` (after an activation),
    ``pre`` (the activation's input) or ``out`` (a layer's output; fallback). A ``post``
    tap names its activation's input in ``pre`` (the fallback for dead units)."""

    group: str
    node: str
    axis: int
    size: int
    inner: int
    kind: str
    pre: str | None = None
    start: int = 0
    # observe F.linear(node, W[wrow:wrow+size], bias[brow:brow+size]): (W, wrow, bias, brow)
    proj: tuple[str, int, str | None, int] | None = None
    offset: int = 0  # first index along ``axis`` (a group laid out in several segments)


def _flat(args) -> list[fx.Node]:
    out: list[fx.Node] = []
    fx.node.map_arg(args, out.append)
    return out


def find_taps(b, names: dict[int, str]) -> list[Tap]:
    """Where each group's units can be observed: after / before its activations, at
    the outputs of the layers writing it, and inside attention (projections)."""

    def taps(node: fx.Node, kind: str) -> list[Tap]:
        """One tap per group laid along the permuted axis (several side by side after a
        concatenation or a grouped convolution; ``offset``: where each starts)."""
        st = b.states.get(node)
        if not isinstance(st, Perm):
            return []
        out, offset = [], 0
        for s in b.expand_segs(st.segs):
            g = names.get(b.find(s.var))
            if g is not None:
                out.append(Tap(g, node.name, st.axis, s.size, s.inner, kind, offset=offset))
            offset += s.size * s.inner
        return out

    found: list[Tap] = []
    for act in b.activations:
        post = act
        if rules.function_name(act) in ("sigmoid", "sigmoid_") or isinstance(
                b.modules.get(act.target) if act.op == "call_module" else None, nn.Sigmoid):
            x = act.args[0]
            for user in act.users:  # Swish: x * sigmoid(x)
                if rules.function_name(user) in ("mul", "mul_", "imul") and \
                        set(_flat(user.args)) == {x, act}:
                    post = user
        pres = taps(act.args[0], "pre")
        by_place = {(t.group, t.size, t.offset): t for t in pres}
        for t in taps(post, "post"):
            t_pre = by_place.get((t.group, t.size, t.offset))
            found.append(dataclasses.replace(t, pre=t_pre.node) if t_pre else t)
        found += pres
    for var_prods in b.producers.values():
        for _, n in var_prods:
            found += taps(n, "out")
    for seg, node, axis, proj in b.extra_taps:
        g = names.get(b.find(seg.var))
        if g is not None:
            found.append(Tap(g, node.name, axis, seg.size, seg.inner, "out", None, seg.start,
                             proj))
    unique = {(t.node, t.kind, t.start, t.proj, t.offset): t for t in found}
    return list(unique.values())
