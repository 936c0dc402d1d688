"""Rules for layers with weights (Linear, Conv, normalisation, PReLU, ...), registered
in :mod:`.registry`, and the dispatcher that picks the rule of every graph node (see
:mod:`.rules` for the states).

A Linear / Conv layer's output units start a fresh union-find variable (a permutation
group); the units of its input permute the weight's input axis. Normalisation layers
permute their per-channel parameters and running statistics with the units they see.
"""

from __future__ import annotations

from torch import fx, nn

from robustpath.align import registry
from robustpath.align.registry import register_rule
from robustpath.align.rules import (
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
    main_input,
    pad,
    passthrough,
    reduce,
    shape_query,
    softmax,
    spatial,
    unknown,
)
from robustpath.align.shapes import expand, getitem, repeat, reshape, transpose


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
        if transposed:
            if isinstance(st, Perm):
                b.refuse(node, f"transposed grouped convolution (groups={groups}) on permuted "
                               "units")
            b.pin(wkey)
            if bkey:
                b.pin(bkey)
            return FIXED_T
        # groups stay in place; each group's output units are a group of their own, and
        # the input units of every group share one order (the weight's input axis is
        # shared by all groups): the input variable becomes `groups` copies of it
        if isinstance(st, Perm):
            if st.axis != unit_axis:
                b.refuse(node, f"permuted units on axis {st.axis}, the layer mixes axis "
                               f"{unit_axis}")
            per_in = in_units // groups
            shared = Seg(b.new_var(per_in, f"{name}:in", node), per_in, 1)
            b.union_segs(st.segs, (shared,) * groups, node)
            b.register(wkey, w_in, (shared,), node)
        per_out = out_units // groups
        segs = tuple(Seg(b.new_var(per_out, f"{name}:{g}", node), per_out, 1)
                     for g in range(groups))
        b.register(wkey, w_out, segs, node)
        if bkey:
            b.register(bkey, 0, segs, node)
        return Perm(unit_axis, segs)
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


def _key(b, node: fx.Node, attr: str) -> str | None:
    return b.key(node.target, attr) if getattr(b.module(node), attr, None) is not None else None


@register_rule(nn.Linear)
def linear_rule(b, node: fx.Node):
    m = b.module(node)
    return affine(b, node, arg(node, 0, "input"), node.target, _key(b, node, "weight"),
                  _key(b, node, "bias"), m.out_features, "linear")


@register_rule(nn.modules.conv._ConvNd)
def conv_rule(b, node: fx.Node):
    m = b.module(node)
    return affine(b, node, arg(node, 0, "input"), node.target, _key(b, node, "weight"),
                  _key(b, node, "bias"), m.out_channels, "conv", m.groups, m.transposed)


@register_rule(nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm,
               nn.GroupNorm)
def channel_norm_rule(b, node: fx.Node):
    m = b.module(node)
    st = main_input(b, node, arg(node, 0, "input"))
    if not isinstance(st, Perm):
        return FIXED_T
    if st.axis != 1:
        b.refuse(node, f"normalisation over axis 1, permuted units on axis {st.axis}")
    if isinstance(m, nn.GroupNorm) and m.num_groups not in (1, m.num_channels):
        b.refuse(node, f"GroupNorm with {m.num_groups} groups mixes neighbouring units")
    for attr in ("weight", "bias", "running_mean", "running_var"):
        if _key(b, node, attr):
            b.register(_key(b, node, attr), 0, st.segs, node)
    return st


def layer_norm(b, node: fx.Node, x, ndims: int, wkey: str | None, bkey: str | None):
    """LayerNorm over the last ``ndims`` axes: its statistics do not depend on the order
    of the units; the affine parameters move with units on a normalised axis."""
    st = main_input(b, node, x)
    if not isinstance(st, Perm):
        for k in (wkey, bkey):
            if k:
                b.pin(k)
        return FIXED_T
    first = len(b.shape(x)) - ndims
    if st.axis >= first:
        for k in (wkey, bkey):
            if k:
                b.register(k, st.axis - first, st.segs, node)
    return st


@register_rule(nn.LayerNorm)
def layer_norm_rule(b, node: fx.Node):
    m = b.module(node)
    return layer_norm(b, node, arg(node, 0, "input"), len(m.normalized_shape),
                      _key(b, node, "weight"), _key(b, node, "bias"))


@register_rule("layer_norm")
def functional_layer_norm_rule(b, node: fx.Node):
    """``F.layer_norm(x, shape, weight, bias)`` (ConvNeXt's LayerNorm2d)."""
    keys = []
    for i, name in ((2, "weight"), (3, "bias")):
        a = arg(node, i, name)
        st = b.state(a) if isinstance(a, fx.Node) else None
        if a is not None and not isinstance(st, Attr):
            return unknown(b, node, "layer_norm whose affine parameters are not plain "
                                    "parameters")
        keys.append(st.key if st is not None else None)
    return layer_norm(b, node, arg(node, 0, "input"), len(arg(node, 1, "normalized_shape")),
                      *keys)


@register_rule(nn.PReLU)
def prelu_rule(b, node: fx.Node):
    m = b.module(node)
    if m.weight.numel() == 1:
        return activation(b, node)
    st = main_input(b, node, arg(node, 0, "input"))
    if isinstance(st, Perm):
        if st.axis != 1:
            b.refuse(node, "PReLU slopes are per channel on axis 1")
        b.register(_key(b, node, "weight"), 0, st.segs, node)
        b.activations.append(node)
        return st
    return FIXED_T


@register_rule("torchvision.ops.stochastic_depth.stochastic_depth")
def stochastic_depth_rule(b, node: fx.Node):
    """Stochastic depth (Huang et al. 2016; EfficientNet, ConvNeXt) is the identity in
    eval mode, the mode the graph is traced in."""
    if arg(node, 3, "training", True) and arg(node, 1, "p") != 0:
        b.refuse(node, "stochastic depth in training mode")
    return passthrough(b, node)


register_rule(*ACT_MODULES)(activation)
register_rule(*PASS_MODULES)(passthrough)
register_rule(*SPATIAL_MODULES)(spatial)
register_rule(*PAD_MODULES)(lambda b, node: pad(b, node, b.module(node).padding))
register_rule(nn.Flatten, nn.Unflatten)(reshape)
register_rule(nn.Softmax, nn.LogSoftmax)(softmax)


def module_rule(b, node: fx.Node):
    m = b.module(node)
    rule = registry.module_rule(m)
    if rule is None:
        return unknown(b, node, f"no permutation rule for {type(m).__name__}")
    return rule(b, node)


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


for _names, _rule in ((ACTIVATIONS, activation), (PASSTHROUGH, passthrough), (BINARY, binary),
                      (RESHAPE, reshape), (SPATIAL, spatial), (REDUCE, reduce),
                      (SOFTMAX, softmax), (SHAPE_QUERIES, shape_query),
                      ({"transpose", "permute", "t"}, transpose),
                      ({"cat", "concat", "concatenate"}, cat), ({"pad"}, pad),
                      ({"getitem"}, getitem), ({"getattr"}, getattr_fn),
                      ({"expand", "expand_as"}, expand), ({"repeat"}, repeat),
                      ({"linear", "conv1d", "conv2d", "conv3d"}, None)):
    for _n in _names:
        registry.FUNCTION_RULES[_n] = _rule or (lambda b, node, n=_n: functional_affine(b, node, n))


def apply_rule(b, node: fx.Node):
    """The state of ``node``'s output (see module docstring)."""
    if node.op == "placeholder":
        return FIXED_T
    if node.op == "get_attr":
        return Attr(b.key("", node.target))
    if node.op == "call_module":
        return module_rule(b, node)
    name = function_name(node)
    target = node.target if node.op == "call_function" else None
    rule = registry.function_rule(target, name) if (name or target is not None) else None
    if rule is None:
        return unknown(b, node)
    return rule(b, node)
