"""Robust numbers a reviewer accepts: standard AutoAttack from Croce & Hein's code, the
strong stage, the refined minimum along a path, the equivalence and transfer checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from robustpath.align.equivalence import EquivalenceError, check_same_function
from robustpath.attacks.autoattack import StandardAutoAttack
from robustpath.attacks.base import AttackConfig, build_attack
from robustpath.attacks.metrics import per_example
from robustpath.errors import UserError
from robustpath.paths.evaluate import PathResult, evaluate_path, min_point, refine_minimum
from robustpath.strong.stage import PointSetup, StrongSettings, mcnemar_p, strong_path, strong_ts
from robustpath.strong.transfer import transfer_check, write_transfer


class _Linear(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(x.flatten(1))


# ---------------------------------------------------------------- AutoAttack is the standard one
def test_autoattack_builds_croce_hein_standard_version():
    aa = build_attack(AttackConfig(name="autoattack", eps=8 / 255, seed=0), num_classes=100)
    assert isinstance(aa, StandardAutoAttack)
    eng = aa.build(_Linear(), "cpu")
    assert list(eng.attacks_to_run) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert eng.apgd.n_iter == 100 and eng.apgd.n_restarts == 1
    assert eng.apgd_targeted.n_iter == 100 and eng.apgd_targeted.n_target_classes == 9
    assert eng.fab.n_iter == 100 and eng.fab.n_target_classes == 9  # 9, also on CIFAR-100
    assert eng.square.n_queries == 5000
    plus = build_attack(AttackConfig(name="autoattack", eps=0.1, aa_version="plus")).build(
        _Linear(), "cpu")
    assert len(plus.attacks_to_run) == 6 and plus.apgd.n_restarts == 5


def test_autoattack_spends_standard_budget_on_an_unbreakable_batch(tmp_path):
    """On examples no attack can flip (a huge margin, eps 1e-4) every sub-attack runs to
    its end: APGD-CE 100 + APGD-T 9 x 100 + FAB-T 9 x 100 (+ a few) gradient passes per
    example - torchattacks' "standard" spends about 200."""
    torch.manual_seed(0)
    model = _Linear().eval()
    x = torch.rand(4, 3, 8, 8)
    with torch.no_grad():
        y = model(x).argmax(1)
    out = build_attack(AttackConfig(name="autoattack", eps=1e-4, seed=0)).run(
        model, x, y, state_path=Path(tmp_path) / "s.json")
    assert out.accuracy == 1.0
    assert out.attacks == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert 1800 <= out.grad_passes <= 2000, out.grad_passes
    assert out.queries >= 5000  # Square's 5,000 queries
    assert set(out.after) == {"apgd-ce", "apgd-t", "fab-t", "square"}


def test_autoattack_stays_in_ball_and_pixel_range_and_beats_pgd(trained_pair, fmnist, tmp_path):
    model = trained_pair[0].eval()
    _, _, x_te, y_te = fmnist
    x, y = x_te[:24], y_te[:24]  # APGD-T: 9 target classes x 100 steps each
    cfg = AttackConfig(name="autoattack", eps=0.1, seed=0, aa_version="custom",
                       aa_attacks=["apgd-ce", "apgd-t"])
    out = build_attack(cfg).run(model, x, y, state_path=tmp_path / "state.json")
    d = (out.x_adv - x).flatten(1).abs().max(1).values
    assert float(d.max()) <= 0.1 + 1e-6
    assert float(out.x_adv.min()) >= 0 and float(out.x_adv.max()) <= 1
    with torch.no_grad():  # every example AutoAttack calls broken is misclassified
        pred = model(out.x_adv).argmax(1)
    assert bool((~out.robust & out.clean).any())  # there are some
    assert bool((pred[~out.robust & out.clean] != y[~out.robust & out.clean]).all())
    pgd = per_example(model, x, y, build_attack(AttackConfig(eps=0.1, steps=10, seed=0)))
    assert out.accuracy <= pgd.accuracy
    assert out.accuracy <= float(out.clean.float().mean())
    # resumable: a second call with the finished state runs no attack
    again = build_attack(cfg).run(model, x, y, state_path=tmp_path / "state.json")
    assert again.resumed == ["apgd-ce", "apgd-t"] and again.grad_passes == 0
    assert torch.equal(again.robust, out.robust)


def test_autoattack_l2_stays_in_ball(trained_pair, fmnist, tmp_path):
    model = trained_pair[0].eval()
    x, y = fmnist[2][:16], fmnist[3][:16]
    out = build_attack(AttackConfig(name="autoattack", norm="l2", eps=0.5, seed=0,
                                    aa_version="custom", aa_attacks=["apgd-ce"])).run(
        model, x, y, state_path=tmp_path / "s.json")
    assert float((out.x_adv - x).flatten(1).norm(dim=1).max()) <= 0.5 + 1e-4
    assert float(out.x_adv.min()) >= 0 and float(out.x_adv.max()) <= 1


class _Softmax(nn.Module):
    """Returns probabilities, not logits: AutoAttack's output-range check must warn."""

    def __init__(self):
        super().__init__()
        self.net = _Linear()

    def forward(self, x):
        return self.net(x).softmax(1)


class _Noisy(_Linear):
    """Random logits in eval mode too: AutoAttack's randomness check must warn."""

    def forward(self, x):
        return super().forward(x) + torch.randn(len(x), 10)


@pytest.mark.parametrize("model,msg", [(_Softmax, "probability distribution"),
                                       (_Noisy, "randomized defense"),
                                       (_Linear, None)])
def test_autoattack_records_its_own_checks_warnings(model, msg):
    torch.manual_seed(0)
    m = model().eval()
    x = torch.rand(6, 3, 8, 8)
    with torch.no_grad():
        y = _Linear.forward(m.net if isinstance(m, _Softmax) else m, x).argmax(1)
    out = build_attack(AttackConfig(name="autoattack", eps=1e-3, seed=0, aa_version="custom",
                                    aa_attacks=["apgd-ce"])).run(m, x, y)
    if msg is None:
        assert out.warnings == []
    else:
        assert any(msg in w for w in out.warnings), out.warnings


@pytest.mark.slow  # the full standard version on a trained CNN: about a minute on 2 cores
def test_standard_autoattack_leq_pgd_on_trained_model(trained_pair, fmnist, tmp_path):
    model = trained_pair[0].eval()
    x, y = fmnist[2][:64], fmnist[3][:64]
    out = build_attack(AttackConfig(name="autoattack", eps=0.1, seed=0)).run(
        model, x, y, state_path=tmp_path / "s.json")
    pgd = per_example(model, x, y, build_attack(AttackConfig(eps=0.1, steps=10, seed=0)))
    assert out.accuracy <= pgd.accuracy


@pytest.mark.parametrize("kw,msg", [
    ({"aa_version": "bogus"}, "unknown AutoAttack version"),
    ({"aa_version": "custom"}, "needs a list"),
    ({"aa_version": "custom", "aa_attacks": ["apgd-xx"]}, "unknown AutoAttack sub-attack"),
    ({"aa_attacks": ["apgd-ce"]}, "needs --aa-version custom"),
])
def test_autoattack_bad_settings_are_user_errors(kw, msg):
    with pytest.raises(UserError, match=msg):
        build_attack(AttackConfig(name="autoattack", eps=0.1, **kw))


def test_ta_autoattack_is_named_for_what_it_is():
    from robustpath.attacks.base import ATTACKS

    assert "ta-autoattack" in ATTACKS.names()
    import robustpath.attacks.base as atk

    assert "NOT Croce & Hein's standard" in atk.__doc__


@pytest.mark.parametrize("eps,text", [(8 / 255, "8/255"), (0.1, "1/10"), (0.25, "25/100"),
                                      (0.031, "31/1000"), (0.0001, None)])
def test_card_writes_eps_as_robustbench_does(eps, text):
    from robustpath.strong.files import _fraction

    assert _fraction(eps) == text


# ---------------------------------------------------------------- refinement
def _analytic_path(acc_of_t, n: int = 200):
    """``evaluate(ts) -> PathResult`` whose robust accuracy is ``acc_of_t(t)`` exactly
    (the first round(acc * n) examples correct)."""
    def evaluate(ts):
        ts = np.asarray(ts, dtype=np.float64)
        k = np.round(np.array([acc_of_t(t) for t in ts]) * n).astype(int)
        correct = np.arange(n)[None, :] < k[:, None]
        loss = 1.0 - correct.astype(np.float32)
        return PathResult(ts=ts, speed=np.ones(len(ts)), clean_correct=np.ones_like(correct),
                          robust_correct=correct, clean_loss=np.zeros_like(loss),
                          robust_loss=loss)
    return evaluate


def test_refinement_finds_a_narrow_dip_the_grid_misses():
    dip = lambda t: 0.6 - 0.5 * max(0.0, 1 - abs(t - 0.43) / 0.04)  # width 0.08, min at 0.43
    ev = _analytic_path(dip)
    grid = ev(np.linspace(0, 1, 11))
    t_grid, acc_grid = min_point(grid)
    refined = refine_minimum(grid, ev, rounds=3)
    t_ref, acc_ref = min_point(refined)
    assert acc_ref < acc_grid - 0.1           # a much lower minimum than the grid's
    assert abs(t_ref - 0.43) < abs(t_grid - 0.43)
    assert refined.is_refined.sum() == 6 and not refined.is_refined[[0, -1]].any()
    assert np.all(np.diff(refined.ts) > 0)
    # grid metrics are unchanged by the extra points
    assert np.array_equal(refined.grid().ts, grid.ts)
    from robustpath.stats.barrier import path_metrics

    m = path_metrics(refined, bootstrap=50)
    assert m["robust_acc_min"]["value"] == pytest.approx(acc_grid)
    assert m["robust_acc_min_refined"]["value"] == pytest.approx(acc_ref)
    assert m["robust_t_min_refined"]["value"] == pytest.approx(t_ref)


def test_refinement_of_a_flat_path_keeps_the_grid_minimum():
    ev = _analytic_path(lambda t: 0.5)
    grid = ev(np.linspace(0, 1, 5))
    ref = refine_minimum(grid, ev, rounds=2)
    assert min_point(ref)[1] == pytest.approx(0.5)


# ---------------------------------------------------------------- equivalence
def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3)).eval()


def test_equivalence_accepts_a_true_permutation_and_catches_a_wrong_one():
    ref = _mlp()
    x = torch.rand(32, 12)
    perm = torch.randperm(16)
    good = _mlp()
    with torch.no_grad():
        good[1].weight.copy_(ref[1].weight[perm])
        good[1].bias.copy_(ref[1].bias[perm])
        good[3].weight.copy_(ref[3].weight[:, perm])
    rec = check_same_function(ref, good, x, what="test")
    assert rec["max_abs_logit_diff"] < 1e-5
    bad = _mlp()
    with torch.no_grad():  # permutes the units but forgets their outgoing weights
        bad[1].weight.copy_(ref[1].weight[perm])
        bad[1].bias.copy_(ref[1].bias[perm])
    with pytest.raises(EquivalenceError, match="do not compute the same function"):
        check_same_function(ref, bad, x, what="test")


# ---------------------------------------------------------------- transfer / masking
class _Quantised(nn.Module):
    """8-bit input quantisation: zero input gradient, the classic masked gradient."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(torch.round(x * 255) / 255)


def test_mcnemar_is_one_sided_and_paired():
    d = np.array([1] * 50 + [0] * 50, dtype=bool)
    assert mcnemar_p(d, d) == 1.0                       # the same attack: no evidence
    t = d.copy()
    t[:20] = False                                      # transfer breaks 20 more
    assert mcnemar_p(d, t) < 1e-5
    assert mcnemar_p(t, d) == 1.0                       # the other direction is not tested


def test_transfer_check_flags_masked_gradients_not_the_endpoint(trained_pair, fmnist, tmp_path):
    model = trained_pair[0]
    masked = _Quantised(model).eval()
    x, y = fmnist[2][:96], fmnist[3][:96]
    pgd = build_attack(AttackConfig(eps=0.1, steps=5, seed=0))
    path = lambda t: model if t in (0.0, 1.0) else masked
    # the published statistics at every point (the masked copy is A itself): no BN data
    res = evaluate_path(path, [0.0, 0.5, 1.0], x, y, pgd, progress=False, recompute_bn=False)
    frame, flagged = transfer_check(path, res, x, y, {"a": model}, pgd, PointSetup(),
                                    progress=False)
    assert flagged
    assert list(frame["stronger"]) == [False, True, False]
    assert frame["p_a"].iloc[0] == 1.0  # at t = 0 source A is the direct attack itself
    write_transfer(frame, tmp_path, flagged)
    assert "possible gradient masking" in (tmp_path / "transfer.md").read_text()


# ---------------------------------------------------------------- the strong stage on a path
def test_strong_path_on_a_line(trained_pair, fmnist, tmp_path):
    from robustpath.paths.curves import build_curve

    a, b = trained_pair[0], trained_pair[1]
    x_tr, y_tr, x_te, y_te = fmnist
    x, y = x_te[:60], y_te[:60]
    c = build_curve("line", a, b)
    pgd_cfg = AttackConfig(eps=0.1, steps=5, seed=0)
    bn = [(x_tr[i:i + 64], y_tr[i:i + 64]) for i in range(0, 128, 64)]
    res = evaluate_path(c.model_at, [0.0, 0.5, 1.0], x, y, build_attack(pgd_cfg),
                        bn_loader=bn, bn_batches=2, progress=False)
    s = StrongSettings(examples=24, aa_version="custom", aa_attacks=["apgd-ce"], pgd_steps=5,
                       pgd_restarts=2)
    setup = PointSetup(bn_loader=bn, bn_batches=2)
    sp = strong_path(c.model_at, res, x, y, settings=s, eval_attack=pgd_cfg, setup=setup,
                     folder=tmp_path / "strong", num_classes=10, progress=False)
    assert [p.role for p in sp.points] == ["a", "b", "worst"]
    for p in sp.points:
        assert p.meta["clean_matches_path"]     # prepared exactly as the path evaluation
        assert p.acc("aa") <= p.acc("clean") and p.acc("pgd") <= p.acc("clean")
        assert not p.meta["transfer_flag_a"] or p.role != "a"
    assert sp.point("a").meta["transfer_p_a"] == 1.0
    files = sorted((tmp_path / "strong").glob("*.npz"))
    assert len(files) == 3 and not list((tmp_path / "strong").glob("*aa-state*"))
    # cached: a second call attacks nothing and returns the same arrays
    again = strong_path(c.model_at, res, x, y, settings=s, eval_attack=pgd_cfg,
                        setup=setup, folder=tmp_path / "strong", num_classes=10,
                        progress=False)
    for p, q in zip(sp.points, again.points):
        assert all(np.array_equal(p.arrays[k], q.arrays[k]) for k in p.arrays)
    # a swapped cache entry is detected (bound to its point), said and recomputed
    a_, b_ = files[0], files[1]
    blob = a_.read_bytes()
    a_.write_bytes(b_.read_bytes())
    b_.write_bytes(blob)
    third = strong_path(c.model_at, res, x, y, settings=s, eval_attack=pgd_cfg,
                        setup=setup, folder=tmp_path / "strong", num_classes=10,
                        progress=False)
    for p, q in zip(sp.points, third.points):
        assert all(np.array_equal(p.arrays[k], q.arrays[k]) for k in p.arrays)


def test_strong_ts_picks_endpoints_and_worst_t():
    correct = np.array([[1, 1], [1, 0], [0, 0], [1, 1]], dtype=bool)
    res = PathResult(ts=np.linspace(0, 1, 4), speed=np.ones(4), clean_correct=correct,
                     robust_correct=correct, clean_loss=np.zeros((4, 2)),
                     robust_loss=np.zeros((4, 2)))
    pts = strong_ts(res, [0.5])
    assert [r for r, _ in pts] == ["a", "b", "worst", "extra"]
    assert pts[2][1] == pytest.approx(2 / 3) and pts[3][1] == 0.5
    with pytest.raises(UserError):
        strong_ts(res, [1.5])
    with pytest.raises(UserError, match="--strong-examples"):
        StrongSettings(examples=0).validate()


@pytest.mark.parametrize("flags,msg", [
    (["--aa-version", "bogus"], "unknown AutoAttack version"),
    (["--strong-examples", "0"], "--strong-examples must be >= 1"),
    (["--aa-attacks", "apgd-ce"], "needs --aa-version custom"),
    (["--aa-version", "custom", "--aa-attacks", "apgd-ce,nope"], "unknown AutoAttack sub-attack"),
    (["--attack", "fgsm", "--threat-model", "L2"], "fgsm supports only"),
    (["--refine-rounds", "-1"], "--refine-rounds"),
    (["--no-strong", "--aa-version", "plus"], "need the strong stage"),
])
def test_bench_bad_strong_flags_fail_before_any_work(flags, msg, tmp_path, capsys):
    from robustpath import bench

    out = tmp_path / "run"
    assert bench.main(["--out", str(out), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and msg in err[0]
    assert not out.exists()


@pytest.mark.slow  # 12 s; the fast tier stays under 6 min on 2 cores
def test_transfer_sources_are_made_once_per_endpoint_function(trained_pair, fmnist, tmp_path):
    """Two paths between the same endpoints (as the aligned and unaligned paths of a pair):
    the second attacks neither endpoint, not even to make its transfer sources, and its
    transfer outcome is the one fresh sources give."""
    from robustpath.paths.curves import build_curve

    a, b = trained_pair[0], trained_pair[1]
    x_tr, y_tr, x_te, y_te = fmnist
    x, y = x_te[:60], y_te[:60]
    pgd_cfg = AttackConfig(eps=0.1, steps=5, seed=0)
    bn = [(x_tr[i:i + 64], y_tr[i:i + 64]) for i in range(0, 128, 64)]
    s = StrongSettings(examples=24, aa_version="custom", aa_attacks=["apgd-ce"], pgd_steps=5,
                       pgd_restarts=2)
    setup = PointSetup(bn_loader=bn, bn_batches=2)
    ids = {"a": "model-a", "b": "model-b"}

    def run(kind, folder, key):
        c = build_curve(kind, a, b)
        calls = []

        def model_at(t):
            calls.append(float(t))
            return c.model_at(t)

        res = evaluate_path(c.model_at, [0.0, 0.5, 1.0], x, y, build_attack(pgd_cfg),
                            bn_loader=bn, bn_batches=2, progress=False)
        sp = strong_path(model_at, res, x, y, settings=s, eval_attack=pgd_cfg, setup=setup,
                         folder=folder, num_classes=10, progress=False, endpoint_ids=ids,
                         path_key=key)
        return sp, calls

    first, calls1 = run("line", tmp_path / "shared", "line")
    assert 0.0 in calls1 and 1.0 in calls1
    second, calls2 = run("bezier", tmp_path / "shared", "bezier")
    assert calls2 and all(0.0 < t < 1.0 for t in calls2)   # only its own worst t
    fresh, _ = run("bezier", tmp_path / "fresh", "bezier")
    for k in ("transfer_a", "transfer_b", "aa", "pgd_many"):
        assert np.array_equal(second.point("worst").arrays[k], fresh.point("worst").arrays[k])
    # a damaged source is said and made again, not used
    srcs = [f for f in (tmp_path / "shared").glob("*.npz")
            if not f.with_suffix(".meta.json").exists()]
    assert len(srcs) == 2                                   # one per endpoint, not per path
    srcs[0].write_bytes(b"garbage")
    # another path key: its worst point is new, so it needs both sources; the intact one
    # is loaded, the damaged one made again (one endpoint network built)
    again, calls3 = run("bezier", tmp_path / "shared", "bezier-2")
    assert len({0.0, 1.0} & set(calls3)) == 1
    for k in ("transfer_a", "transfer_b"):
        assert np.array_equal(again.point("worst").arrays[k], fresh.point("worst").arrays[k])
    # the many-restart PGD is accuracy-only: never more robust than the full attack
    full = build_attack(AttackConfig(**{**s.pgd_config("linf", 0.1).to_dict(),
                                        "early_stop": False}))
    w = second.point("worst")
    m = setup.prepare(build_curve("bezier", a, b).model_at, w.t)
    sub = torch.as_tensor(second.indices)
    assert w.acc("pgd_many") <= per_example(m, x[sub], y[sub], full).accuracy + 1e-9
