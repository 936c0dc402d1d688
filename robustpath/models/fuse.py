"""Function-preserving graph rewrites that make attack passes cheaper.

Almost all of robustpath's time is spent in forward/backward passes of small
convolutional networks inside PGD. On a CPU the convolutions of ``cnn-small`` take only
about a third of such a pass; the memory-bound layers between them take the rest
(BatchNorm 21 %, ReLU 16 %, max pooling 16 % of a PGD-10 profile at batch 128), and
NCHW max pooling alone took 29 % of a curve-training step. Three rewrites that keep the
function remove most of that work (``python -m benchmarks``, section "fuse"):

1. **Eval-mode BatchNorm folded into the convolution before it.** With running
   statistics ``mu, var``, affine ``gamma, beta`` and ``s = gamma / sqrt(var + eps)``,
   ``bn(conv(x, W, b)) = conv(x, W * s, (b - mu) * s + beta)``: one pass over the
   activations instead of three (forward and backward). Exact in real arithmetic; in
   float32 the logits move by ~1e-6 relative.
2. **ReLU after max pooling instead of before.** ``max`` and ``relu`` commute (relu is
   monotone), so ``maxpool(relu(x)) == relu(maxpool(x))`` bit for bit, gradients
   included; for 2x2 pooling the ReLU then touches 4x fewer elements.
3. **Channels-last (NHWC) activations on CPU**: convolution inputs are restrided to
   NHWC (:func:`nhwc`; a 1-channel image otherwise keeps the whole network NCHW) and
   max pooling runs on NHWC tensors (:class:`ChannelsLastMaxPool`: same values,
   indices and gradients, 3-7x faster than on NCHW). Convolutions that hit a oneDNN
   heap-corruption bug in NHWC (:func:`nhwc_unsafe`) get NCHW inputs. NHWC
   convolutions round differently from NCHW ones (~1e-6 relative).

Rounding differences are harmless for one evaluation, but training is chaotic: a
network trained through the view differs from one trained without it as much as one
trained with another thread count (``studies/results/rerun_check.md``).

:func:`fast_view` returns a :class:`torch.fx.GraphModule` that shares every submodule,
parameter and buffer with the model (nothing is copied, so training through it updates
the model, and :func:`torch.func.functional_call` with the model's parameter names
works on it). A folded pair checks at every call whether its BatchNorm normalises with
running statistics (eval mode with ``track_running_stats``); otherwise, e.g. in train
mode or on :func:`robustpath.paths.bn.batch_stats_copy` networks, it runs the two layers as
they are, so the view is correct in every mode. Models that torch.fx cannot trace
(data-dependent control flow, ``torch.func`` transforms) and models where no rewrite
pattern are returned unchanged, and so are models with forward hooks on any submodule
(a view would bypass them). Views are cached per model object and rebuilt when its
submodules, parameters or buffers are replaced.

``Runtime(fuse=False)`` (:mod:`robustpath.runtime`) turns the rewrites off for a block
(``python -m benchmarks`` times both).
"""

from __future__ import annotations

import weakref

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from robustpath import runtime

_RELUS = {F.relu, torch.relu}
_MAXPOOLS = {F.max_pool2d, torch.max_pool2d}


class FoldedConvBN(nn.Module):
    """``bn(conv(x))`` computed as one convolution with folded weights when ``bn``
    uses running statistics; the two layers as they are otherwise. Holds references
    to (not copies of) ``conv`` and ``bn``."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d):
        super().__init__()
        self.conv, self.bn = conv, bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv, bn = self.conv, self.bn
        if bn.training or bn.running_mean is None or bn.running_var is None:
            return bn(conv(x))
        scale = torch.rsqrt(bn.running_var + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight
        bias = -bn.running_mean * scale
        if conv.bias is not None:
            bias = bias + conv.bias * scale
        if bn.bias is not None:
            bias = bias + bn.bias
        w = conv.weight
        weight = w * scale.view(-1, 1, 1, 1)
        if w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous():
            weight = weight.contiguous(memory_format=torch.channels_last)
        return conv._conv_forward(x, weight, bias)


def nhwc(x: torch.Tensor) -> torch.Tensor:
    """``x`` with channels-last (NHWC) strides when it is a 4-D CPU tensor, else ``x``.

    Unlike ``x.contiguous(memory_format=torch.channels_last)`` this also restrides a
    1-channel image, whose NCHW strides count as channels-last already but make
    oneDNN return NCHW activations. Differentiable (a copy); values unchanged."""
    if x.device.type != "cpu" or x.dim() != 4:
        return x
    n, c, h, w = x.shape
    if x.stride(1) == 1 and x.is_contiguous(memory_format=torch.channels_last):
        return x
    out = torch.empty_strided((n, c, h, w), (h * w * c, 1, w * c, c), dtype=x.dtype,
                              device=x.device)
    return out.copy_(x)


def nhwc_unsafe(conv: nn.Conv2d) -> bool:
    """True for convolutions whose channels-last weight gradient corrupts the heap on
    CPU with torch 2.14 / oneDNN (with 1 thread "double free or corruption" every
    time, with 2 threads intermittent hangs): 1x1 kernels with stride > 1 and 2-4
    input channels (found by scanning kernel 1/3, stride 1/2, 1-8 input and 2-32
    output channels; resnet20's shortcuts at width < 0.5 are such). Their inputs are
    kept NCHW."""
    k, s = conv.kernel_size, conv.stride
    return tuple(k) == (1, 1) and max(s) > 1 and conv.in_channels < 8


def nhwc_unsafe_weights(model: nn.Module) -> set[int]:
    """``id``s of the weights of ``model``'s :func:`nhwc_unsafe` convolutions, which
    must stay in the default layout when the rest goes channels-last."""
    return {id(m.weight) for m in model.modules()
            if isinstance(m, nn.Conv2d) and nhwc_unsafe(m)}


def nchw(x: torch.Tensor) -> torch.Tensor:
    """``x`` with exactly the default (NCHW) strides on CPU. ``x.contiguous()`` is not
    enough: a tensor with 1x1 spatial size or one channel counts as contiguous in
    either layout, and oneDNN then still picks NHWC from its strides."""
    if x.device.type != "cpu" or x.dim() != 4:
        return x
    n, c, h, w = x.shape
    if x.stride() == (c * h * w, h * w, w, 1):
        return x
    return torch.empty(x.shape, dtype=x.dtype, device=x.device).copy_(x)


class ChannelsLastMaxPool(nn.Module):
    """``pool(nhwc(x))``: PyTorch's CPU max pooling is about 7x slower on NCHW than
    on NHWC tensors (6.7 vs 0.9 ms for a ``[128, 16, 28, 28]`` batch, 2 threads).
    Values, indices (first maximum of each window) and gradients are identical in
    both layouts."""

    def __init__(self, pool: nn.MaxPool2d):
        super().__init__()
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(nhwc(x))


def _single_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _is_relu(node: fx.Node, modules: dict) -> bool:
    if node.op == "call_module":
        return type(modules.get(node.target)) is nn.ReLU
    if node.op == "call_function":
        return node.target in _RELUS and len(node.args) == 1 and not node.kwargs.get("inplace")
    return node.op == "call_method" and node.target == "relu" and len(node.args) == 1


def _is_maxpool(node: fx.Node, modules: dict) -> bool:
    if node.op == "call_module":
        m = modules.get(node.target)
        return type(m) is nn.MaxPool2d and not m.return_indices
    return (node.op == "call_function" and node.target in _MAXPOOLS
            and not node.kwargs.get("return_indices", False)
            and not (len(node.args) > 6 and node.args[6]))


def _fold_conv_bn(gm: fx.GraphModule, modules: dict) -> int:
    folded = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or type(modules.get(node.target)) is not nn.BatchNorm2d:
            continue
        src = node.args[0] if node.args else None
        if not (isinstance(src, fx.Node) and src.op == "call_module"
                and type(modules.get(src.target)) is nn.Conv2d and _single_user(src) is node):
            continue
        name = f"_fused_conv_bn_{folded}"
        gm.add_submodule(name, FoldedConvBN(modules[src.target], modules[node.target]))
        with gm.graph.inserting_before(node):
            fused = gm.graph.call_module(name, (src.args[0],))
        node.replace_all_uses_with(fused)
        gm.graph.erase_node(node)
        gm.graph.erase_node(src)
        folded += 1
    return folded


def _pool_before_relu(gm: fx.GraphModule, modules: dict) -> int:
    swapped = 0
    for relu in list(gm.graph.nodes):
        if not _is_relu(relu, modules):
            continue
        pool = _single_user(relu)
        if pool is None or not _is_maxpool(pool, modules) or pool.args[0] is not relu:
            continue
        src = relu.args[0]
        if not isinstance(src, fx.Node) or _single_user(src) is not relu:
            continue   # an in-place ReLU would also have changed what the others read
        # x -> relu -> pool -> users   becomes   x -> pool -> relu -> users
        pool_users = list(pool.users)
        pool.args = (relu.args[0], *pool.args[1:])
        relu.args = (pool, *relu.args[1:])
        pool.append(relu)                       # keep topological order: relu after pool
        for user in pool_users:
            user.replace_input_with(pool, relu)
        swapped += 1
    return swapped


def _nhwc_pools(gm: fx.GraphModule, modules: dict) -> int:
    wrapped = 0
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and _is_maxpool(node, modules):
            name = f"_nhwc_pool_{wrapped}"
            gm.add_submodule(name, ChannelsLastMaxPool(modules[node.target]))
            node.target = name
            wrapped += 1
    return wrapped


def _nhwc_convs(gm: fx.GraphModule, modules: dict) -> int:
    done = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module":
            continue
        m = gm.get_submodule(node.target)
        if not isinstance(m, (nn.Conv2d, FoldedConvBN)) or not isinstance(node.args[0], fx.Node):
            continue
        layout = nchw if nhwc_unsafe(m.conv if isinstance(m, FoldedConvBN) else m) else nhwc
        with gm.graph.inserting_before(node):
            x = gm.graph.call_function(layout, (node.args[0],))
        node.args = (x, *node.args[1:])
        done += 1
    return done


def rewrite(model: nn.Module) -> fx.GraphModule | None:
    """Trace ``model`` and apply the rewrites; ``None`` when it cannot be traced or
    no rewrite applies (then the model itself is the fastest view)."""
    try:
        gm = fx.symbolic_trace(model)
    except Exception:  # noqa: BLE001 - any tracing failure means "use the model as is"
        return None
    modules = dict(gm.named_modules())
    changed = (_fold_conv_bn(gm, modules) + _pool_before_relu(gm, modules)
               + _nhwc_pools(gm, modules) + _nhwc_convs(gm, modules))
    if not changed:
        return None
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()
    # only the root's flag: gm.train() would recurse into the shared layers and undo
    # modes set on purpose (e.g. recompute_bn's BatchNorm-only train mode)
    gm.training = model.training
    return gm


_CACHE: weakref.WeakKeyDictionary[nn.Module, tuple] = weakref.WeakKeyDictionary()


def _signature(model: nn.Module) -> tuple:
    """Identity of every submodule and tensor: a traced view holds references to the
    buffers of modules it traced through (e.g. ``Normalize``), which ``model.to()``
    replaces, so any replaced object means a new trace."""
    return (tuple(id(m) for m in model.modules()),
            tuple(id(t) for t in model.parameters()), tuple(id(t) for t in model.buffers()))


def _hooked(model: nn.Module) -> bool:
    """Forward hooks would be skipped by a traced view (folded layers are not called
    as modules), so hooked models are used as they are."""
    return any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def fast_view(model: nn.Module) -> nn.Module:
    """``model`` itself or an equivalent, faster :class:`torch.fx.GraphModule` sharing
    its submodules (see module docstring). Train/eval flags follow ``model``'s at
    each call."""
    if not runtime.current().fuse or getattr(model, "robustpath_no_fuse", False) or _hooked(model):
        return model
    sig = _signature(model)
    hit = _CACHE.get(model)
    if hit is None or hit[0] != sig:
        hit = (sig, rewrite(model))
        _CACHE[model] = hit
    view = hit[1]
    if view is None:
        return model
    view.training = model.training   # the shared submodules carry their own flags
    return view
