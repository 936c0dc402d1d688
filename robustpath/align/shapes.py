"""Propagation rules for operations that move axes: expand / repeat, reshape / view /
flatten, transpose / permute, and indexing (see :mod:`.rules` for the states)."""

from __future__ import annotations

import math

from torch import fx

from robustpath.align.rules import (
    FIXED,
    FIXED_T,
    NON_TENSOR,
    Attr,
    Perm,
    Seg,
    Tup,
    _norm_axis,
    arg,
    function_name,
    main_input,
)


def expand(b, node: fx.Node):
    """expand / expand_as: a parameter stays a parameter (a class token expanded over the
    batch is permuted where it meets the stream); permuted units keep their axis."""
    x = arg(node, 0, "input")
    st = b.state(x)
    lead = len(b.shape(node)) - len(b.shape(x))
    if isinstance(st, Attr):
        return Attr(st.key, st.lead + lead)
    if isinstance(st, Perm):
        if b.shape(node)[st.axis + lead] != b.shape(x)[st.axis]:
            b.refuse(node, "expanding the permuted axis")
        return Perm(st.axis + lead, st.segs)
    return FIXED_T


def repeat(b, node: fx.Node):
    """``x.repeat(*sizes)``: tiling along the permuted axis is refused, elsewhere the
    units keep their axis (shifted by new leading axes)."""
    x = arg(node, 0, "input")
    st = main_input(b, node, x)
    if not isinstance(st, Perm):
        return FIXED_T
    sizes = node.args[1:]
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
        sizes = sizes[0]
    lead = len(sizes) - len(b.shape(x))
    if sizes[st.axis + lead] != 1:
        b.refuse(node, "repeating the permuted axis")
    return Perm(st.axis + lead, st.segs)


def reshape(b, node: fx.Node):
    """view / reshape / flatten / (un)squeeze: find the output axis that holds the permuted
    units whole; a unit owning ``inner`` indices with trailing size ``S`` becomes a block
    of ``inner * S / S'`` indices. Splitting a unit across axes is refused."""
    x = arg(node, 0, "input")
    st = main_input(b, node, x)
    if not isinstance(st, Perm):
        return FIXED_T
    ins, outs = b.shape(x), b.shape(node)
    if outs is None:
        b.refuse(node, "reshape without a tensor output")
    a = st.axis
    lead, trail = math.prod(ins[:a]), math.prod(ins[a + 1:])
    span = ins[a] * trail
    candidates, prefix = [], 1
    for i, d in enumerate(outs):
        if prefix == lead:
            t2 = math.prod(outs[i + 1:])
            if d * t2 == span and t2 > 0 and all((s.inner * trail) % t2 == 0 for s in st.segs
                                                 if s.var != FIXED) and \
                    all((s.size * s.inner * trail) % t2 == 0 for s in st.segs):
                candidates.append(i)
        prefix *= d
    if not candidates:
        users = {function_name(u) for u in node.users}
        what = " (a channel shuffle: view -> transpose -> view interleaves the units of " \
            "the groups, a fixed permutation this spec does not carry)" if "transpose" in users \
            else " (attention heads split inline: register the attention module, e.g. " \
            "register_rule(MyAttention)(qkv_attention(...)))" if "permute" in users else ""
        b.refuse(node, f"reshape {tuple(ins)} -> {tuple(outs)} splits the permuted units of "
                       f"axis {a} across axes{what}")
    i = next((c for c in candidates if outs[c] > 1), candidates[0])
    t2 = math.prod(outs[i + 1:])
    segs = tuple(Seg(s.var, s.size * s.inner * trail // t2, 1) if s.var == FIXED
                 else Seg(s.var, s.size, s.inner * trail // t2) for s in st.segs)
    return Perm(i, segs)


def transpose(b, node: fx.Node):
    x = arg(node, 0, "input")
    st = main_input(b, node, x)
    if not isinstance(st, Perm):
        return FIXED_T
    nd = len(b.shape(x))
    name = function_name(node)
    if name == "t":
        order = list(range(nd))[::-1]
    elif name == "transpose":
        d0, d1 = _norm_axis(arg(node, 1, "dim0"), nd), _norm_axis(arg(node, 2, "dim1"), nd)
        order = list(range(nd))
        order[d0], order[d1] = d1, d0
    else:
        dims = node.args[1:] if node.op == "call_method" else (arg(node, 1, "dims"),)
        if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
            dims = dims[0]
        order = [_norm_axis(d, nd) for d in dims]
    return Perm(order.index(st.axis), st.segs)


def getitem(b, node: fx.Node):
    """Indexing: shapes and tuples pass through; on a permuted tensor only full slices of
    the permuted axis (with ints / None / ``...`` elsewhere) are allowed."""
    x, idx = node.args[0], node.args[1]
    st = b.state(x)
    if isinstance(st, Tup):
        return st.items[idx] if isinstance(idx, int) and -len(st.items) <= idx < len(st.items) \
            else NON_TENSOR
    if not isinstance(st, Perm):
        if isinstance(st, Attr):
            b.pin(st.key)
        return FIXED_T if b.shape(node) is not None else NON_TENSOR
    items = idx if isinstance(idx, tuple) else (idx,)
    nd = len(b.shape(x))
    consuming = sum(isinstance(i, (int, slice)) for i in items)
    expanded: list = []
    for i in items:
        expanded += [slice(None)] * (nd - consuming) if i is Ellipsis else [i]
    d_in = d_out = 0
    for i in expanded:
        if i is None:
            d_out += 1
        elif isinstance(i, int):
            if d_in == st.axis:
                b.refuse(node, "indexing a single permuted unit")
            d_in += 1
        elif isinstance(i, slice):
            if d_in == st.axis:
                if i != slice(None):
                    b.refuse(node, "slicing the permuted axis")
                new = d_out
            d_in += 1
            d_out += 1
        else:
            b.refuse(node, f"indexing with {type(i).__name__}")
    if st.axis >= d_in:
        new = d_out + st.axis - d_in
    return Perm(new, st.segs)
