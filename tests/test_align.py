"""Neuron alignment: graph-derived permutation specs, applying permutations, activation
and weight matching (robustpath.align)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustpath import models
from robustpath.align import (
    CoMoments,
    align,
    apply,
    identity_permutation,
    permutation_spec,
    random_permutation,
)
from robustpath.attacks.base import AttackConfig
from robustpath.data import Batches
from robustpath.errors import UserError
from robustpath.paths.bn import recompute_bn

SHAPES = {"fashion-mnist": (1, 28, 28), "cifar10": (3, 32, 32)}
WIDTH = {"vgg11": 0.25, "preact-resnet18": 0.25, "resnet32": 0.25}
# number of permutation groups: one per hidden layer, one per residual stream
GROUPS = {"mlp": 2, "cnn-small": 3, "tinyten": 8, "vgg11": 8, "resnet20": 12, "resnet32": 18,
          "preact-resnet18": 12, "vit-tiny": 9}  # vit-tiny: stream + 4 x (heads, MLP)


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BatchNorm statistics and affine parameters, so a mis-permuted BN shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
                m.weight.copy_(1 + 0.3 * torch.randn(n, generator=g))
                m.bias.copy_(0.3 * torch.randn(n, generator=g))
    return model.eval()


def _check_invariance(model: nn.Module, x: torch.Tensor, seed: int = 1):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    perm = random_permutation(model, x[:2], seed=seed)
    permuted = apply(model, perm).eval()
    with torch.no_grad():
        ref, out = model(x), permuted(x)
    assert (ref - out).abs().max() <= 1e-4 * ref.abs().max()
    after = permuted.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed, "the permutation changed no weight"
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items()), \
        "apply modified the original model"
    assert all(not k.endswith("num_batches_tracked") for k in changed)
    return perm, changed


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sb = b.state_dict()
    return all(torch.equal(v, sb[k]) for k, v in a.state_dict().items())


@pytest.mark.parametrize("dataset", list(SHAPES))
@pytest.mark.parametrize("arch", models.available())
def test_random_permutation_keeps_logits(arch, dataset):
    torch.manual_seed(0)
    model = _randomize(models.create(arch, dataset, width=WIDTH.get(arch, 0.5)))
    x = torch.rand(4, *SHAPES[dataset])
    perm, changed = _check_invariance(model, x)
    assert len(perm.spec.groups) == GROUPS[arch]
    assert any(k.endswith("running_mean") for k in changed) or arch in ("mlp", "vit-tiny")
    assert all(not a.key.startswith("normalize.") for a in perm.spec.axes)  # input never moves


def test_torchvision_resnet18_permutation():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = _randomize(torchvision.models.resnet18(num_classes=10))
    perm, _ = _check_invariance(model, torch.rand(4, 3, 32, 32))
    assert "fc.weight" in {a.key for a in perm.spec.axes}
    assert all(a.axis == 1 for a in perm.spec.axes if a.key == "fc.weight")  # logits fixed
    assert all(a.axis == 0 for a in perm.spec.axes if a.key == "conv1.weight")  # RGB fixed


@pytest.fixture(scope="module")
def robustbench_archs():
    from robustpath.zoo.rbcompat import import_robustbench

    try:
        import_robustbench()
    except UserError as e:
        pytest.skip(str(e))
    from robustbench.model_zoo.architectures import dm_wide_resnet, resnet, wide_resnet

    return resnet, wide_resnet, dm_wide_resnet


def test_robustbench_architectures_permutation(robustbench_archs):
    resnet, wide_resnet, dm = robustbench_archs
    torch.manual_seed(0)
    x = torch.rand(4, 3, 32, 32)
    nets = {
        "PreActResNet18": resnet.PreActResNet18(),
        "WideResNet-16-1": wide_resnet.WideResNet(depth=16, widen_factor=1),
        # input normalisation by buffers, Swish as x * sigmoid(x), spatial pad
        "DMWideResNet-16-1-swish": dm.DMWideResNet(depth=16, width=1, activation_fn=dm.Swish,
                                                   padding=2),
    }
    for name, net in nets.items():
        perm, _ = _check_invariance(_randomize(net), x)
        assert len(perm.spec.groups) == (12 if "PreAct" in name else 9), name


@pytest.mark.parametrize("method", ["activation", "weight"])
@pytest.mark.parametrize("arch,dataset", [("cnn-small", "fashion-mnist"), ("mlp", "fashion-mnist"),
                                          ("resnet20", "cifar10")])
def test_align_recovers_permuted_copy(arch, dataset, method):
    torch.manual_seed(0)
    model = _randomize(models.create(arch, dataset, width=0.5))
    x = torch.rand(192, *SHAPES[dataset])
    y = torch.randint(0, 10, (192,))
    perm = random_permutation(model, x[:2], seed=7)
    shuffled = apply(model, perm)
    assert not _same_weights(model, shuffled)
    aligned, found, report = align(model, shuffled, method=method, data=Batches(x, y, 64))
    assert _same_weights(model, aligned)
    for g, p in found.items():  # the inverse of the shuffle
        assert torch.equal(p, torch.argsort(perm[g])), g
    assert report.mean_after == pytest.approx(1.0, abs=1e-4)
    assert report.mean_before < 0.5
    json.dumps(report.to_dict())


def test_weight_matching_needs_no_data():
    torch.manual_seed(0)
    model = _randomize(models.create("resnet20", "cifar10", width=0.5))
    shuffled = apply(model, random_permutation(model, torch.rand(2, 3, 32, 32), seed=3))
    aligned, _, report = align(model, shuffled, method="weight",
                               example_input=torch.rand(2, 3, 32, 32))
    assert _same_weights(model, aligned)
    assert report.measure == "weight_cosine" and report.num_samples == 0
    assert report.mean_after == pytest.approx(1.0) and report.mean_before < 0.9


def _midpoint(a: nn.Module, b: nn.Module, loader) -> nn.Module:
    """Plain average of the state dicts, BatchNorm statistics recomputed on training data."""
    mid = copy.deepcopy(a)
    sa, sb = a.state_dict(), b.state_dict()
    mid.load_state_dict({k: (sa[k] + sb[k]) / 2 if sa[k].is_floating_point() else sa[k]
                         for k in sa})
    return recompute_bn(mid, loader, batches=10).eval()


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float(F.cross_entropy(model(x), y))


def _check_trained_pair(model_a, model_b, fmnist):
    """Alignment raises every layer's matched correlation and lowers the clean test loss
    at the midpoint of the linear path."""
    x_tr, y_tr, x_te, y_te = fmnist
    data = Batches(x_tr[:1000], y_tr[:1000], 250)
    aligned, perm, report = align(model_a, model_b, "activation", data=data)
    assert report.num_samples == 1000 and report.measure == "correlation"
    assert set(report.groups) == set(perm.spec.groups)
    for g, r in report.groups.items():
        assert r.after > r.before, g
    assert report.mean_after > report.mean_before + 0.1
    with torch.no_grad():  # same function, units reordered
        assert torch.allclose(aligned(x_te[:64]), model_b(x_te[:64]), atol=1e-4)
    loader = Batches(x_tr, y_tr, 200, shuffle=True, seed=0)
    loss_unaligned = _loss(_midpoint(model_a, model_b, loader), x_te, y_te)
    loss_aligned = _loss(_midpoint(model_a, aligned, loader), x_te, y_te)
    assert loss_aligned < loss_unaligned


@pytest.fixture(scope="module")
def clean_pair(fmnist):
    """Two cnn-small (width 0.5) trained cleanly with SGD from seeds 0 and 1 for 2 epochs
    on 3000 Fashion-MNIST images: cheap stand-ins for trained endpoints."""
    x_tr, y_tr = fmnist[0], fmnist[1]
    pair = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = models.create("cnn-small", "fashion-mnist", width=0.5)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
        model.train()
        for epoch in range(2):
            for xb, yb in Batches(x_tr, y_tr, 64, shuffle=True, seed=100 * seed + epoch):
                loss = F.cross_entropy(model(xb), yb)
                opt.zero_grad()
                loss.backward()
                opt.step()
        pair.append(model.eval())
    return pair


def test_activation_alignment_of_clean_trained_pair(clean_pair, fmnist):
    _check_trained_pair(clean_pair[0], clean_pair[1], fmnist)


@pytest.mark.slow
def test_activation_alignment_of_adversarially_trained_pair(trained_pair, fmnist):
    """The conftest pair: PGD-trained cnn-small, seeds 0 and 1 (training takes minutes)."""
    _check_trained_pair(trained_pair[0], trained_pair[1], fmnist)


def test_adversarial_activation_matching():
    torch.manual_seed(0)
    model_a = _randomize(models.create("cnn-small", "fashion-mnist", width=0.5), seed=1)
    model_b = _randomize(models.create("cnn-small", "fashion-mnist", width=0.5), seed=2)
    x, y = torch.rand(128, 1, 28, 28), torch.randint(0, 10, (128,))
    cfg = AttackConfig(eps=0.1, steps=2, seed=0)
    aligned, perm, report = align(model_a, model_b, "activation", data=Batches(x, y, 64),
                                  inputs="adv", attack=cfg, max_batches=1)
    assert report.inputs == "adv" and report.num_samples == 64
    for g, n in perm.spec.groups.items():
        assert torch.equal(perm[g].sort().values, torch.arange(n))
    assert report.mean_after >= report.mean_before
    with torch.no_grad():
        assert torch.allclose(aligned(x), model_b(x), atol=1e-5)
    with pytest.raises(UserError, match="labelled"):
        align(model_a, model_b, "activation", data=[x[:8]], inputs="adv", attack=cfg)


def test_library_default_attack_for_adversarial_matching_is_seeded():
    """``align(..., inputs="adv")`` without an attack: the default PGD is seeded, so the
    permutation does not depend on the global random state before the call."""
    torch.manual_seed(0)
    model_a = _randomize(models.create("cnn-small", "fashion-mnist", width=0.5), seed=1)
    model_b = _randomize(models.create("cnn-small", "fashion-mnist", width=0.5), seed=2)
    x, y = torch.rand(64, 1, 28, 28), torch.randint(0, 10, (64,))
    perms, corr = [], []
    for rng in (1, 2):
        torch.manual_seed(rng)
        _, perm, report = align(model_a, model_b, "activation", data=Batches(x, y, 64),
                                inputs="adv", max_batches=1)
        perms.append({g: perm[g] for g in perm.spec.groups})
        corr.append((report.mean_before, report.mean_after))  # from the adversarial inputs
    assert all(torch.equal(perms[0][g], perms[1][g]) for g in perms[0])
    assert corr[0] == corr[1]


def test_pre_activation_and_none_method():
    torch.manual_seed(0)
    model = _randomize(models.create("tinyten", "cifar10", width=0.5))
    x = torch.rand(64, 3, 32, 32)
    shuffled = apply(model, random_permutation(model, x[:2], seed=1))
    aligned, _, _ = align(model, shuffled, data=[x], pre_activation=True)
    assert _same_weights(model, aligned)
    same, perm, report = align(model, shuffled, method="none", data=[x])
    assert perm.is_identity() and _same_weights(same, shuffled)
    assert report.mean_before == pytest.approx(report.mean_after, rel=1e-12)  # same units, summed in another order
    with pytest.raises(UserError, match="unknown alignment method"):
        align(model, shuffled, method="magic", data=[x])


def test_streaming_correlation_matches_full_batch():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(1000, 6, generator=g) * 3 + 5
    b = a @ torch.randn(6, 6, generator=g) + torch.randn(1000, 6, generator=g)
    stats = CoMoments(6)
    for i in range(0, 1000, 137):
        stats.update(a[i:i + 137].T, b[i:i + 137].T)
    full = torch.corrcoef(torch.cat([a, b], 1).T.double())[:6, 6:]
    assert torch.allclose(stats.correlation(), full, atol=1e-6)


def test_inverse_and_concatenation():
    class Cat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 5, 1)
            self.bias = nn.Parameter(torch.randn(1, 12, 1, 1))
            self.bn, self.c = nn.BatchNorm2d(12), nn.Conv2d(12, 6, 3)
            self.fc = nn.Linear(6 * 2 * 2, 10)

        def forward(self, x):
            h = torch.cat([F.relu(self.a(x)), x, self.b(x)], dim=1) + self.bias
            h = F.relu(self.bn(h))
            h = F.adaptive_max_pool2d(F.pad(self.c(h), (1, 1, 1, 1)), 2)
            return self.fc(h.flatten(1))

    torch.manual_seed(0)
    model = _randomize(Cat())
    perm, _ = _check_invariance(model, torch.rand(4, 3, 8, 8))
    assert list(perm.spec.groups) == ["a", "b", "c"]
    bn_axis = perm.spec.axes_of("bn.running_mean")[0]
    assert [(s.group, s.length) for s in bn_axis.segments] == [("a", 4), (None, 3), ("b", 5)]
    back = apply(apply(model, perm), perm.inverse())
    assert _same_weights(model, back)
    assert identity_permutation(perm.spec).is_identity()


def test_untraceable_model_is_refused_with_location():
    class Branchy(nn.Module):
        def forward(self, x):
            if x.sum() > 0:
                return x
            return -x

    model = nn.Sequential(nn.Conv2d(1, 4, 3), Branchy(), nn.Flatten(), nn.LazyLinear(10))
    model(torch.rand(2, 1, 8, 8))
    with pytest.raises(UserError, match=r"module 1 \(Branchy\).*x\.sum\(\) > 0"):
        permutation_spec(model, torch.rand(2, 1, 8, 8))


def test_unsupported_operation_is_refused_naming_it():
    class Grouped(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.g = nn.Conv2d(3, 8, 1), nn.ConvTranspose2d(8, 8, 3, groups=2)

        def forward(self, x):
            return self.g(self.a(x)).mean((2, 3))

    class Shuffle(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 1)

        def forward(self, x):
            h = self.a(x)
            n, c, hh, ww = h.shape
            return h.view(n, 2, 4, hh, ww).transpose(1, 2).reshape(n, c, hh, ww).mean((1, 2, 3))

    x = torch.rand(2, 3, 6, 6)
    with pytest.raises(UserError, match=r"module 'g' \(ConvTranspose2d\).*grouped convolution"):
        permutation_spec(Grouped(), x)
    with pytest.raises(UserError, match=r"\.view\(\).*splits the permuted units"):
        permutation_spec(Shuffle(), x)


def test_incompatible_models_are_refused():
    a = models.create("cnn-small", "fashion-mnist", width=0.5)
    b = models.create("cnn-small", "fashion-mnist", width=0.25)
    with pytest.raises(UserError, match="different architectures"):
        align(a, b, method="weight")


def test_alignment_stage_on_adversarial_inputs_is_seeded(trained_pair, fmnist, tmp_path):
    """`--align-inputs adv`: the PGD that makes the matching inputs is seeded
    (keys.align_attack), so two alignments from different global RNG states give the same
    permutation (unseeded, its random starts drew from the global generator)."""
    from robustpath.config import from_preset
    from robustpath.engine import keys, stages, stages_align

    x_tr, y_tr, x_te, y_te = fmnist
    cfg = from_preset("quick", seeds=[0, 1], align_inputs="adv", align_samples=250)
    data = stages.RunData(x_tr[:250], y_tr[:250], x_te[:64], y_te[:64], 10)
    aligned = []
    for run, rng in (("r1", 1), ("r2", 2)):  # fresh folders: computed twice, not cached
        torch.manual_seed(rng)
        torch.rand(rng)  # different global generator states
        m, report, _ = stages_align.alignment(cfg, "activation", trained_pair[0],
                                              trained_pair[1], "ka", "kb", tmp_path / run, data,
                                              "cpu", progress=False)
        assert report["inputs"] == "adv"
        aligned.append(m.state_dict())
    assert all(torch.equal(aligned[0][k], aligned[1][k]) for k in aligned[0])
    assert keys.align_spec(cfg, "activation", "ka", "kb")["attack"]["seed"] == 0
    # the default (clean inputs, the committed run's) runs no attack: its key is unchanged
    clean = from_preset("quick")
    assert clean.align_inputs == "clean" and "attack" not in keys.align_spec(
        clean, "activation", "ka", "kb")
    assert keys.align_key(clean, "activation", "ka", "kb") == "91d48a2425aa"
