"""Permutation spec derived from the model graph (no hand-written spec per architecture).

``permutation_spec(model, example_input)`` traces the model with ``torch.fx``
(:mod:`.trace`), walks the graph once applying the propagation rules of :mod:`.rules`
and joins, with union-find, every (parameter/buffer, axis) that must be permuted
together. The result says which hidden units can be reordered without changing the
function:

* a Linear / Conv layer's output units start a *group*; the layers reading them have
  their input axis permuted with it; BatchNorm affine parameters and running
  statistics follow (``num_batches_tracked`` never moves);
* element-wise activations, dropout, pooling, spatial padding keep the group;
  flatten/view turns a channel permutation into a block permutation (``inner = H*W``);
* every tensor added into one residual stream shares one group;
* concatenation lays the parts' groups side by side along the axis;
* the input channels (including normalisation by mean/std buffers) and the output
  logits are never permuted;
* multi-head attention makes one group of query/key and value units whose heads move
  as wholes (:mod:`.attention`); a class token expanded over the batch and position
  embeddings are permuted with the residual stream they join.

Group names: the first layer (in graph order) that writes the units, e.g. ``net.0.0``;
``name+k`` means k further layers write into the same units (a residual stream).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import fx, nn

from robustpath.align import rules
from robustpath.align.blocks import Blocks
from robustpath.align.layers import apply_rule
from robustpath.align.rules import FIXED, NON_TENSOR, Perm, Seg
from robustpath.align.taps import Tap, _flat, find_taps
from robustpath.align.trace import node_location, node_shape, trace
from robustpath.errors import UserError


@dataclass(frozen=True)
class Segment:
    """``size`` consecutive units of ``group`` (None: never permuted) along an axis, each
    unit owning ``inner`` consecutive indices (1 for channels, H*W after a flatten)."""

    group: str | None
    size: int
    inner: int = 1
    start: int = 0  # first unit of the group in this segment (attention: value units)

    @property
    def length(self) -> int:
        return self.size * self.inner


@dataclass(frozen=True)
class AxisSpec:
    """Axis ``axis`` of state-dict entry ``key`` is permuted segment by segment."""

    key: str
    axis: int
    segments: tuple[Segment, ...]


@dataclass
class PermutationSpec:
    """Which parameter/buffer axes share which permutation group.

    ``groups``: group name -> number of units, in graph order. ``axes``: every permuted
    (state-dict key, axis). ``taps``: tensors where each group's units can be observed
    (for activation matching). ``graph_module``: the traced graph (shares the traced
    model's submodules). ``blocks``: groups whose valid permutations move heads as
    wholes (attention, :class:`~.blocks.Blocks`). ``fixed``: with ``partial=True``, the
    operations that could not be permuted (``where``, ``reason``, ``units``: the layers
    whose units were therefore left in place).
    """

    groups: dict[str, int]
    axes: list[AxisSpec]
    taps: list[Tap]
    graph_module: fx.GraphModule = field(repr=False, compare=False)
    blocks: dict[str, Blocks] = field(default_factory=dict)
    fixed: list[dict] = field(default_factory=list)

    def axes_of(self, key: str) -> list[AxisSpec]:
        return [a for a in self.axes if a.key == key]

    def members(self, group: str) -> list[tuple[str, int]]:
        """(key, axis) pairs that group ``group`` permutes."""
        return [(a.key, a.axis) for a in self.axes
                if any(s.group == group for s in a.segments)]

    def taps_of(self, group: str, kind: str) -> list[Tap]:
        return [t for t in self.taps if t.group == group and t.kind == kind]

    def describe(self) -> str:
        lines = [f"{len(self.groups)} permutation groups, {len(self.axes)} permuted axes"]
        for g, n in self.groups.items():
            mem = ", ".join(f"{k}[{a}]" for k, a in self.members(g))
            heads = f", {self.blocks[g].heads} heads" if g in self.blocks else ""
            lines.append(f"  {g} ({n} units{heads}): {mem}")
        for f in self.fixed:
            lines.append(f"  left in place: {', '.join(f['units']) or '-'} ({f['where']}: "
                         f"{f['reason']})")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"groups": dict(self.groups),
                "axes": [{"key": a.key, "axis": a.axis,
                          "segments": [[s.group, s.size, s.inner] + ([s.start] if s.start else [])
                                       for s in a.segments]}
                         for a in self.axes],
                "blocks": {g: [b.heads, list(b.parts)] for g, b in self.blocks.items()},
                "fixed": list(self.fixed)}


class _Builder:
    """Walks the graph once; union-find over unit variables (variable 0 = FIXED)."""

    def __init__(self, gm: fx.GraphModule, model: nn.Module, partial: bool = False,
                 buffers: dict[str, torch.Tensor] | None = None):
        self.gm = gm
        self.partial = partial
        # a meta model's real buffers, and the module configurations already checked on
        # a CPU copy (.attention._check_invariant)
        self.real_buffers, self.meta_checked = dict(buffers or {}), set()
        self.blocks: dict[int, Blocks] = {}
        # root variable -> the variables it is the concatenation of (grouped convolutions)
        self.split: dict[int, tuple[Seg, ...]] = {}
        self.extra_taps: list[tuple[Seg, fx.Node, int, tuple | None]] = []
        self.fixed: list[dict] = []
        self.modules = dict(gm.named_modules())
        self.parent, self.sizes = [FIXED], [0]
        self.producers: dict[int, list[tuple[str, fx.Node]]] = {}
        self.regs: dict[str, dict[int, tuple[Seg, ...]]] = {}
        self.pinned: set[str] = set()
        self.states: dict[fx.Node, object] = {}
        self.activations: list[fx.Node] = []
        first: dict[int, str] = {}
        self.canon: dict[str, str] = {}
        self.tensors: dict[str, torch.Tensor] = {}
        named = list(model.named_parameters(remove_duplicate=False)) + \
            list(model.named_buffers(remove_duplicate=False))
        for name, t in named:
            self.canon[name] = first.setdefault(id(t), name)
            self.tensors[name] = t

    # --- interface used by the rules
    def state(self, x):
        return self.states.get(x, NON_TENSOR) if isinstance(x, fx.Node) else NON_TENSOR

    def shape(self, node: fx.Node):
        return node_shape(node)

    def module(self, node: fx.Node) -> nn.Module:
        return self.modules[node.target]

    def key(self, module_name: str, attr: str) -> str:
        full = f"{module_name}.{attr}" if module_name else attr
        return self.canon.get(full, full)

    def new_var(self, size: int, producer: str, node: fx.Node, blocks: Blocks | None = None) -> int:
        """A fresh permutation variable of ``size`` units (a group unless it gets fixed);
        ``blocks``: its valid permutations move heads as wholes (attention)."""
        v = len(self.parent)
        self.parent.append(v)
        self.sizes.append(int(size))
        self.producers[v] = [(producer, node)]
        if blocks is not None:
            if blocks.size != size:
                raise ValueError(f"blocks of {blocks.size} units for a group of {size}")
            self.blocks[v] = blocks
        return v

    def add_tap(self, seg: Seg, node: fx.Node, axis: int, proj: tuple | None = None) -> None:
        """Units ``seg`` can be observed on ``axis`` of ``node`` (after ``F.linear`` with
        rows ``proj = (weight key, bias key, first row)`` of the observed model)."""
        self.extra_taps.append((seg, node, axis, proj))

    def find(self, v: int) -> int:
        root = v
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[v] != root:
            self.parent[v], v = root, self.parent[v]
        return root

    def union(self, a: int, b: int, node: fx.Node | None = None) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if FIXED not in (ra, rb) and self.sizes[ra] != self.sizes[rb]:
            self.refuse(node, f"unit groups of sizes {self.sizes[ra]} and {self.sizes[rb]} meet")
        if FIXED not in (ra, rb) and (ra in self.blocks or rb in self.blocks):
            self.refuse(node, "attention units (permuted by heads) meet other units")
        if rb == FIXED:
            ra, rb = rb, ra
        self.parent[rb] = ra
        if ra != FIXED:
            self.producers[ra] += self.producers.pop(rb, [])
        parts = self.split.pop(rb, None)
        if parts is not None:  # the merged variable is a concatenation: so is the root
            if ra == FIXED:
                self.fix(parts)
            elif ra in self.split:
                self.union_segs(self.split[ra], parts, node)
            else:
                self.split[ra] = parts

    def expand_segs(self, segs) -> tuple[Seg, ...]:
        """``segs`` with every split variable replaced by its parts."""
        out: list[Seg] = []
        for s in segs:
            parts = self.split.get(self.find(s.var))
            if parts is None:
                out.append(s)
            else:
                out += [Seg(p.var, p.size, p.inner * s.inner, p.start)
                        for p in self.expand_segs(parts)]
        return tuple(out)

    def union_segs(self, s1, s2, node: fx.Node) -> None:
        """The two layouts hold the same units. A whole variable meeting several
        segments (a grouped convolution's per-group units) becomes their concatenation."""
        s1, s2 = self.expand_segs(s1), self.expand_segs(s2)
        if len(s1) != len(s2) or any((a.size, a.inner, a.start) != (b.size, b.inner, b.start)
                                     for a, b in zip(s1, s2)):
            for one, many in ((s1, s2), (s2, s1)):
                whole = len(one) == 1 and one[0].start == 0 and \
                    one[0].size == self.sizes[self.find(one[0].var)]
                if whole and self.find(one[0].var) not in (FIXED, *self.blocks) and \
                        sum(m.size for m in many) == one[0].size and \
                        all(m.inner == one[0].inner for m in many):
                    self.split[self.find(one[0].var)] = tuple(
                        Seg(m.var, m.size, 1, m.start) for m in many)
                    return
            self.refuse(node, "the operands' permuted units are laid out differently")
        for a, b in zip(s1, s2):
            self.union(a.var, b.var, node)

    def fix(self, segs) -> None:
        for s in segs:
            self.union(s.var, FIXED)

    def register(self, key: str, axis: int, segs, node: fx.Node) -> None:
        t = self.tensors.get(key)
        length = sum(s.size * s.inner for s in segs)
        if t is None or t.dim() <= axis or t.shape[axis] != length:
            self.refuse(node, f"'{key}' axis {axis} does not match {length} permuted units")
        axes = self.regs.setdefault(key, {})
        if axis in axes:
            self.union_segs(axes[axis], segs, node)
        else:
            axes[axis] = tuple(segs)

    def pin(self, key: str) -> None:
        self.pinned.add(key)

    def refuse(self, node: fx.Node | None, reason: str):
        where = node_location(node) if node is not None else "the graph"
        raise Refusal(f"cannot derive a permutation spec: {where}: {reason}. Supported: "
                      "Linear/Conv (grouped: groups stay in place), BatchNorm/InstanceNorm/"
                      "GroupNorm/LayerNorm, element-wise activations, dropout, pooling, "
                      "spatial pad, flatten/view, add/mul, cat, multi-head attention and "
                      "the rules registered with robustpath.align.register_rule. "
                      "align(..., partial=True) aligns the rest and leaves this part in "
                      "place; method='none' is the unaligned baseline", where, reason)

    def leave_in_place(self, node: fx.Node, err: Refusal):
        """Partial mode: the refused node's permuted inputs and its parameters are fixed;
        its output is a fixed tensor."""
        units: list[str] = []
        for a in _flat((node.args, node.kwargs)):
            st = self.state(a)
            for item in (st.items if isinstance(st, rules.Tup) else (st,)):
                if isinstance(item, Perm):
                    for s in item.segs:
                        r = self.find(s.var)
                        if r != FIXED:
                            units += [p for p, _ in self.producers[r]]
                        self.union(s.var, FIXED)
                elif isinstance(item, rules.Attr):
                    self.pin(item.key)
        if node.op == "call_module":
            mod = self.module(node)
            for n, _ in list(mod.named_parameters()) + list(mod.named_buffers()):
                self.pin(self.key(node.target, n))
        self.fixed.append({"where": err.where, "reason": err.reason,
                           "units": list(dict.fromkeys(units))})
        return rules.FIXED_T if "tensor_meta" in node.meta else NON_TENSOR

    def step(self, node: fx.Node):
        if not self.partial:
            return apply_rule(self, node)
        try:
            return apply_rule(self, node)
        except Refusal as e:
            return self.leave_in_place(node, e)

    # --- the walk
    def run(self) -> None:
        for node in self.gm.graph.nodes:
            if node.op == "output":
                for x in _flat(node.args):
                    st = self.state(x)
                    for item in (st.items if isinstance(st, rules.Tup) else (st,)):
                        if isinstance(item, Perm):
                            self.fix(item.segs)
                continue
            self.states[node] = self.step(node)
        for key in self.pinned & set(self.regs):
            for segs in self.regs[key].values():
                self.fix(segs)


class Refusal(UserError):
    """An operation the spec cannot permute (``where``: the node, ``reason``)."""

    def __init__(self, msg: str, where: str, reason: str):
        super().__init__(msg)
        self.where, self.reason = where, reason


def _group_names(b: _Builder) -> dict[int, str]:
    order = {n: i for i, n in enumerate(b.gm.graph.nodes)}
    roots = {b.find(s.var) for axes in b.regs.values() for segs in axes.values()
             for s in b.expand_segs(segs)}
    roots.discard(FIXED)
    named = []
    for r in roots:
        prods = sorted(b.producers[r], key=lambda p: order[p[1]])
        distinct = list(dict.fromkeys(p[0] for p in prods))
        name = distinct[0] + (f"+{len(distinct) - 1}" if len(distinct) > 1 else "")
        named.append((order[prods[0][1]], r, name))
    return {r: name for _, r, name in sorted(named)}


def _segments(b: _Builder, names: dict[int, str], segs) -> tuple[Segment, ...]:
    out: list[Segment] = []
    for s in b.expand_segs(segs):
        g = names.get(b.find(s.var))
        if g is None:
            length = s.size * s.inner
            if out and out[-1].group is None:
                length += out.pop().length
            out.append(Segment(None, length, 1))
        else:
            out.append(Segment(g, s.size, s.inner, s.start))
    return tuple(out)


def permutation_spec(model: nn.Module, example_input: torch.Tensor, partial: bool = False,
                     buffers: dict[str, torch.Tensor] | None = None) -> PermutationSpec:
    """Derive the :class:`PermutationSpec` of ``model`` from its torch.fx graph.

    ``example_input``: a batch the model accepts, e.g. ``torch.rand(2, 3, 32, 32)``
    (used once, in eval mode without gradients, for the tensor shapes). Raises
    ``UserError`` naming the module / node when the graph cannot be traced or contains
    an operation that would be mis-permuted; with ``partial=True`` such an operation's
    inputs and parameters are left in place instead (listed in ``spec.fixed``).
    ``model`` may live on the meta device; ``buffers`` (full name -> tensor) are then its
    real buffers, for rules that run a module (:mod:`.meta`).
    """
    gm = trace(model, example_input)
    b = _Builder(gm, model, partial, buffers)
    b.run()
    names = _group_names(b)
    groups = {name: b.sizes[r] for r, name in names.items()}
    order = {k: i for i, k in enumerate(model.state_dict(keep_vars=True))}
    axes = []
    for key in sorted(b.regs, key=lambda k: order.get(k, len(order))):
        for axis in sorted(b.regs[key]):
            segs = _segments(b, names, b.regs[key][axis])
            if any(s.group is not None for s in segs):
                axes.append(AxisSpec(key, axis, segs))
    blocks = {names[r]: bl for r, bl in b.blocks.items() if r in names}
    return PermutationSpec(groups, axes, find_taps(b, names), gm, blocks, b.fixed)


__all__ = ["AxisSpec", "PermutationSpec", "Segment", "permutation_spec"]
