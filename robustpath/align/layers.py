"""Rules for layers with weights (Linear, Conv, normalisation, PReLU, ...) and the
dispatcher that picks the rule of every graph node (see :mod:`.rules` for the states).

A Linear / Conv layer's output units start a fresh union-find variable (a permutation
group); the units of its input permute the weight's input axis. Normalisation layers
permute their per-channel parameters and running statistics with the units they see.
"""

from __future__ import annotations

from torch import fx, nn

from .rules import (
    ACT_MODULES,
    ACTIVATIONS,
    BINARY,
    FIXED_T,
    PAD_MODULES,
    PASS_MODULES,
    PASSTHROUGH,
    REDUCE,
    RESHAPE,
    SHAPE_QUERIES,
    SOFTMAX,
    SPATIAL,
    SPATIAL_MODULES,
    Attr,
    Perm,
    Seg,
    activation,
    arg,
    binary,
    cat,
    function_name,
    getattr_fn,
    getitem,
    main_input,
    pad,
    passthrough,
    reduce,
    reshape,
    shape_query,
    softmax,
    spatial,
    transpose,
    unknown,
)


def affine(b, node: fx.Node, x, name: str, wkey: str, bkey: str | None, out_units: int,
           kind: str, groups: int = 1, transposed: bool = False):
    """Linear (units on the last axis) or convolution (units on axis 1): the input's
    units permute the weight's input axis, a fresh group permutes its output axis.
    Depthwise convolutions (groups == in == out channels) pass the input's units on."""
    st = main_input(b, node, x)
    nd = len(b.shape(x))
    unit_axis = nd - 1 if kind == "linear" else 1
    w_in, w_out = (0, 1) if transposed else (1, 0)
    in_units = b.shape(x)[unit_axis]
    if groups != 1:
        if groups == in_units == out_units and not transposed:
            if not isinstance(st, Perm):
                return FIXED_T
            if st.axis != unit_axis:
                b.refuse(node, f"units on axis {st.axis}, the layer mixes axis {unit_axis}")
            b.register(wkey, 0, st.segs, node)
            if bkey:
                b.register(bkey, 0, st.segs, node)
            return st
        if isinstance(st, Perm):
            b.refuse(node, f"grouped convolution (groups={groups}) on permuted units")
        b.pin(wkey)
        if bkey:
            b.pin(bkey)
        return FIXED_T
    if isinstance(st, Perm):
        if st.axis != unit_axis:
            b.refuse(node, f"permuted units on axis {st.axis}, but the layer mixes axis "
                           f"{unit_axis}")
        b.register(wkey, w_in, st.segs, node)
    segs = (Seg(b.new_var(out_units, name, node), out_units, 1),)
    b.register(wkey, w_out, segs, node)
    if bkey:
        b.register(bkey, 0, segs, node)
    return Perm(unit_axis, segs)


def module_rule(b, node: fx.Node):
    m, name = b.module(node), node.target
    x = arg(node, 0, "input")

    def key(attr: str) -> str | None:
        return b.key(name, attr) if getattr(m, attr, None) is not None else None

    if isinstance(m, nn.Linear):
        return affine(b, node, x, name, key("weight"), key("bias"), m.out_features, "linear")
    if isinstance(m, nn.modules.conv._ConvNd):
        return affine(b, node, x, name, key("weight"), key("bias"), m.out_channels, "conv",
                      m.groups, m.transposed)
    if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm,
                      nn.GroupNorm)):
        st = main_input(b, node, x)
        if not isinstance(st, Perm):
            return FIXED_T
        if st.axis != 1:
            b.refuse(node, f"normalisation over axis 1, permuted units on axis {st.axis}")
        if isinstance(m, nn.GroupNorm) and m.num_groups not in (1, m.num_channels):
            b.refuse(node, f"GroupNorm with {m.num_groups} groups mixes neighbouring units")
        for attr in ("weight", "bias", "running_mean", "running_var"):
            if key(attr):
                b.register(key(attr), 0, st.segs, node)
        return st
    if isinstance(m, nn.LayerNorm):
        st = main_input(b, node, x)
        if not isinstance(st, Perm):
            return FIXED_T
        first = len(b.shape(x)) - len(m.normalized_shape)
        if st.axis >= first:
            for attr in ("weight", "bias"):
                if key(attr):
                    b.register(key(attr), st.axis - first, st.segs, node)
        return st
    if isinstance(m, nn.PReLU):
        if m.weight.numel() == 1:
            return activation(b, node)
        st = main_input(b, node, x)
        if isinstance(st, Perm):
            if st.axis != 1:
                b.refuse(node, "PReLU slopes are per channel on axis 1")
            b.register(key("weight"), 0, st.segs, node)
            b.activations.append(node)
            return st
        return FIXED_T
    if isinstance(m, ACT_MODULES):
        return activation(b, node)
    if isinstance(m, PASS_MODULES):
        return passthrough(b, node)
    if isinstance(m, SPATIAL_MODULES):
        return spatial(b, node)
    if isinstance(m, PAD_MODULES):
        return pad(b, node, len(m.padding) // 2)
    if isinstance(m, (nn.Flatten, nn.Unflatten)):
        return reshape(b, node)
    if isinstance(m, (nn.Softmax, nn.LogSoftmax)):
        return softmax(b, node)
    return unknown(b, node, f"no permutation rule for {type(m).__name__}")


def functional_affine(b, node: fx.Node, name: str):
    """F.linear / F.convNd with the weight read from a parameter (get_attr)."""
    x, w = arg(node, 0, "input"), arg(node, 1, "weight")
    bias = arg(node, 2, "bias")
    ws = b.state(w) if isinstance(w, fx.Node) else None
    bs = b.state(bias) if isinstance(bias, fx.Node) else None
    if not isinstance(ws, Attr) or (bias is not None and not isinstance(bs, Attr)):
        return unknown(b, node, "functional layer whose weight is not a plain parameter")
    kind = "linear" if name == "linear" else "conv"
    groups = 1 if kind == "linear" else int(arg(node, 6, "groups", 1))
    out_units = b.shape(node)[-1 if kind == "linear" else 1]
    return affine(b, node, x, ws.key.rsplit(".", 1)[0], ws.key, bs.key if bs else None,
                  out_units, kind, groups)


_BY_NAME = {}
for _names, _rule in ((ACTIVATIONS, activation), (PASSTHROUGH, passthrough), (BINARY, binary),
                      (RESHAPE, reshape), (SPATIAL, spatial), (REDUCE, reduce),
                      (SOFTMAX, softmax), (SHAPE_QUERIES, shape_query),
                      ({"transpose", "permute", "t"}, transpose),
                      ({"cat", "concat", "concatenate"}, cat), ({"pad"}, pad),
                      ({"getitem"}, getitem), ({"getattr"}, getattr_fn)):
    for _n in _names:
        _BY_NAME[_n] = _rule


def apply_rule(b, node: fx.Node):
    """The state of ``node``'s output (see module docstring)."""
    if node.op == "placeholder":
        return FIXED_T
    if node.op == "get_attr":
        return Attr(b.key("", node.target))
    if node.op == "call_module":
        return module_rule(b, node)
    name = function_name(node)
    if node.op == "call_function" and name in ("linear", "conv1d", "conv2d", "conv3d"):
        return functional_affine(b, node, name)
    rule = _BY_NAME.get(name) if name else None
    if rule is None:
        return unknown(b, node)
    return rule(b, node)
