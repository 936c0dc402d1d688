"""Speed paths of path evaluation give the plain path's results.

* ``t_batch`` > 1 (vmap over stacked parameters) equals per-t evaluation;
* a StackedModel's logits and PGD examples equal those of its models one by one;
* the point cache returns the stored outcome and skips the work;
(Early-stopping PGD against full PGD is tested in test_attacks.py.)
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robustpath.attacks.base import AttackConfig, build_attack
from robustpath.data import Batches
from robustpath.paths.curves import build_curve
from robustpath.paths.evaluate import PointCache, evaluate_path
from robustpath.paths.stacked import StackedModel


@pytest.fixture(scope="module")
def bezier(trained_pair):
    a, b, _, _ = trained_pair
    c = build_curve("bezier", a, b)
    with torch.no_grad():  # a midpoint off the line, so interior points are not the line's
        c.controls.add_(0.01 * torch.randn(c.controls.shape, generator=torch.Generator().manual_seed(0)))
    return c


def _eval(curve, fmnist, **kw):
    x_tr, y_tr, x_te, y_te = fmnist
    attack = build_attack(AttackConfig(eps=0.1, steps=3, seed=0))
    bn_attack = build_attack(AttackConfig(eps=0.1, steps=2, seed=1))
    return evaluate_path(curve.model_at, [0.0, 0.3, 0.5, 0.8, 1.0], x_te[:120], y_te[:120], attack,
                         bn_loader=Batches(x_tr, y_tr, 64, shuffle=True, seed=0), bn_batches=2,
                         bn_inputs="adv", bn_attack=bn_attack, batch_size=50, progress=False, **kw)


def test_vmap_batched_evaluation_equals_per_t(bezier, fmnist):
    plain = _eval(bezier, fmnist)
    batched = _eval(bezier, fmnist, t_batch=3)  # groups of 3 and 2: uneven tail included
    np.testing.assert_allclose(batched.clean_loss, plain.clean_loss, rtol=1e-4, atol=1e-4)
    # PGD steps are sign(grad): a float-rounding tie sends a few trajectories elsewhere,
    # so a handful of robust losses may differ (seen: 4 of 600, by <= 3e-3); the rest agree
    close = np.isclose(batched.robust_loss, plain.robust_loss, rtol=1e-4, atol=1e-4)
    assert (~close).sum() <= 6, (~close).sum()
    np.testing.assert_allclose(batched.robust_loss.mean(1), plain.robust_loss.mean(1), atol=1e-3)
    np.testing.assert_array_equal(batched.clean_correct, plain.clean_correct)
    # the attack's steps are sign(grad): a float-rounding tie may flip one example at most
    assert (batched.robust_correct != plain.robust_correct).sum() <= 1
    assert plain.robust_correct.mean() < plain.clean_correct.mean()  # the attack does work


def test_stacked_model_matches_each_model(trained_pair, fmnist):
    a, b, _, _ = trained_pair
    x, y = fmnist[2][:40], fmnist[3][:40]
    stacked = StackedModel([a.eval(), b.eval()])
    assert list(stacked.parameters()) == []
    with torch.no_grad():
        out = stacked(torch.cat([x, x]))
        torch.testing.assert_close(out[:40], a(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out[40:], b(x), rtol=1e-5, atol=1e-5)
    attack = build_attack(AttackConfig(eps=0.1, steps=3, seed=7))
    x_adv = attack(stacked, torch.cat([x, x]), torch.cat([y, y]))
    assert (x_adv - torch.cat([x, x])).abs().max() <= 0.1 + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    for i, m in enumerate((a, b)):
        own = attack(m, x, y)
        agree = ((x_adv[40 * i:40 * (i + 1)] - own).abs() < 1e-5).float().mean()
        assert agree > 0.999
    with pytest.raises(Exception, match="multiple of 2"):
        stacked(x[:3])


def test_point_cache_reuses_shared_points(bezier, fmnist, tmp_path, monkeypatch):
    cache = PointCache(tmp_path / "points")
    first = _eval(bezier, fmnist, point_cache=cache)
    assert len(list((tmp_path / "points").glob("*.npz"))) == 5
    # a line between the same endpoints shares t=0 and t=1: only its 3 interior points run
    line = build_curve("line", *_endpoints(bezier))
    import robustpath.paths.evaluate as ev

    calls = []
    real = ev._evaluate_point
    monkeypatch.setattr(ev, "_evaluate_point", lambda *a, **k: calls.append(1) or real(*a, **k))
    second = _eval(line, fmnist, point_cache=cache)
    assert len(calls) == 3
    for k in ("clean_loss", "robust_loss", "clean_correct", "robust_correct"):
        np.testing.assert_array_equal(getattr(second, k)[[0, -1]], getattr(first, k)[[0, -1]])
    uncached = _eval(line, fmnist)
    for k in ("clean_loss", "robust_loss"):
        np.testing.assert_allclose(getattr(second, k), getattr(uncached, k), rtol=1e-6, atol=1e-6)


def _endpoints(curve):
    return curve.model_at(0.0), curve.model_at(1.0)
