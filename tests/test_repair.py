"""REPAIR (robustpath.paths.repair): endpoints untouched, statistics on target, wiring into
path evaluation (cache keys, resume), the --renorm flag."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
from torch import nn

from robustpath import data, models
from robustpath.attacks.base import AttackConfig, build_attack
from robustpath.config import from_preset
from robustpath.engine import keys as stage_keys
from robustpath.engine import stages
from robustpath.paths import curves
from robustpath.paths.bn import recompute_bn
from robustpath.paths.repair import PathRenorm, find_units, interpolate, measure, repair_model


@pytest.fixture(scope="module")
def batches():
    x, y = data.load("fashion-mnist", train=True, subset=384, seed=1, download=False)
    return [(x[:192], y[:192]), (x[192:], y[192:])]


def norm_net() -> nn.Module:
    """Conv without norm, GroupNorm, LayerNorm: the units of a BatchNorm-free network."""
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(4, 6, 3, padding=1), nn.GroupNorm(2, 6), nn.ReLU(),
                         nn.AvgPool2d(4), nn.Flatten(), nn.Linear(6 * 7 * 7, 16),
                         nn.LayerNorm(16), nn.ReLU(), nn.Linear(16, 10))


def pair(arch: str, batches):
    """Two differently initialised networks with distinct, usable statistics: BatchNorm
    statistics re-estimated, norm-layer scales and shifts drawn at random (so A's and
    B's unit statistics differ and a swapped interpolation is detectable)."""
    out = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        m = norm_net() if arch == "norm-net" else models.create(arch, "fashion-mnist")
        for mod in m.modules():
            if isinstance(mod, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)):
                with torch.no_grad():
                    mod.weight.uniform_(0.5, 2.0)
                    mod.bias.uniform_(-1.0, 1.0)
        recompute_bn(m, batches)
        out.append(m.eval())
    return out


ARCHS = ["cnn-small", "mlp", "norm-net"]


@pytest.mark.parametrize("arch", ARCHS)
def test_endpoints_keep_their_function(arch, batches):
    a, b = pair(arch, batches)
    c = curves.build_curve("line", a, b)
    x = batches[0][0][:64]
    atk = build_attack(AttackConfig(eps=0.1, steps=2, seed=1), 10)
    for method in ("repair", "repair-adv"):
        r = PathRenorm(method, c.model_at, batches, atk)
        for t, ref in ((0.0, a), (1.0, b)):
            with torch.no_grad():
                assert torch.equal(r(c.model_at(t), t)(x), ref(x))
    # the correction itself is the identity at an endpoint (to rounding): REPAIR of A
    # towards A's own statistics leaves A's logits
    xs = [xb for xb, _ in batches]
    units = find_units(a, x[:2])
    fixed = repair_model(copy.deepcopy(a), units, xs, measure(a, units, xs))
    with torch.no_grad():
        assert (fixed(x) - a(x)).abs().max() < 1e-5


def test_units_found(batches):
    a, _ = pair("cnn-small", batches)
    names = [(u.name, u.is_bn) for u in find_units(a, batches[0][0][:2])]
    # both BatchNorms and the hidden Linear; not the convs feeding BN, not the logits
    assert names == [("net.0.1", True), ("net.2.1", True), ("net.5", False)]
    n = norm_net()
    kinds = [type(u.module).__name__ for u in find_units(n, batches[0][0][:2])]
    assert kinds == ["Conv2d", "GroupNorm", "LayerNorm"]


@pytest.mark.parametrize("arch", ARCHS)
def test_statistics_reach_interpolated_target(arch, batches):
    a, b = pair(arch, batches)
    c = curves.build_curve("line", a, b)
    r = PathRenorm("repair", c.model_at, batches)
    t = 0.25
    m = r(c.model_at(t), t)
    xs = [xb for xb, _ in batches]
    units = find_units(a, xs[0][:2])
    got = measure(m, units, xs)
    sa, sb = measure(a, units, xs), measure(b, units, xs)
    target, swapped = interpolate(sa, sb, t), interpolate(sa, sb, 1 - t)
    before = measure(c.model_at(t), units, xs)
    for (gm, gs), (tm, ts), (_, ss) in zip(got, target, swapped):
        assert (gm - tm).abs().max() < 1e-4 and (gs - ts).abs().max() < 1e-4
        # would fail with the weights swapped (0.75 B + 0.25 A)
        assert (gs - ss).abs().max() > 1e-2
    # and it changed something: the raw interpolated network was not on target
    assert max(float((bs - ts).abs().max()) for (_, bs), (_, ts) in zip(before, target)) > 1e-2


def test_repair_adv_runs_and_differs(batches):
    a, b = pair("cnn-small", batches)
    c = curves.build_curve("line", a, b)
    atk = build_attack(AttackConfig(eps=0.1, steps=2, seed=1), 10)
    x = batches[0][0][:64]
    clean = PathRenorm("repair", c.model_at, batches)(c.model_at(0.5), 0.5)
    adv = PathRenorm("repair-adv", c.model_at, batches, atk)(c.model_at(0.5), 0.5)
    with torch.no_grad():
        la, lc = adv(x), clean(x)
    assert torch.isfinite(la).all() and (la - lc).abs().max() > 1e-3


def test_none_keeps_interpolated_statistics(batches):
    a, b = pair("cnn-small", batches)
    c = curves.build_curve("line", a, b)
    m = PathRenorm("none", c.model_at, [])(c.model_at(0.5), 0.5)
    assert torch.equal(m.net[0][1].running_var,
                       0.5 * (a.net[0][1].running_var + b.net[0][1].running_var))


def test_bad_renorm_one_line_exit_2(tmp_path):
    r = subprocess.run([sys.executable, "-m", "robustpath.bench", "--renorm", "magic",
                        "--out", str(tmp_path / "run")], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "repair-adv" in lines[0] and "bn-reset" in lines[0]


def test_default_keys_unchanged():
    cfg = from_preset("quick", seeds=[0, 1])
    assert "renorm" not in stages.eval_spec(cfg, "k")
    assert "renorm" not in stages.strong_spec(cfg)
    rep = from_preset("quick", seeds=[0, 1], renorm="repair-adv")
    assert stages.eval_spec(rep, "k")["renorm"] == "repair-adv"
    assert stage_keys.eval_key(rep, "k") != stage_keys.eval_key(cfg, "k")


def test_path_eval_with_repair_is_cached(batches, tmp_path, monkeypatch):
    """--renorm repair through stages.path_eval: evaluated once, then read from the
    cache without one REPAIR pass; the bn-reset evaluation has its own entry."""
    import robustpath.paths.repair as rp

    x_te, y_te = data.load("fashion-mnist", train=False, subset=40, seed=2, download=False)
    x_tr = torch.cat([b[0] for b in batches])
    y_tr = torch.cat([b[1] for b in batches])
    run = stages.RunData(x_tr, y_tr, x_te, y_te, 10)
    a, b = pair("cnn-small", batches)
    c = curves.build_curve("line", a, b)
    calls = []
    real = rp.repair_model
    monkeypatch.setattr(rp, "repair_model", lambda *a_, **k: calls.append(1) or real(*a_, **k))
    kw = dict(seeds=[0, 1], t_points=3, refine_rounds=0, bn_batches=1, batch_size=96,
              eval_steps=1, strong=False, plane_grid=0, test_subset=40, train_subset=384)
    cfg = from_preset("quick", renorm="repair", **kw)
    first = stages.path_eval(cfg, c, "line-k", tmp_path, run, "cpu", progress=False)
    assert len(calls) == 1  # one interior point (t = 0.5); the endpoints are as given
    again = stages.path_eval(cfg, c, "line-k", tmp_path, run, "cpu", progress=False)
    assert len(calls) == 1
    assert (first.robust_loss == again.robust_loss).all()
    reset = stages.path_eval(from_preset("quick", **kw), c, "line-k", tmp_path, run, "cpu",
                             progress=False)
    assert len(list((tmp_path / "ckpt" / "eval").glob("*.npz"))) == 2
    assert not (reset.clean_loss == first.clean_loss).all()


def test_strong_stage_prepares_points_as_path_evaluation(batches):
    """stages.point_setup with --renorm: the strong stage's network at t is the one the
    path evaluation measured (same REPAIR), endpoints as given."""
    from robustpath.errors import UserError
    from robustpath.paths.repair import for_path

    x_tr = torch.cat([b[0] for b in batches])
    y_tr = torch.cat([b[1] for b in batches])
    run = stages.RunData(x_tr, y_tr, x_tr[:8], y_tr[:8], 10)
    a, b = pair("cnn-small", batches)
    c = curves.build_curve("line", a, b)
    cfg = from_preset("quick", seeds=[0, 1], renorm="repair", bn_batches=2, batch_size=192,
                      strong=False, plane_grid=0)
    setup = stages.point_setup(cfg, run, "cpu", model_at=c.model_at)
    x = x_tr[:32]
    with torch.no_grad():
        want = for_path(cfg, c.model_at, run, "cpu")(c.model_at(0.5), 0.5)(x)
        assert torch.equal(setup.prepare(c.model_at, 0.5)(x), want)
        assert torch.equal(setup.prepare(c.model_at, 0.0)(x), a(x))
    assert setup.recomputes(0.5) and not setup.recomputes(1.0)
    with pytest.raises(UserError):
        stages.point_setup(cfg, run, "cpu")


def test_loss_planes_with_renorm_are_announced_before_work(tmp_path, capsys):
    """Loss planes re-estimate BatchNorm whatever --renorm says (a plane point has no t):
    the bench says so on stderr before any work; silent at the default or without planes."""
    from robustpath import bench
    from robustpath.paths.repair import plane_note

    assert plane_note(from_preset("quick", renorm="bn-reset")) is None
    assert plane_note(from_preset("quick", renorm="repair", plane_grid=0)) is None
    assert "--plane-grid 5" in plane_note(from_preset("quick", renorm="none", plane_grid=5))
    blocker = tmp_path / "file"  # --out is a file: the run stops right after the note
    blocker.write_text("x")
    assert bench.main(["--renorm", "repair", "--seeds", "0,1", "--out", str(blocker)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("note: --renorm repair") and "re-estimate BatchNorm" in err[0]
    assert err[1].startswith("error:") and not (tmp_path / "file" / "ckpt").exists()


def test_repair_study_refuses_bad_input_before_any_arm(tmp_path, capsys):
    # before: a bad second arm (or --paths) failed with a traceback after the first arm ran
    from studies import repair as study

    for argv in (["--renorms", "repair,bogus"], ["--paths", "line,bogus"],
                 ["--source", str(tmp_path / "none")], ["--bootstrap", "0"]):
        assert study.main([*argv, "--work", str(tmp_path / "w"), "--out",
                           str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:")
    assert not (tmp_path / "w").exists() and not (tmp_path / "o").exists()


def test_bias_free_units_stack_with_endpoints_under_t_batch(batches):
    """A bias-free Conv unit gains a bias when corrected; the endpoints get a zero one (same
    logits, bit for bit), so --t-batch stacks them with corrected points: before, a batch
    holding t = 0 and t = 0.5 failed ("StackedModel needs models of one architecture")."""
    from robustpath.paths.evaluate import evaluate_path

    def net():
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.ReLU(),
                             nn.AvgPool2d(7), nn.Flatten(), nn.Linear(64, 10))
    ends = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        ends.append(net().eval())
    c = curves.build_curve("line", *ends)
    x, y = batches[1][0][:40], batches[1][1][:40]
    atk = build_attack(AttackConfig(eps=0.1, steps=1, seed=1), 10)
    r = PathRenorm("repair", c.model_at, batches)
    with torch.no_grad():
        assert torch.equal(r(c.model_at(0.0), 0.0)(x), ends[0](x))
    kw = dict(progress=False, renorm=r)
    one = evaluate_path(c.model_at, [0.0, 0.5, 1.0], x, y, atk, t_batch=1, **kw)
    three = evaluate_path(c.model_at, [0.0, 0.5, 1.0], x, y, atk, t_batch=3, **kw)
    assert abs(one.clean_loss - three.clean_loss).max() < 1e-4
    assert (one.robust_correct == three.robust_correct).all()
