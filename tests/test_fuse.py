"""robustpath.models.fuse: the attack view computes the model's function, shares its state,
and falls back to the model wherever it cannot be exact."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from robustpath import models, runtime
from robustpath.attacks.base import AttackConfig, build_attack
from robustpath.attacks.metrics import per_example
from robustpath.models import fuse
from robustpath.paths.stacked import StackedModel


def _randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics and affine parameters (fresh BN is an identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(torch.randn(m.bias.shape, generator=g))
    return model


ARCHS = [("cnn-small", "fashion-mnist", 1.0), ("resnet20", "cifar10", 0.25),
         ("tinyten", "cifar10", 0.25), ("vgg11", "cifar10", 0.125)]


def _input(dataset: str, n: int = 8, dtype=torch.float32) -> torch.Tensor:
    shape = (n, 1, 28, 28) if dataset == "fashion-mnist" else (n, 3, 32, 32)
    return torch.rand(shape, generator=torch.Generator().manual_seed(1), dtype=dtype)


@pytest.mark.parametrize("arch,dataset,width", ARCHS)
def test_eval_view_is_the_same_function_with_the_same_input_gradient(arch, dataset, width):
    model = _randomise_bn(models.create(arch, dataset, width)).double().eval()
    view = fuse.fast_view(model)
    assert view is not model
    assert any(isinstance(m, fuse.FoldedConvBN) for m in view.modules())
    x = _input(dataset, dtype=torch.float64).requires_grad_(True)
    ref, out = model(x), view(x)
    # float64: folding is exact up to rounding
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    (g_ref,) = torch.autograd.grad(ref.square().sum(), x)
    (g_out,) = torch.autograd.grad(out.square().sum(), x)
    torch.testing.assert_close(g_out, g_ref, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("arch,dataset,width", ARCHS[:2])
def test_train_mode_view_trains_the_shared_model_like_the_model(arch, dataset, width):
    """In train mode BatchNorm is not folded: a training step through the view equals
    one through the model up to float64 rounding of NHWC convolutions, and it updates the
    model's own parameters and running statistics."""
    torch.manual_seed(0)
    a = _randomise_bn(models.create(arch, dataset, width)).train()
    # PyTorch's default convolution init: resnet's Kaiming fan-out init (Tatro et al.'s)
    # puts enough train-mode pre-activations of this 16-image batch at width 0.25 so near
    # 0 that NHWC rounding flips ReLU gates and moves gradients by ~1 % (not rounding-size);
    # the default init keeps the comparison at rounding level (5e-6 relative)
    for m in a.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.reset_parameters()
    # float64: with one torch thread, float32 NHWC rounding flipped ReLU gates at this width
    # and moved a weight's step by more than 1e-4 relative (the test failed at 1 thread)
    a = a.double()
    b, before = copy.deepcopy(a), copy.deepcopy(a)
    x, y = _input(dataset, 16, dtype=torch.float64), torch.arange(16) % 10
    for model, use_view in ((a, False), (b, True)):
        net = fuse.fast_view(model) if use_view else model
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        # parameters and running statistics alike
        torch.testing.assert_close(pb, pa, rtol=1e-7, atol=1e-9, msg=name)
    assert not torch.equal(next(b.parameters()), next(before.parameters()))   # it did train


def test_relu_maxpool_swap_and_nhwc_pooling_are_exact_in_forward_and_backward():
    model = nn.Sequential(nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 14 * 14, 10))
    view = fuse.fast_view(model)
    kinds = [type(view.get_submodule(n.target)).__name__ for n in view.graph.nodes
             if n.op == "call_module"]
    assert kinds == ["ChannelsLastMaxPool", "ReLU", "Flatten", "Linear"]
    x = torch.randn(8, 4, 28, 28)
    x[:, :, :10] = 0.0   # constant regions: ties inside pooling windows
    x[:, :, 10:14] = -1.0
    x.requires_grad_(True)
    ref, out = model(x), view(x)
    assert torch.equal(ref, out)
    (g_ref,) = torch.autograd.grad(ref.sum(), x)
    (g_out,) = torch.autograd.grad(out.sum(), x)
    assert torch.equal(g_ref, g_out)


def test_functional_call_with_the_models_names_works_on_the_view():
    """Curves run θ(t) through functional_call on a view of their template."""
    model = _randomise_bn(models.create("cnn-small")).train()
    view = fuse.fast_view(model)
    params = {k: v + 0.01 for k, v in model.named_parameters()}
    x = _input("fashion-mnist")
    ref = functional_call(copy.deepcopy(model), params, (x,))
    torch.testing.assert_close(functional_call(view, params, (x,)), ref, rtol=1e-5, atol=1e-5)


class _Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)

    def forward(self, x):
        if x.sum() > 0:   # data-dependent control flow: torch.fx cannot trace it
            return self.bn(self.conv(x))
        return x


def test_untraceable_hooked_stacked_and_plain_models_are_used_as_they_are():
    assert fuse.fast_view(_Branchy().eval()).__class__ is _Branchy
    mlp = models.create("mlp")
    assert fuse.fast_view(mlp) is mlp          # neither pattern: nothing to gain
    model = models.create("cnn-small").eval()
    assert fuse.fast_view(model) is not model
    handle = model.net[0][0].register_forward_hook(lambda *a: None)
    assert fuse.fast_view(model) is model      # a view would bypass the hook
    handle.remove()
    stacked = StackedModel([model, copy.deepcopy(model)])
    assert fuse.fast_view(stacked) is stacked


def test_disabled_switch_and_cache_follow_the_model(monkeypatch):
    model = _randomise_bn(models.create("cnn-small")).eval()
    view = fuse.fast_view(model)
    assert fuse.fast_view(model) is view            # cached
    model.double()                                  # replaces Normalize's buffers
    x = _input("fashion-mnist", dtype=torch.float64)
    view64 = fuse.fast_view(model)
    assert view64 is not view
    torch.testing.assert_close(view64(x), model(x), rtol=1e-10, atol=1e-10)
    with runtime.use(runtime.Runtime(fuse=False)):
        assert fuse.fast_view(model) is model
    assert fuse.fast_view(model) is view64


def test_view_keeps_layer_modes_set_on_purpose():
    """recompute_bn puts only BatchNorm in train mode; building a view must not undo it."""
    model = models.create("cnn-small").eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.train()
    fuse.fast_view(model)(_input("fashion-mnist"))
    assert all(m.training == isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert int(model.net[0][1].num_batches_tracked) == 1


def test_pgd_on_the_view_matches_pgd_on_the_model(trained_pair, fmnist, monkeypatch):
    model, x, y = trained_pair[0], fmnist[2], fmnist[3]
    cfg = AttackConfig(eps=0.1, steps=10, seed=0)
    fused = per_example(model, x, y, build_attack(cfg))
    with runtime.use(runtime.Runtime(fuse=False)):
        plain = per_example(model, x, y, build_attack(cfg))
    # same start and steps; only float rounding differs (sign(grad) can flip a step)
    assert abs(fused.accuracy - plain.accuracy) <= 0.01, (fused.accuracy, plain.accuracy)
    assert abs(fused.mean_loss - plain.mean_loss) <= 0.01 * plain.mean_loss
    assert (fused.correct != plain.correct).float().mean() <= 0.02


def test_nhwc_layouts():
    x = torch.rand(4, 1, 28, 28)
    y = fuse.nhwc(x)
    assert y.stride() == (28 * 28, 1, 28, 1) and torch.equal(x, y)
    conv = nn.Conv2d(1, 8, 3, padding=1)
    assert conv(y).is_contiguous(memory_format=torch.channels_last)   # not so from x
    z = torch.rand(2, 4, 1, 1).contiguous(memory_format=torch.channels_last)
    assert fuse.nchw(z).stride() == (4, 1, 1, 1) and torch.equal(fuse.nchw(z), z)
    assert fuse.nhwc_unsafe(nn.Conv2d(2, 4, 1, stride=2))
    assert not fuse.nhwc_unsafe(nn.Conv2d(16, 32, 1, stride=2))
    assert not fuse.nhwc_unsafe(nn.Conv2d(2, 4, 3, stride=2))


_NARROW = """
import sys, torch, torch.nn.functional as F
sys.path.insert(0, {tests!r})
from conftest import small_train_config
from robustpath import models
from robustpath.attacks.base import AttackConfig, build_attack
from robustpath.paths import curves
from robustpath.train import loop as train
torch.set_num_threads(1)
g = torch.Generator().manual_seed(0)
x, y = torch.rand(32, 3, 32, 32, generator=g), torch.arange(32) % 10
cfg = small_train_config(0, arch="resnet20", width=0.125, dataset="cifar10", epochs=1)
train.train_model(cfg, progress=False, data=(x, y, x[:8], y[:8]))
a, b = models.create("resnet20", "cifar10", 0.125), models.create("resnet20", "cifar10", 0.125)
c = curves.build_curve("bezier", a, b).train()
params = c.unflatten(c.flat_at(0.5))
xa = build_attack(AttackConfig(eps=0.03, steps=2))(c.point(0.5, params), x, y)
F.cross_entropy(c.forward_batch_stats(xa, 0.5, params), y).backward()
print("ok")
"""


def test_narrow_shortcut_convolutions_train_on_one_thread():
    """resnet20 at width 0.125 has 1x1 stride-2 convolutions with 2 and 4 input
    channels, whose NHWC weight gradient corrupts the heap with 1 thread (torch 2.14);
    endpoint and curve training must keep them NCHW. A subprocess, since a
    failure is a crash."""
    import pathlib
    import subprocess
    import sys

    script = _NARROW.format(tests=str(pathlib.Path(__file__).parent))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]


class _SharedInplaceRelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.relu, self.pool = nn.ReLU(inplace=True), nn.MaxPool2d(2)

    def forward(self, x):
        y = x * 2
        z = self.pool(self.relu(y))          # the in-place ReLU also rewrites y ...
        return z.sum((1, 2, 3)) + y.sum((1, 2, 3))   # ... which is read again here


def test_swap_leaves_relus_whose_input_is_read_elsewhere():
    model = _SharedInplaceRelu()
    x = torch.randn(4, 2, 8, 8)
    torch.testing.assert_close(fuse.fast_view(model)(x.clone()), model(x.clone()))


def test_curve_batch_stats_forward_reuses_one_view_and_leaks_nothing(monkeypatch):
    """`Curve.forward_batch_stats` runs `functional_call` on the fused view: the view must
    be built once, and the template must keep its own tensors (with tied names the call
    left θ(t) in the template, so the view was rebuilt at every call)."""
    from robustpath.paths.curves import build_curve

    torch.manual_seed(0)
    a, b = models.create("cnn-small", "fashion-mnist", 0.5), models.create("cnn-small", "fashion-mnist", 0.5)
    curve = build_curve("bezier", a, b)
    calls = []
    real = fuse.rewrite
    monkeypatch.setattr(fuse, "rewrite", lambda m: calls.append(1) or real(m))
    x = _input("fashion-mnist", 4)
    curve.forward_batch_stats(x, 0.5)
    before = [id(t) for t in curve._batch_template.parameters()]
    for t in (0.2, 0.7):
        curve.forward_batch_stats(x, t).sum().backward()
    assert len(calls) == 1
    assert [id(t) for t in curve._batch_template.parameters()] == before
