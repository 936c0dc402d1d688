"""PAM over permutations (robustpath.pam): projection onto doubly stochastic
matrices, rounding, relaxed application, the algorithm end to end, the bench option."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.func import functional_call

from robustpath import bench, models
from robustpath.align import Permutation, apply, permutation_spec, random_permutation
from robustpath.align.permute import permuted_state
from robustpath.attacks.base import AttackConfig
from robustpath.data import Batches
from robustpath.errors import UserError
from robustpath.pam import (
    PAMConfig,
    pam,
    permutation_matrix,
    project_doubly_stochastic,
    relaxed_state,
    round_to_permutation,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models are overhead-bound: one intra-op thread is as fast, and far faster
    when other processes share the cores (OpenMP threads spin-wait for each other)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _check_doubly_stochastic(x: torch.Tensor, tol: float = 1e-5) -> None:
    assert x.min() >= 0
    assert (x.sum(0) - 1).abs().max() <= tol
    assert (x.sum(1) - 1).abs().max() <= tol


@pytest.mark.parametrize("n", [1, 5, 37, 128])
def test_projection_of_random_positive_matrix_is_doubly_stochastic(n):
    g = torch.Generator().manual_seed(n)
    for scale in (1.0, 0.01, 10.0):
        _check_doubly_stochastic(project_doubly_stochastic(torch.rand(n, n, generator=g) * scale))


def test_projection_of_a_gradient_step_and_its_optimality():
    """From a permutation matrix minus a step (negative entries), the result is
    doubly stochastic and is the Euclidean projection: <X - P, Q - P> <= 0 for doubly
    stochastic Q (up to Dykstra's tolerance)."""
    g = torch.Generator().manual_seed(0)
    n = 20
    m = permutation_matrix(torch.randperm(n, generator=g)) - 0.3 * torch.randn(
        n, n, generator=g, dtype=torch.float64)
    p = project_doubly_stochastic(m)
    _check_doubly_stochastic(p)
    for _ in range(20):
        w = torch.rand(4, generator=g, dtype=torch.float64)
        q = sum(wi / w.sum() * permutation_matrix(torch.randperm(n, generator=g)) for wi in w)
        assert float(((m - p) * (q - p)).sum()) <= 1e-3
    ds = project_doubly_stochastic(torch.rand(n, n, generator=g))
    assert torch.allclose(project_doubly_stochastic(ds), ds, atol=1e-5)  # a fixed point
    with pytest.raises(UserError):
        project_doubly_stochastic(torch.rand(3, 4))


def test_rounding_returns_a_permutation_and_recovers_a_noisy_one():
    g = torch.Generator().manual_seed(1)
    for n in (7, 64):
        p = round_to_permutation(project_doubly_stochastic(torch.rand(n, n, generator=g)))
        assert torch.equal(p.sort().values, torch.arange(n))
        truth = torch.randperm(n, generator=g)
        noisy = permutation_matrix(truth) + 0.1 * torch.randn(n, n, generator=g,
                                                              dtype=torch.float64)
        relaxed = project_doubly_stochastic(noisy)
        _check_doubly_stochastic(relaxed)
        assert torch.equal(round_to_permutation(relaxed), truth)


def _randomize_bn(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


@pytest.mark.parametrize("arch,dataset,width", [("cnn-small", "fashion-mnist", 0.5),
                                                ("resnet20", "cifar10", 0.25)])
def test_relaxed_application_of_a_permutation_matrix_equals_apply(arch, dataset, width):
    torch.manual_seed(0)
    model = _randomize_bn(models.create(arch, dataset, width))
    x = torch.rand(6, *((1, 28, 28) if dataset == "fashion-mnist" else (3, 32, 32)))
    spec = permutation_spec(model, x[:2])
    perm = random_permutation(spec=spec, seed=5)
    mats = {g: permutation_matrix(p, torch.float32) for g, p in perm.items()}
    relaxed = relaxed_state(model, spec, mats)
    exact = permuted_state(model, perm)
    assert relaxed.keys() == exact.keys()
    for k in exact:
        assert torch.equal(relaxed[k], exact[k]), k
    state = {**model.state_dict(), **relaxed}
    with torch.no_grad():
        out = functional_call(model, state, (x,))
        ref = apply(model, perm)(x)
        orig = model(x)
    # equal parameters; the outputs may differ in the last bits (memory layout of the
    # relaxed tensors changes the kernels' summation order)
    assert torch.allclose(out, ref, rtol=1e-5, atol=1e-6)
    assert (out - orig).abs().max() <= 1e-4 * orig.abs().max()  # same function as B


def _tiny_model(seed: int, x, y) -> nn.Module:
    torch.manual_seed(seed)
    model = models.create("cnn-small", "fashion-mnist", 0.25)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for xb, yb in Batches(x, y, 64, shuffle=True, seed=seed):
        opt.zero_grad()
        nn.functional.cross_entropy(model(xb), yb).backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def tiny_pair(fmnist):
    x, y = fmnist[0][:1024], fmnist[1][:1024]
    return _tiny_model(0, x, y), _tiny_model(1, x, y), x[:512], y[:512]


TINY_PAM = dict(outer_iters=2, perm_steps=4, lr=0.3, prox=0.1, curve_epochs=1, batch_size=64,
                select_batches=2, attack=AttackConfig(eps=0.1, steps=1))


def test_pam_end_to_end_returns_a_valid_permutation(tiny_pair, tmp_path):
    ma, mb, x, y = tiny_pair
    spec = permutation_spec(ma, x[:2])
    start = random_permutation(spec=spec, seed=2)
    res = pam(ma, mb, x, y, PAMConfig(**TINY_PAM), start=start, work_dir=tmp_path / "w",
              progress=False)
    assert isinstance(res.perm, Permutation) and set(res.perm) == set(spec.groups)
    for g, n in spec.groups.items():
        assert torch.equal(res.perm[g].sort().values, torch.arange(n))
    permuted = apply(mb, res.perm)
    with torch.no_grad():
        ref, out = mb(x[:64]), permuted(x[:64])
    assert (ref - out).abs().max() <= 1e-4 * ref.abs().max()
    assert [h["iteration"] for h in res.history] == [0, 1, 2]
    for h in res.history[1:]:
        # a changed candidate is kept only when its loss (midpoint fixed) is lower
        assert h["accepted"] == (h["candidate_loss"] < h["previous_loss"])
        assert all(0.0 <= v <= 1.0 for v in h["changed_vs_previous"].values())
        assert h["seconds"] > 0 and h["seconds_curve_epoch"] > 0
    rep = json.loads(json.dumps(res.report()))
    assert set(rep["fraction_changed"]) == set(spec.groups)
    assert rep["fraction_changed"] == {g: float((res.perm[g] != start[g]).float().mean())
                                       for g in spec.groups}
    assert len(rep["losses"]) == 3 and rep["seconds_per_outer_iteration"] > 0
    assert res.controls.shape == (1, sum(p.numel() for p in ma.parameters()))

    # a second call in the same folder resumes at the end: same result, no training
    again = pam(ma, mb, x, y, PAMConfig(**TINY_PAM), start=start, work_dir=tmp_path / "w",
                progress=False)
    assert again.perm.to_dict() == res.perm.to_dict() and again.history == res.history
    with pytest.raises(UserError, match="another config"):
        pam(ma, mb, x, y, PAMConfig(**{**TINY_PAM, "lr": 0.2}), start=start,
            work_dir=tmp_path / "w", progress=False)


def test_pam_clean_from_identity_with_given_midpoint(tiny_pair):
    ma, mb, x, y = tiny_pair
    ctrl = torch.stack([torch.cat([(p + q).reshape(-1) / 2 for p, q in
                                   zip(ma.parameters(), mb.parameters())])])
    cfg = PAMConfig(**{**TINY_PAM, "outer_iters": 1, "attack": None})
    res = pam(ma, mb, x, y, cfg, init_controls=ctrl, progress=False)
    assert res.history[0]["seconds_curve"] == 0.0  # the given midpoint, no initial curve step
    assert res.start.is_identity() and len(res.history) == 2
    with pytest.raises(UserError, match="init_controls"):
        pam(ma, mb, x, y, cfg, init_controls=ctrl[:, :10], progress=False)
    with pytest.raises(UserError):
        PAMConfig(outer_iters=0).validate()


@pytest.mark.slow  # 9 s; the fast tier stays under 6 min on 2 cores
def test_bench_accepts_pam_alignments(tmp_path):
    out = tmp_path / "run"
    args = ["--train-subset", "400", "--test-subset", "60", "--epochs", "1", "--curve-epochs", "1",
            "--t-points", "3", "--bn-batches", "1", "--bootstrap", "20", "--seeds", "0,1",
            "--align", "pam-none,pam-activation", "--paths", "line", "--steps", "1", "--train-steps", "1",
            "--pam-iters", "1", "--width", "0.25", "--no-strong", "--no-progress", "--out", str(out)]
    assert bench.main(args) == 0
    report = json.loads((out / "alignment.json").read_text())["pam-none-s0-1"]
    assert report["method"] == "pam-none" and report["start"] == "none"
    assert set(report["fraction_changed"]) == {"net.0.0", "net.2.0", "net.5"}
    assert len(report["losses"]) == 2 and report["seconds_per_outer_iteration"] > 0
    other = json.loads((out / "alignment.json").read_text())["pam-activation-s0-1"]
    assert other["start"] == "activation" and other["start_report"]["method"] == "activation"
    md = (out / "tables" / "summary.md").read_text()
    assert "PAM from unaligned" in md and "PAM from aligned" in md
    assert bench.main(args[:-2] + ["--pam-iters", "0", "--out", str(tmp_path / "bad")]) == 2
