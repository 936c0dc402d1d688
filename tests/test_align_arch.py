"""Alignment beyond plain CNNs: attention (nn.MultiheadAttention, torchvision and timm
ViTs, vit-tiny), the torchvision families (ConvNeXt, EfficientNet, RegNet, ShuffleNet),
user-registered rules and partial alignment (robustpath.align)."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustpath import models
from robustpath.align import (
    Blocks,
    align,
    apply,
    permutation_spec,
    qkv_attention,
    random_permutation,
    register_rule,
)
from robustpath.align import registry as rule_registry
from robustpath.align.rules import Perm, arg, main_input
from robustpath.errors import UserError

torchvision = pytest.importorskip("torchvision")


def _randomize_heads(model: nn.Module, seed: int = 0) -> nn.Module:
    """torchvision/timm zero-initialise classifier heads (logits all 0): give every
    parameter random values so a mis-permutation shows in the logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            scale = 0.5 if p.dim() < 2 else p[0].numel() ** -0.5  # fan-in scaling
            p.copy_(torch.randn(p.shape, generator=g) * scale)
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
    return model.eval()


def _same(a: nn.Module, b: nn.Module) -> bool:
    sb = b.state_dict()
    return all(torch.equal(v, sb[k]) for k, v in a.state_dict().items())


def _invariant(model: nn.Module, x: torch.Tensor, seed: int = 1, partial: bool = False):
    """A random valid permutation keeps the logits to 1e-5 relative and moves weights."""
    spec = permutation_spec(model, x[:2], partial=partial)
    perm = random_permutation(spec=spec, seed=seed)
    permuted = apply(model, perm).eval()
    with torch.no_grad():
        ref, out = model(x), permuted(x)
    assert ref.abs().max() > 0
    assert (ref - out).abs().max() <= 1e-5 * ref.abs().max()
    assert not _same(model, permuted)
    return spec, perm, permuted


# ----------------------------------------------------------------------------- attention
class _Attn(nn.Module):
    """Token model with nn.MultiheadAttention: packed or separate projections,
    bias_k/bias_v, batch first or not."""

    def __init__(self, dim=12, heads=3, kdim=None, bias_kv=False, batch_first=True):
        super().__init__()
        self.batch_first = batch_first
        self.embed = nn.Linear(5, dim)
        self.ln = nn.LayerNorm(dim)
        self.kv = nn.Linear(5, kdim or dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=batch_first, kdim=kdim,
                                          vdim=kdim, add_bias_kv=bias_kv)
        self.head = nn.Linear(dim, 4)

    def forward(self, x):  # x: [N, T, 5]
        h = self.embed(x)
        q = self.ln(h)
        kv = self.kv(x) if self.attn.kdim != self.attn.embed_dim else q
        if not self.batch_first:
            q, kv = q.transpose(0, 1), kv.transpose(0, 1)
        y = self.attn(q, kv, kv, need_weights=False)[0]
        if not self.batch_first:
            y = y.transpose(0, 1)
        return self.head(F.gelu(h + y).mean(1))


@pytest.mark.parametrize("kwargs", [{}, {"kdim": 7, "bias_kv": True}, {"batch_first": False}])
def test_multihead_attention_permutation(kwargs):
    torch.manual_seed(0)
    model = _randomize_heads(_Attn(**kwargs))
    spec, perm, _ = _invariant(model, torch.randn(4, 6, 5))
    assert spec.blocks["attn"] == Blocks(3, (4, 4))
    heads = (perm["attn"][:12] // 4).view(3, 4)
    assert (heads == heads[:, :1]).all()  # heads move as wholes


def _tv_vit():
    return torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2,
                                                num_heads=4, hidden_dim=32, mlp_dim=48,
                                                num_classes=10)


def _timm_vit():
    timm = pytest.importorskip("timm")
    return timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, mlp_ratio=1.5,
        num_classes=10, qkv_bias=True)


@pytest.mark.parametrize("build", [_tv_vit, _timm_vit], ids=["torchvision", "timm"])
def test_vit_permutation_and_self_alignment(build):
    """Function preserved; weight and activation matching both undo a random shuffle
    exactly (heads, within-head orders, MLP units, residual stream)."""
    torch.manual_seed(0)
    model = _randomize_heads(build())
    x = torch.rand(64, 3, 32, 32)
    spec, perm, shuffled = _invariant(model, x)
    assert len(spec.blocks) == 2 and len(spec.groups) == 5
    for method in ("weight", "activation"):
        aligned, found, report = align(model, shuffled, method=method, spec=spec,
                                       data=[x] if method == "activation" else None)
        assert _same(model, aligned), method
        for g, p in found.items():
            assert torch.equal(p, torch.argsort(perm[g])), (method, g)
        assert report.mean_after == pytest.approx(1.0, abs=1e-4) and report.mean_before < 0.5


def test_vit_tiny_self_alignment():
    torch.manual_seed(0)
    model = _randomize_heads(models.create("vit-tiny", "fashion-mnist", width=0.5))
    x = torch.rand(32, 1, 28, 28)
    spec, perm, shuffled = _invariant(model, x)
    assert sum(g in spec.blocks for g in spec.groups) == 4
    aligned, _, _ = align(model, shuffled, method="activation", data=[x], spec=spec)
    assert _same(model, aligned)


def test_blocks_solver_is_exact_against_brute_force():
    blocks = Blocks(2, (2, 1))
    score = torch.randn(6, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    valid = []
    for p in itertools.permutations(range(6)):
        p = torch.tensor(p)
        if blocks.check(p) is None:
            valid.append(p)
    assert len(valid) == 2 * 2 * 2  # head orders x within-head orders of the 2-unit part
    best = max(valid, key=lambda p: float(score[torch.arange(6), p].sum()))
    assert torch.equal(blocks.solve(score), best)
    assert blocks.check(torch.tensor([0, 2, 1, 3, 4, 5])) == "splits a head"
    assert "differently" in blocks.check(torch.tensor([2, 3, 0, 1, 4, 5]))


class InlineAttention(nn.Module):
    """A user's attention written with Linear layers and reshape/permute (timm's layout),
    its positions tiled with ``repeat``."""

    def __init__(self, dim=8, heads=2):
        super().__init__()
        self.heads, self.qkv, self.proj = heads, nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        n, t, c = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        y = (q @ k.transpose(-2, -1) * (c // self.heads) ** -0.5).softmax(-1) @ v
        return self.proj(y.transpose(1, 2).reshape(n, t, c))


class _InlineNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed, self.pos = nn.Linear(3, 8), nn.Linear(2, 8)
        self.attn, self.head = InlineAttention(), nn.Linear(8, 2)

    def forward(self, x):  # x: [N, 5, 3]
        pos = self.pos(torch.linspace(0, 1, 10).view(1, 5, 2)).repeat(x.shape[0], 1, 1)
        h = self.embed(x) + pos
        return self.head(F.relu(h + self.attn(h)).mean(1))


def test_attention_spec_of_a_meta_model_is_the_cpu_models():
    """The zoo derives specs on the meta device: the attention check runs on a CPU copy
    (random weights, real buffers), so the spec is the one of the real model."""
    model = _timm_vit().eval()
    cpu = permutation_spec(model, torch.rand(2, 3, 32, 32))
    buffers = dict(model.named_buffers())
    meta = permutation_spec(model.to("meta"), torch.rand(2, 3, 32, 32, device="meta"),
                            buffers=buffers)
    assert meta.groups == cpu.groups and list(meta.blocks) == list(cpu.blocks)
    assert [(a.key, a.axis) for a in meta.axes] == [(a.key, a.axis) for a in cpu.axes]
    assert all(p.is_meta for p in model.parameters())   # the model itself stays on meta


def test_inline_attention_is_refused_until_its_module_is_registered():
    torch.manual_seed(0)
    model, x = _InlineNet().eval(), torch.randn(16, 5, 3)
    with pytest.raises(UserError, match="attention heads split inline.*qkv_attention"):
        permutation_spec(model, x[:2])
    register_rule(InlineAttention)(qkv_attention("qkv", "proj", "heads"))
    try:
        spec, perm, shuffled = _invariant(model, x)
        assert list(spec.blocks) == ["attn"]
        aligned, _, _ = align(model, shuffled, method="activation", data=[x], spec=spec)
        assert _same(model, aligned)
    finally:
        _unregister(InlineAttention)


def test_qkv_rule_refuses_a_module_it_does_not_describe():
    class Interleaved(nn.Module):
        """qkv read as [heads][q|k|v]: not the timm layout the rule assumes."""

        def __init__(self, dim=8, heads=2):
            super().__init__()
            self.heads, self.qkv, self.proj = heads, nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

        def forward(self, x):
            n, t, c = x.shape
            qkv = self.qkv(x).reshape(n, t, self.heads, 3, c // self.heads).permute(3, 0, 2, 1, 4)
            y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
            return self.proj(y.transpose(1, 2).reshape(n, t, c))

    register_rule(Interleaved)(qkv_attention("qkv", "proj", "heads"))
    try:
        model = nn.Sequential(nn.Linear(3, 8), Interleaved(), nn.Linear(8, 2))
        with pytest.raises(UserError, match="random head permutation changes its output"):
            permutation_spec(model, torch.randn(2, 5, 3))
        # without weights (the zoo's meta-device models) the check runs on a CPU copy
        with pytest.raises(UserError, match="random head permutation changes its output"):
            permutation_spec(model.to("meta"), torch.randn(2, 5, 3, device="meta"))
    finally:
        _unregister(Interleaved)


# ----------------------------------------------------------------------------- torchvision
def _convnext():
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    return ConvNeXt([CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 2)],
                    stochastic_depth_prob=0.1, num_classes=10)


@pytest.mark.parametrize("name", ["convnext", "efficientnet_b0"])
def test_torchvision_families_permutation(name):
    """Functional layer_norm and layer scale (ConvNeXt), stochastic depth, squeeze-excite
    and depthwise convolutions (EfficientNet-B0): aligned whole."""
    torch.manual_seed(0)
    build = _convnext if name == "convnext" else \
        (lambda: torchvision.models.efficientnet_b0(num_classes=10))
    model = _randomize_heads(build())
    spec, _, _ = _invariant(model, torch.rand(2, 3, 32, 32))
    assert not spec.fixed
    assert len(spec.groups) == (5 if name == "convnext" else 40)


def _regnet():
    from torchvision.models.regnet import BlockParams, RegNet

    return RegNet(BlockParams.from_init_params(depth=4, w_0=16, w_a=8.0, w_m=2.0,
                                               group_width=8, se_ratio=0.25), num_classes=10)


def _shufflenet():
    from torchvision.models.shufflenetv2 import ShuffleNetV2

    return ShuffleNetV2([2, 1, 1], [8, 16, 32, 64, 128], num_classes=10)


def test_grouped_convolutions_regnet():
    """RegNet (small torchvision configuration): grouped convolutions keep their groups
    in place, permute each group's output units and share one order of input units
    across groups; function preserved, a shuffled copy recovered by both matchers."""
    torch.manual_seed(0)
    model = _randomize_heads(_regnet())
    x = torch.rand(32, 3, 32, 32)
    spec, perm, shuffled = _invariant(model, x)
    assert not spec.fixed
    shared = [g for g in spec.groups if g.endswith(":in")]
    assert shared and any(g.endswith(":1") for g in spec.groups)
    conv_b = spec.axes_of(shared[0].split("+")[0][:-3] + ".weight")
    assert {a.axis for a in conv_b} == {0, 1}
    for method in ("weight", "activation"):
        aligned, found, _ = align(model, shuffled, method=method, spec=spec,
                                  data=[x] if method == "activation" else None)
        assert _same(model, aligned), method


def test_channel_shuffle_aligns_partially():
    """ShuffleNet's channel shuffle (small torchvision configuration) is refused naming
    it and suggesting partial=True, which keeps those units in place and permutes the
    rest, function preserved."""
    torch.manual_seed(0)
    model = _randomize_heads(_shufflenet())
    x = torch.rand(2, 3, 32, 32)
    with pytest.raises(UserError, match="channel shuffle.*partial=True.*method='none'"):
        permutation_spec(model, x)
    spec, _, _ = _invariant(model, x, partial=True)
    assert spec.fixed and all("channel shuffle" in f["reason"] for f in spec.fixed)
    fixed_units = {u for f in spec.fixed for u in f["units"]}
    assert fixed_units and not fixed_units & set(spec.groups)
    assert len(spec.groups) >= 3


class _ChannelsLastPad(nn.Module):
    """Swin's layout: units on the last axis, spatial padding ``F.pad(x, pads)``."""

    def __init__(self, pads):
        super().__init__()
        self.pads, self.a, self.b = pads, nn.Linear(3, 6), nn.Linear(6 + sum(pads[:2]), 2)

    def forward(self, x):  # x: [N, H, W, 3]
        return self.b(F.gelu(F.pad(self.a(x), self.pads, value=0.5)).mean((1, 2)))


def test_pad_refused_only_where_it_pads_the_units():
    torch.manual_seed(0)
    x = torch.randn(4, 5, 5, 3)
    spec, _, _ = _invariant(_ChannelsLastPad((0, 0, 0, 1, 0, 2)).eval(), x)
    assert list(spec.groups) == ["a"]
    with pytest.raises(UserError, match="padding along the permuted axis"):
        permutation_spec(_ChannelsLastPad((0, 1, 1, 1)).eval(), x[:2])


def test_a_model_that_fails_on_the_example_input_is_one_line(capfd):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    with pytest.raises(UserError) as e:
        permutation_spec(model, torch.rand(2, 3, 9, 9))
    msg = str(e.value)
    assert "(2, 3, 9, 9) (node '_2'): mat1 and mat2 shapes cannot be multiplied" in msg
    assert "\n" not in msg and len(msg) < 300 and "meta=" not in msg
    assert "Traceback" not in capfd.readouterr().err


# ----------------------------------------------------------------------------- registry
class Gain(nn.Module):
    """A user layer: per-channel gain written with einsum (no built-in rule)."""

    def __init__(self, c: int):
        super().__init__()
        self.gain = nn.Parameter(torch.rand(c) + 0.5)

    def forward(self, x):
        return torch.einsum("nchw,c->nchw", x, self.gain)


def _unregister(cls):
    rule_registry.MODULE_RULES.pop(cls, None)
    rule_registry._LEAVES.discard(cls)


def _gain_net():
    return nn.Sequential(nn.Conv2d(3, 6, 3), Gain(6), nn.ReLU(), nn.Conv2d(6, 4, 1),
                         nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()


def test_user_registered_rule():
    torch.manual_seed(0)
    model, x = _gain_net(), torch.rand(4, 3, 8, 8)
    with pytest.raises(UserError, match="einsum.*register_rule"):
        permutation_spec(model, x[:2])

    @register_rule(Gain)
    def gain_rule(b, node):
        st = main_input(b, node, arg(node, 0, "x"))
        if isinstance(st, Perm):
            b.register(b.key(node.target, "gain"), 0, st.segs, node)
        return st

    try:
        with pytest.raises(ValueError, match="already registered"):
            register_rule(Gain)(gain_rule)
        spec, _, _ = _invariant(model, x)
        assert spec.axes_of("1.gain") and list(spec.groups) == ["0", "3"]
    finally:
        _unregister(Gain)


def test_readme_rule_example_runs_as_written():
    """The README's "rule for your own layer" block, executed verbatim: it registers
    the rule, derives a spec with the gains permuted, and (its comment) is refused
    without the rule."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = next(b.split("```", 1)[0] for b in readme.split("```python\n")[1:]
                 if "@register_rule(Gain)" in b)
    ns: dict = {"__name__": "readme_example"}
    try:
        exec(compile(block, "README.md", "exec"), ns)
        assert ns["spec"].axes_of("1.gain")[0].axis == 0
        _unregister(ns["Gain"])
        with pytest.raises(UserError, match="einsum.*register_rule"):
            permutation_spec(ns["net"], torch.rand(2, 1, 28, 28))
    finally:
        if "Gain" in ns:
            _unregister(ns["Gain"])


def test_partial_alignment_records_what_stayed():
    torch.manual_seed(0)
    model = _gain_net()
    other = _gain_net()
    x = torch.rand(16, 3, 8, 8)
    aligned, perm, report = align(model, other, method="activation", data=[x], partial=True)
    assert list(perm.spec.groups) == ["3"]  # conv 0 feeds the unknown einsum: kept
    assert report.left_in_place[0]["units"] == ["0"]
    assert "einsum" in report.left_in_place[0]["where"]
    with torch.no_grad():
        assert torch.allclose(aligned(x), other(x), atol=1e-5)
    _, perm, report = align(model, other, method="weight", example_input=x[:2],
                            partial=["3"])
    assert perm.is_identity() and report.kept == ["3"]
    with pytest.raises(UserError, match="unknown permutation group"):
        align(model, other, method="weight", example_input=x[:2], partial=["nope"])


def test_xcit_is_refused_and_aligns_partially():
    """RobustBench's transformer entries are XCiT: its cross-covariance attention (heads
    split inline) has no rule; partial alignment permutes the MLPs and patch convs."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = _randomize_heads(timm.models.xcit.Xcit(img_size=32, patch_size=8, embed_dim=16,
                                                   depth=1, num_heads=2, cls_attn_layers=1,
                                                   num_classes=10))
    x = torch.rand(2, 3, 32, 32)
    with pytest.raises(UserError, match="attention heads split inline"):
        permutation_spec(model, x)
    spec, _, _ = _invariant(model, x, partial=True)
    assert any(g.startswith("blocks.0.mlp.fc1") for g in spec.groups)
    assert not any(g.startswith("blocks.0.attn") for g in spec.groups)
