"""Curves (line / Bezier / polychain), BatchNorm recomputation, curve training with PGD."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from robustpath import data, models
from robustpath.attacks.base import AttackConfig, build_attack
from robustpath.attacks.metrics import per_example
from robustpath.errors import UserError
from robustpath.paths.bn import bn_modules, recompute_bn
from robustpath.paths.curves import CURVES, build_curve, load_curve, save_curve
from robustpath.paths.fit import CurveTrainConfig, epoch_checkpoints, train_curve

FAMILIES = [("line", 0), ("bezier", 1), ("bezier", 3), ("polychain", 1), ("polychain", 2)]


def _pair(arch="cnn-small", width=0.25, seed=0):
    torch.manual_seed(seed)
    a = models.create(arch, "fashion-mnist", width)
    b = models.create(arch, "fashion-mnist", width)
    # Distinct BatchNorm statistics so buffer interpolation is visible.
    for m in bn_modules(b):
        m.running_mean.uniform_(-1, 1)
        m.running_var.uniform_(0.5, 2)
        m.num_batches_tracked.fill_(7)
    return a, b


def _perturb(curve):
    with torch.no_grad():
        curve.controls.add_(torch.randn_like(curve.controls))


# ---------------------------------------------------------------------- families
@pytest.mark.parametrize("kind,bends", FAMILIES)
def test_endpoints_exact(kind, bends):
    a, b = _pair()
    curve = build_curve(kind, a, b, bends)
    _perturb(curve)
    for t, model in ((0, a), (1, b)):
        params = curve.params_at(t)
        for name, p in model.named_parameters():
            assert torch.equal(params[name], p), (kind, t, name)
        bufs = curve.buffers_at(t)
        for name, v in model.named_buffers():
            if v.is_floating_point():
                assert torch.equal(bufs[name], v), (kind, t, name)
    # Non-floating buffers come from endpoint A at every t.
    assert int(curve.buffers_at(1)["net.0.1.num_batches_tracked"]) == 0
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(curve.model_at(1)(x), b.eval()(x))
        assert torch.equal(curve.eval()(x, 0.0), a.eval()(x))


@pytest.mark.parametrize("kind,bends", [("bezier", 1), ("bezier", 2), ("bezier", 4),
                                        ("polychain", 1), ("polychain", 3)])
def test_initial_points_on_the_line_equal_the_line(kind, bends):
    a, b = _pair()
    curve, line = build_curve(kind, a, b, bends), build_curve("line", a, b)
    assert curve.controls.shape == (bends, line.theta_a.numel())
    for t in torch.linspace(0, 1, 11).tolist():
        torch.testing.assert_close(curve.flat_at(t), line.flat_at(t), rtol=1e-5, atol=1e-6)


def test_family_weights_and_gradients():
    a, b = _pair()
    chain = build_curve("polychain", a, b, 1)
    _perturb(chain)
    assert torch.equal(chain.flat_at(0.5), chain.controls[0])   # the bend sits at t = 1/2
    bez = build_curve("bezier", a, b, 1)
    t = 0.3
    bez.flat_at(t).sum().backward()
    # d θ(t) / d c = 2 t (1 - t) for the quadratic Bezier curve.
    torch.testing.assert_close(bez.controls.grad, torch.full_like(bez.controls, 2 * t * (1 - t)))
    assert sum(w for w in bez.weights(0.37)) == pytest.approx(1.0)
    line = build_curve("line", a, b, bends=5)
    assert line.controls.shape[0] == 0 and not any(p.requires_grad for p in line.parameters())
    assert set(CURVES.names()) >= {"line", "bezier", "polychain"}


def test_refuses_mismatched_models_and_bad_input():
    a, _ = _pair(width=0.25)
    with pytest.raises(UserError, match="shape|differ"):
        build_curve("bezier", a, models.create("cnn-small", "fashion-mnist", 0.5))
    with pytest.raises(UserError, match="names"):
        build_curve("bezier", a, models.create("mlp", "fashion-mnist", 0.25))
    with pytest.raises(UserError, match="unknown curve"):
        build_curve("spline", a, a)
    with pytest.raises(UserError, match="bends"):
        build_curve("bezier", a, a, bends=-1)
    with pytest.raises(UserError, match=r"\[0, 1\]"):
        build_curve("bezier", a, a).params_at(1.5)


def test_model_at_is_standalone_and_detached():
    a, b = _pair()
    curve = build_curve("bezier", a, b)
    _perturb(curve)
    m = curve.model_at(0.4)
    assert m.robustpath_meta == a.robustpath_meta and not m.training
    for name, p in m.named_parameters():
        torch.testing.assert_close(p, curve.params_at(0.4)[name])
        assert p.grad_fn is None
    with torch.no_grad():
        next(m.parameters()).zero_()
    assert curve.flat_at(0.4).abs().sum() > 0   # the curve did not change with it


def test_curve_point_uses_batch_stats_even_in_eval_mode():
    a, b = _pair()
    curve = build_curve("bezier", a, b)
    x = torch.rand(16, 1, 28, 28)
    point = curve.point(0.5)
    before = [t.clone() for t in curve.buffers_a.tensors()]
    with torch.no_grad():
        out_eval = point.eval()(x)
        ref = curve.model_at(0.5).train()(x)   # plain train-mode BN = batch statistics
    torch.testing.assert_close(out_eval, ref)
    assert all(torch.equal(u, v) for u, v in zip(before, curve.buffers_a.tensors()))


def test_save_and_load_curve(tmp_path):
    a, b = _pair()
    curve = build_curve("polychain", a, b, 2)
    _perturb(curve)
    save_curve(tmp_path / "c", curve, {"note": 1})
    again, meta = load_curve(tmp_path / "c", a, b)
    assert meta["note"] == 1 and again.kind == "polychain" and again.bends == 2
    assert torch.equal(again.controls, curve.controls)
    _, other = _pair(seed=5)
    with pytest.raises(UserError, match="other endpoint"):
        load_curve(tmp_path / "c", a, other)


# ---------------------------------------------------------------------- BatchNorm
class _Exploding:
    def __iter__(self):
        raise AssertionError("recompute_bn iterated the loader of a model without BatchNorm")


def test_recompute_bn_passes_models_without_bn():
    m = models.create("mlp", "fashion-mnist", 0.1)
    assert recompute_bn(m, _Exploding(), inputs="adv", attack=lambda *a: None) is m


def test_recompute_bn_restores_modes_and_momentum(fmnist):
    x, y = fmnist[0][:256], fmnist[1][:256]
    a, _ = _pair()
    a.eval()
    layers = bn_modules(a)
    layers[0].momentum = 0.3
    recompute_bn(a, data.Batches(x, y, 64), batches=2)
    assert not any(m.training for m in a.modules())
    assert layers[0].momentum == 0.3 and layers[1].momentum == 0.1
    assert int(layers[0].num_batches_tracked) == 2
    # Cumulative average over 2 equal batches = mean of the two batch means.
    with torch.no_grad():
        feats = a.net[0][0](a.normalize(x[:128]))
    torch.testing.assert_close(layers[0].running_mean, feats.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    clean = layers[0].running_mean.clone()
    attack = build_attack(AttackConfig(eps=0.1, steps=2, seed=0))
    recompute_bn(a, data.Batches(x, y, 64), batches=2, inputs="adv", attack=attack)
    assert not torch.allclose(clean, layers[0].running_mean)
    with pytest.raises(UserError, match="attack"):
        recompute_bn(a, data.Batches(x, y, 64), inputs="adv")


def test_bn_recomputed_at_endpoints_reproduces_accuracy(trained_pair, fmnist):
    model_a, model_b = trained_pair[0], trained_pair[1]
    x_tr, y_tr, x_te, y_te = fmnist
    curve = build_curve("bezier", model_a, model_b)
    for t, model in ((0.0, model_a), (1.0, model_b)):
        ref = per_example(model, x_te, y_te).accuracy
        m = recompute_bn(curve.model_at(t), data.Batches(x_tr, y_tr, 128))
        acc = per_example(m, x_te, y_te).accuracy
        assert abs(acc - ref) <= 0.015, (t, acc, ref)


# ---------------------------------------------------------------------- training
def _tiny_cfg(**kw):
    base = {"epochs": 2, "batch_size": 64, "lr": 0.05, "seed": 3,
                "attack": AttackConfig(eps=0.1, steps=1)}
    base.update(kw)
    return CurveTrainConfig(**base)


def test_training_resumes_after_a_kill(tmp_path, fmnist):
    x, y = fmnist[0][:192], fmnist[1][:192]
    a, b = _pair(width=0.25)
    cfg = _tiny_cfg()

    straight = build_curve("bezier", a, b)
    m_straight = train_curve(straight, x, y, cfg, tmp_path / "straight", progress=False)

    class Killed(Exception):
        pass

    def kill(epoch, record):
        if epoch == 1:
            raise Killed

    killed = build_curve("bezier", a, b)
    with pytest.raises(Killed):
        train_curve(killed, x, y, cfg, tmp_path / "run", progress=False, on_epoch_end=kill)
    assert [p.name for p in epoch_checkpoints(tmp_path / "run")] == ["epoch-0001"]
    state = json.loads((tmp_path / "run" / "epoch-0001.json").read_text())
    assert state["epoch"] == 1 and not (tmp_path / "run" / "final.json").exists()
    # A kill while writing epoch 2 leaves a tensor file without its JSON: ignored.
    (tmp_path / "run" / "epoch-0002.safetensors").write_bytes(b"partial")

    seen = []
    resumed = build_curve("bezier", a, b)
    m_resumed = train_curve(resumed, x, y, cfg, tmp_path / "run", progress=False,
                            on_epoch_end=lambda e, r: seen.append(e))
    assert seen == [2]                                   # only the missing epoch ran
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["final.json",
                                                                    "final.safetensors"]
    assert torch.equal(resumed.controls, straight.controls)   # bit-for-bit
    assert [h["train_loss"] for h in m_resumed["history"]] == \
        [h["train_loss"] for h in m_straight["history"]]

    # A finished folder returns at once with the stored metrics and curve.
    again = build_curve("bezier", a, b)
    m_again = train_curve(again, x, y, cfg, tmp_path / "run", progress=False,
                          on_epoch_end=lambda e, r: seen.append(e))
    assert seen == [2] and m_again == json.loads(json.dumps(m_resumed))
    assert torch.equal(again.controls, straight.controls)
    loaded, _ = load_curve(tmp_path / "run" / "final", a, b)
    assert torch.equal(loaded.controls, straight.controls)

    with pytest.raises(UserError, match="another config"):
        train_curve(build_curve("bezier", a, b), x, y, _tiny_cfg(lr=0.01), tmp_path / "run",
                    progress=False)


@pytest.mark.parametrize("arch", models.available())
def test_every_architecture_trains_and_evaluates(arch, tmp_path, fmnist):
    x, y = fmnist[0][:32], fmnist[1][:32]
    a, b = _pair(arch, width=0.125)
    curve = build_curve("bezier", a, b)
    start = curve.controls.detach().clone()
    cfg = _tiny_cfg(epochs=1, batch_size=16)
    metrics = train_curve(curve, x, y, cfg, tmp_path, progress=False)
    assert len(metrics["history"]) == 1 and not torch.equal(start, curve.controls)
    m = recompute_bn(curve.model_at(0.5), data.Batches(x, y, 16), batches=2)
    with torch.no_grad():
        out = m(x[:4])
    assert out.shape == (4, 10) and torch.isfinite(out).all()


def test_line_has_nothing_to_train(tmp_path, fmnist):
    a, b = _pair()
    metrics = train_curve(build_curve("line", a, b), fmnist[0][:64], fmnist[1][:64], _tiny_cfg(),
                          tmp_path, progress=False)
    assert metrics["history"] == [] and (tmp_path / "final.json").exists()


def test_curve_with_pgd_beats_the_line_midpoint(trained_pair, fmnist, tmp_path):
    """Unaligned adversarially trained endpoints: the linear midpoint is a poor robust
    network; a Bezier curve fitted with PGD in the loop finds a robust one."""
    model_a, model_b = trained_pair[0], trained_pair[1]
    x_tr, y_tr, x_te, y_te = fmnist
    curve = build_curve("bezier", model_a, model_b)
    # One epoch on 3000 images: midpoint robust accuracy ~0.43 vs ~0.19 on the line.
    cfg = CurveTrainConfig(epochs=1, batch_size=128, lr=0.05, seed=0,
                           attack=AttackConfig(eps=0.1, steps=3))
    train_curve(curve, x_tr, y_tr, cfg, tmp_path, progress=False)
    line = build_curve("line", model_a, model_b)
    attack = build_attack(AttackConfig(eps=0.1, steps=5, seed=0))
    robust = {}
    for name, c in (("bezier", curve), ("line", line)):
        m = recompute_bn(c.model_at(0.5), data.Batches(x_tr, y_tr, 128), batches=10)
        robust[name] = per_example(m, x_te, y_te, attack).accuracy
    assert robust["bezier"] > robust["line"] + 0.1, robust
    assert isinstance(next(iter(curve.parameters())), nn.Parameter)
