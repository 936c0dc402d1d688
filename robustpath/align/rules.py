"""Propagation rules: how each graph operation moves a unit permutation.

Every tensor in the traced graph gets a *state*:

* :data:`FIXED_T` - its units are never permuted (the input image, the normalised
  input, anything computed only from them, the logits);
* :class:`Perm` - one axis carries permuted units, laid out as consecutive
  :class:`Seg` ments. A segment is ``size`` units of one union-find variable, each unit
  owning ``inner`` consecutive indices along the axis (``inner`` is 1 for channels and
  ``H*W`` after a flatten, where a channel permutation becomes a block permutation);
  segments come from concatenation;
* :class:`Attr` - a parameter/buffer read with ``get_attr`` (e.g. the mean/std buffers
  of input normalisation), permuted only where it meets a permuted tensor;
* :data:`NON_TENSOR` - shapes, sizes, Python values.

The dispatcher (:func:`.layers.apply_rule`) looks rules up by module class
(``call_module``) or by function / method name (``call_function`` from torch /
operator, ``call_method``); this module holds the rules for weightless operations
(:mod:`.shapes` those that move axes). An operation without a rule
is allowed only when none of its inputs carries permuted units (its output is then
fixed and its parameters are pinned, i.e. never permuted); otherwise the builder
refuses with a :class:`~robustpath.errors.UserError` naming the node.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import fx, nn

FIXED = 0  # the union-find variable meaning "never permuted"


class _Marker:
    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


FIXED_T = _Marker("FIXED")
NON_TENSOR = _Marker("NON_TENSOR")


@dataclass(frozen=True)
class Attr:
    """A parameter/buffer ``key`` read directly; ``lead`` axes were prepended (expand)."""

    key: str
    lead: int = 0


@dataclass(frozen=True)
class Seg:
    """``size`` units of variable ``var``, from its unit ``start`` on (attention groups hold
    the query/key units first and the value units after them), ``inner`` indices each."""

    var: int
    size: int
    inner: int = 1
    start: int = 0


@dataclass(frozen=True)
class Perm:
    axis: int
    segs: tuple[Seg, ...]


@dataclass(frozen=True)
class Tup:
    """A tuple output (e.g. ``nn.MultiheadAttention``'s ``(output, weights)``)."""

    items: tuple


ACTIVATIONS = {"relu", "relu_", "relu6", "leaky_relu", "leaky_relu_", "elu", "elu_", "selu",
               "celu", "gelu", "silu", "mish", "sigmoid", "sigmoid_", "tanh", "tanh_",
               "hardtanh", "hardtanh_", "hardswish", "hardsigmoid", "softplus", "softsign",
               "logsigmoid", "rrelu"}
PASSTHROUGH = {"dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout",
               "feature_alpha_dropout", "contiguous", "clone", "detach", "float", "to", "type",
               "abs", "neg", "exp", "clamp", "clamp_", "clip", "clamp_min", "clamp_max", "sqrt",
               "square"}
BINARY = {"add", "add_", "iadd", "sub", "sub_", "isub", "mul", "mul_", "imul", "truediv", "div",
          "div_", "itruediv", "maximum", "minimum"}
RESHAPE = {"flatten", "view", "reshape", "view_as", "reshape_as", "squeeze", "unsqueeze",
           "unflatten"}
SPATIAL = {"max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d",
           "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d",
           "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d", "lp_pool1d",
           "lp_pool2d", "interpolate", "upsample", "upsample_nearest", "upsample_bilinear"}
REDUCE = {"mean", "sum", "amax", "amin", "logsumexp"}
SOFTMAX = {"softmax", "log_softmax"}
SHAPE_QUERIES = {"size", "dim", "numel", "len"}
SHAPE_ATTRS = {"shape", "ndim", "dtype", "device"}
_TRUSTED_MODULES = ("torch", "_operator", "operator", "builtins", "math")

ACT_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
                nn.Mish, nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid,
                nn.Softplus, nn.Softsign, nn.LogSigmoid, nn.RReLU)
PASS_MODULES = (nn.Identity, nn.modules.dropout._DropoutNd)
SPATIAL_MODULES = (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
                    nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd,
                    nn.modules.pooling._LPPoolNd, nn.Upsample)
PAD_MODULES = (nn.modules.padding._ConstantPadNd, nn.modules.padding._ReflectionPadNd,
                nn.modules.padding._ReplicationPadNd)


def arg(node: fx.Node, i: int, name: str, default=None):
    """Positional argument ``i`` or keyword ``name`` of a node."""
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


def function_name(node: fx.Node) -> str | None:
    """The rule name of a call_function/call_method node (None: untrusted function)."""
    if node.op == "call_method":
        return str(node.target)
    mod = getattr(node.target, "__module__", None) or "builtins"
    if not mod.startswith(_TRUSTED_MODULES):
        return None
    return getattr(node.target, "__name__", None)


# ----------------------------------------------------------------------------- helpers
def main_input(b, node: fx.Node, x):
    """State of an operation's main tensor input; parameters read directly are pinned."""
    st = b.state(x)
    if isinstance(st, Attr):
        b.pin(st.key)
        return FIXED_T
    return st


def _norm_axis(d: int, ndim: int) -> int:
    return d % ndim if ndim else 0


def _flat_nodes(node: fx.Node) -> list[fx.Node]:
    out: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), out.append)
    return out


def passthrough(b, node: fx.Node):
    """Element-wise unary op: units keep their place."""
    x = arg(node, 0, "input")
    st = main_input(b, node, x)
    others = [a for a in _flat_nodes(node) if a is not x and b.state(a) is not NON_TENSOR]
    if isinstance(st, Perm) and others:
        b.refuse(node, "element-wise op with extra tensor arguments")
    for a in others:
        main_input(b, node, a)
    return st if isinstance(st, Perm) else FIXED_T


def activation(b, node: fx.Node):
    st = passthrough(b, node)
    if isinstance(st, Perm):
        b.activations.append(node)
    return st


def binary(b, node: fx.Node):
    """Broadcasting element-wise op (add, mul, ...): all permuted operands share units;
    a fixed operand varying along the permuted axis pins them; a parameter/buffer
    varying along it is permuted with them."""
    out_shape = b.shape(node)
    if out_shape is None:
        return unknown(b, node)
    nd = len(out_shape)
    perms, others = [], []
    for x in _flat_nodes(node):
        st = b.state(x)
        if st is NON_TENSOR:
            continue
        shp = b.shape(x) or ()
        off = nd - len(shp)
        if isinstance(st, Perm):
            perms.append((st, st.axis + off))
        else:
            others.append((st, shp, off))
    if not perms:
        for st, _, _ in others:
            if isinstance(st, Attr):
                b.pin(st.key)
        return FIXED_T
    segs, axis = perms[0][0].segs, perms[0][1]
    for st, ax in perms[1:]:
        if ax != axis:
            b.refuse(node, f"operands carry permuted units on different axes ({axis} and {ax})")
        b.union_segs(segs, st.segs, node)
    for st, shp, off in others:
        local = axis - off
        if local < 0 or shp[local] == 1:
            continue  # broadcast along the permuted axis: the same value for every unit
        if isinstance(st, Attr):
            register_attr(b, st, local, segs, node)
        else:
            b.fix(segs)
    return Perm(axis, segs)


def register_attr(b, st: Attr, local: int, segs, node: fx.Node) -> None:
    """Parameter ``st`` meets permuted units on axis ``local`` of the tensor read: permute
    its matching axis (nothing when that axis was added or is broadcast from size 1)."""
    axis = local - st.lead
    t = b.tensors.get(st.key)
    if axis < 0 or (t is not None and t.dim() > axis and t.shape[axis] == 1):
        return
    b.register(st.key, axis, segs, node)


def spatial(b, node: fx.Node):
    """Pooling / resizing over the trailing spatial axes: channel axis 1 unchanged."""
    x = arg(node, 0, "input")
    st = main_input(b, node, x)
    if not isinstance(st, Perm):
        return FIXED_T
    ins, outs = b.shape(x), b.shape(node)
    if outs is None or len(ins) < 3 or st.axis != 1 or len(outs) != len(ins):
        b.refuse(node, "pooling/resizing must act on spatial axes with units on axis 1")
    return st


def pad(b, node: fx.Node, pads=None):
    """Padding (``F.pad`` or a padding module's ``padding``): ``pads`` holds (before,
    after) pairs for the trailing axes, last axis first. Padding the permuted axis by a
    nonzero (or traced) amount is refused; a zero pair there (Swin's channels-last
    ``F.pad(x, (0, 0, 0, pw, 0, ph))``) keeps the units."""
    x = arg(node, 0, "input")
    st = main_input(b, node, x)
    if not isinstance(st, Perm):
        return FIXED_T
    pads = tuple(arg(node, 1, "pad") if pads is None else pads)
    j = len(b.shape(x)) - 1 - st.axis  # the permuted axis, counted from the last
    if j < len(pads) // 2 and any(not (isinstance(v, int) and v == 0)
                                  for v in pads[2 * j:2 * j + 2]):
        b.refuse(node, "padding along the permuted axis")
    return st


def reduce(b, node: fx.Node):
    """mean / sum / amax ...: reducing over the permuted axis gives a fixed result."""
    x = arg(node, 0, "input")
    st = main_input(b, node, x)
    if not isinstance(st, Perm):
        return FIXED_T
    dims = arg(node, 1, "dim", node.kwargs.get("axis"))
    keep = bool(arg(node, 2, "keepdim", False))
    nd = len(b.shape(x))
    if dims is None:
        return FIXED_T
    dims = [_norm_axis(d, nd) for d in (dims if isinstance(dims, (tuple, list)) else [dims])]
    if st.axis in dims:
        return FIXED_T
    return Perm(st.axis if keep else st.axis - sum(d < st.axis for d in dims), st.segs)


def softmax(b, node: fx.Node):
    """Softmax is permutation-equivariant along any axis."""
    st = main_input(b, node, arg(node, 0, "input"))
    return st if isinstance(st, Perm) else FIXED_T


def cat(b, node: fx.Node):
    """Concatenation: along the permuted axis the parts' segments follow each other in
    order (a fixed part is a fixed segment); along another axis the parts share units."""
    parts = arg(node, 0, "tensors")
    outs = b.shape(node)
    dim = _norm_axis(arg(node, 1, "dim", 0), len(outs))
    raw = [b.state(p) for p in parts]
    perms = [s for s in raw if isinstance(s, Perm)]
    if not perms or any(s.axis == dim for s in perms):
        raw = [main_input(b, node, p) for p in parts]
    states = raw
    if not perms:
        return FIXED_T
    if any(s.axis == dim for s in perms):
        if any(s.axis != dim for s in perms):
            b.refuse(node, "concatenated parts carry permuted units on different axes")
        segs: list[Seg] = []
        for p, s in zip(parts, states):
            segs += s.segs if isinstance(s, Perm) else [Seg(FIXED, b.shape(p)[dim], 1)]
        return Perm(dim, tuple(segs))
    first = perms[0]
    for s in perms[1:]:
        if s.axis != first.axis:
            b.refuse(node, "concatenated parts carry permuted units on different axes")
        b.union_segs(first.segs, s.segs, node)
    for s in states:  # a parameter (e.g. a class token) is permuted with the stream
        if isinstance(s, Attr):
            register_attr(b, s, first.axis, first.segs, node)
    if any(not isinstance(s, (Perm, Attr)) for s in states):
        b.fix(first.segs)
    return first


def shape_query(b, node: fx.Node):
    return NON_TENSOR


def getattr_fn(b, node: fx.Node):
    if node.args[1] in SHAPE_ATTRS:
        return NON_TENSOR
    return unknown(b, node)


def unknown(b, node: fx.Node, reason: str = "no permutation rule for this operation"):
    """Ops without a rule: allowed on fixed inputs only (output fixed, parameters pinned)."""
    for a in _flat_nodes(node):
        st = b.state(a)
        if isinstance(st, Perm) or (isinstance(st, Tup) and
                                    any(isinstance(i, Perm) for i in st.items)):
            b.refuse(node, reason)
        if isinstance(st, Attr):
            b.pin(st.key)
    if node.op == "call_module":
        mod = b.module(node)
        for n, _ in list(mod.named_parameters()) + list(mod.named_buffers()):
            b.pin(b.key(node.target, n))
    return FIXED_T if "tensor_meta" in node.meta else NON_TENSOR
