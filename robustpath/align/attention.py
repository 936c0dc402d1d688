"""Permutation rules for multi-head attention (see :mod:`.blocks` for what may move).

Each attention layer gets one group of ``2 * dim`` units with :class:`~.blocks.Blocks`
``(heads, (head_dim, head_dim))``: the query/key units (units ``0 .. dim``: the rows of
both the query and the key projection) and the value units (``dim .. 2 dim``: the rows
of the value projection and the input columns of the output projection). The input
columns of the projections move with the stream they read (a residual stream through
LayerNorm), the output projection starts a fresh group like a ``Linear``.

Rules here:

* ``nn.MultiheadAttention`` (packed ``in_proj_weight`` or separate ``q/k/v_proj_weight``,
  ``bias_k``/``bias_v``; batch first or not): torchvision's ``VisionTransformer``.
* :func:`qkv_attention`: a module with one ``Linear`` computing ``[q | k | v]``
  (head-major, as ``reshape(B, N, 3, heads, head_dim)`` reads it), scaled dot-product
  attention per head, and an output ``Linear``: timm's ``Attention`` is registered; a
  user's own such class takes one line, e.g.
  ``register_rule(MyAttention)(qkv_attention("to_qkv", "to_out", "heads"))``. Because
  the module's forward is opaque to the rule, it is checked numerically on the example
  shape (a random valid permutation of the module's units must leave its output
  unchanged, float64, 1e-9 relative), so an attention with rotary embeddings or
  qk-normalisation is refused rather than mis-permuted.

Activation matching observes the query, key and value units by applying the
projection rows to the tapped input (:class:`~.spec.Tap` ``proj``).
"""

from __future__ import annotations

import copy

import torch
from torch import fx, nn

from robustpath.align.blocks import Blocks
from robustpath.align.meta import buffers_under, is_meta, materialise
from robustpath.align.registry import register_rule
from robustpath.align.rules import FIXED_T, Perm, Seg, Tup, arg, main_input


def _input(b, node: fx.Node, x):
    """State of a tensor read by attention (units must be on the last axis)."""
    st = main_input(b, node, x) if isinstance(x, fx.Node) else FIXED_T
    if isinstance(st, Perm) and st.axis != len(b.shape(x)) - 1:
        b.refuse(node, f"attention reads features on the last axis, permuted units on axis "
                       f"{st.axis}")
    return st


def _attention_units(b, node: fx.Node, dim: int, heads: int) -> tuple[Seg, Seg]:
    if dim % heads:
        b.refuse(node, f"{dim} features do not split into {heads} heads")
    hd = dim // heads
    var = b.new_var(2 * dim, node.target, node, Blocks(heads, (hd, hd)))
    return Seg(var, dim, 1, 0), Seg(var, dim, 1, dim)


def _read_columns(b, node: fx.Node, wkey: str, states) -> None:
    """One weight axis reads all of ``states``: they share units, or all stay fixed."""
    perms = [s for s in states if isinstance(s, Perm)]
    if len(perms) < len(states):
        for s in perms:
            b.fix(s.segs)
        return
    for s in perms:
        b.register(wkey, 1, s.segs, node)


def _output(b, node: fx.Node, name: str, wkey: str, bkey: str | None, v: Seg, out: int,
            nd: int) -> Perm:
    b.register(wkey, 1, (v,), node)
    segs = (Seg(b.new_var(out, name, node), out, 1),)
    b.register(wkey, 0, segs, node)
    if bkey:
        b.register(bkey, 0, segs, node)
    return Perm(nd - 1, segs)


@register_rule(nn.MultiheadAttention)
def multihead_attention_rule(b, node: fx.Node):
    m: nn.MultiheadAttention = b.module(node)
    name = node.target
    nodes = [arg(node, 0, "query"), arg(node, 1, "key"), arg(node, 2, "value")]
    states = [_input(b, node, x) for x in nodes]
    dim = m.embed_dim
    qk, v = _attention_units(b, node, dim, m.num_heads)
    bias = b.key(name, "in_proj_bias") if m.in_proj_bias is not None else None
    if m._qkv_same_embed_dim:
        w = b.key(name, "in_proj_weight")
        b.register(w, 0, (qk, qk, v), node)
        _read_columns(b, node, w, states)
        sources = [(w, 0), (w, dim), (w, 2 * dim)]
    else:
        sources = []
        for i, (attr, seg) in enumerate((("q_proj_weight", qk), ("k_proj_weight", qk),
                                         ("v_proj_weight", v))):
            w = b.key(name, attr)
            b.register(w, 0, (seg,), node)
            _read_columns(b, node, w, [states[i]])
            sources.append((w, 0))
    if bias:
        b.register(bias, 0, (qk, qk, v), node)
    for extra, seg in (("bias_k", qk), ("bias_v", v)):
        if getattr(m, extra) is not None:
            b.register(b.key(name, extra), 2, (seg,), node)
    for i, (x, seg, (w, row)) in enumerate(zip(nodes, (qk, qk, v), sources)):
        if isinstance(x, fx.Node):
            b.add_tap(seg, x, len(b.shape(x)) - 1, (w, row, bias, i * dim))
    out = _output(b, node, f"{name}.out_proj", b.key(name, "out_proj.weight"),
                  b.key(name, "out_proj.bias") if m.out_proj.bias is not None else None, v,
                  m.out_proj.out_features, len(b.shape(nodes[0])))
    return Tup((out, FIXED_T))


def _check_invariant(b, node: fx.Node, m: nn.Module, qkv: str, proj: str, heads: int,
                     dim: int) -> None:
    """A random valid permutation of the module's attention units keeps its output.

    A module on the meta device (the zoo derives specs without weights) is checked on
    a CPU copy with random weights and the model's real buffers
    (:func:`.meta.materialise`), once per module configuration and input shape."""
    if is_meta(m):
        key = (type(m), tuple((n, tuple(p.shape)) for n, p in m.named_parameters()), qkv,
               proj, heads, dim, tuple(b.shape(arg(node, 0, "x"))))
        if key in b.meta_checked:
            return
        _check_invariant(b, node, materialise(m, buffers_under(b.real_buffers, node.target)),
                         qkv, proj, heads, dim)  # refuses when it fails
        b.meta_checked.add(key)
        return
    gen = torch.Generator().manual_seed(0)
    p = Blocks(heads, (dim // heads, dim // heads)).random(gen)
    rows = torch.cat([p[:dim], p[:dim] + dim, p[dim:] + dim])  # q, k share; v after them
    ref = copy.deepcopy(m).double().eval()
    new = copy.deepcopy(ref)
    lin_in, lin_out = getattr(new, qkv), getattr(new, proj)
    with torch.no_grad():
        lin_in.weight.copy_(lin_in.weight[rows])
        if lin_in.bias is not None:
            lin_in.bias.copy_(lin_in.bias[rows])
        lin_out.weight.copy_(lin_out.weight[:, p[dim:] - dim])
        x = torch.randn(*b.shape(arg(node, 0, "x")), generator=gen, dtype=torch.float64)
        y0, y1 = ref(x), new(x)
    if not torch.allclose(y0, y1, rtol=0, atol=1e-9 * float(y0.abs().max()) + 1e-12):
        b.refuse(node, f"{type(m).__name__} does not compute multi-head attention over "
                       f"{qkv}'s [q | k | v] rows (head-major) read back by {proj}: a "
                       "random head permutation changes its output")


def qkv_attention(qkv: str = "qkv", proj: str = "proj", heads: str = "num_heads"):
    """A rule for attention modules computing ``[q | k | v] = self.<qkv>(x)`` with one
    ``Linear`` (``3 * dim`` outputs, each of q, k, v head-major), scaled dot-product
    attention per head, and ``self.<proj>`` (a ``Linear``) on the heads concatenated;
    ``self.<heads>`` is the number of heads. Other parameters in the module are refused."""

    def rule(b, node: fx.Node):
        m = b.module(node)
        lin_in, lin_out, h = getattr(m, qkv), getattr(m, proj), int(getattr(m, heads))
        name = node.target
        x = arg(node, 0, "x")
        extra = [n for n, _ in m.named_parameters()
                 if n.split(".")[0] not in (qkv, proj)]
        if extra:
            b.refuse(node, f"parameters {', '.join(extra)} are not covered by the qkv "
                           "attention rule (qk-normalisation?)")
        if lin_in.out_features % 3:
            b.refuse(node, f"{qkv} has {lin_in.out_features} outputs, not 3 * dim")
        dim = lin_in.out_features // 3
        _check_invariant(b, node, m, qkv, proj, h, dim)
        st = _input(b, node, x)
        qk, v = _attention_units(b, node, dim, h)
        w = b.key(name, f"{qkv}.weight")
        bias = b.key(name, f"{qkv}.bias") if lin_in.bias is not None else None
        b.register(w, 0, (qk, qk, v), node)
        if bias:
            b.register(bias, 0, (qk, qk, v), node)
        _read_columns(b, node, w, [st])
        for seg, row in ((qk, 0), (qk, dim), (v, 2 * dim)):
            b.add_tap(seg, x, len(b.shape(x)) - 1, (w, row, bias, row))
        return _output(b, node, f"{name}.{proj}", b.key(name, f"{proj}.weight"),
                       b.key(name, f"{proj}.bias") if lin_out.bias is not None else None, v,
                       lin_out.out_features, len(b.shape(x)))

    return rule


register_rule("timm.models.vision_transformer.Attention",
              "timm.layers.attention.Attention")(qkv_attention())

__all__ = ["multihead_attention_rule", "qkv_attention"]
