"""Tatro et al.'s PAM (robustpath.pam): projection, Birkhoff-von Neumann, and a planted
permutation that PAM must recover - and must not recover when its update climbs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import robustpath.pam.tatro as tatro
from robustpath.align import apply, permutation_spec, random_permutation
from robustpath.attacks import AttackConfig
from robustpath.errors import UserError
from robustpath.pam import (
    TatroPAMConfig,
    bvn_decomposition,
    project_ds_tatro,
    sample_bvn,
    tatro_pam,
)
from robustpath.train import TrainConfig, train_model


def test_their_projection_makes_rows_and_columns_sum_to_one():
    g = torch.Generator().manual_seed(0)
    m = torch.rand(12, 12, generator=g, dtype=torch.float64) * 0.3 + torch.eye(12, dtype=torch.float64)
    x = project_ds_tatro(m, 20)
    assert torch.allclose(x.sum(0), torch.ones(12, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(x.sum(1), torch.ones(12, dtype=torch.float64), atol=1e-12)
    assert x.min() > -1e-2                      # clipping keeps it (nearly) nonnegative
    eye = torch.eye(5, dtype=torch.float64)
    assert torch.equal(project_ds_tatro(eye, 20), eye)   # vertices are fixed points


def test_bvn_decomposition_reconstructs_a_convex_combination():
    rng = np.random.default_rng(0)
    n = 7
    perms = [rng.permutation(n) for _ in range(3)]
    coeffs = [0.5, 0.3, 0.2]
    d = sum(c * np.eye(n)[p] for c, p in zip(coeffs, perms))
    terms = bvn_decomposition(d)
    recon = sum(c * np.eye(n)[p] for c, p in terms)          # P[i, p[i]] = 1
    assert np.allclose(recon, d, atol=1e-9)
    assert abs(sum(c for c, _ in terms) - 1) < 1e-9
    seen = {tuple(sample_bvn(terms, rng, top=11)) for _ in range(50)}
    assert seen <= {tuple(p) for _, p in terms} and len(seen) > 1


@pytest.fixture(scope="module")
def planted(fmnist):
    """A small clean MLP (16 + 16 hidden units) and B = A with its units shuffled."""
    x, y, xt, yt = fmnist
    x, y = x[:1024], y[:1024]
    cfg = TrainConfig(arch="mlp", width=1 / 32, method="clean", epochs=3, lr=0.05,
                      train_subset=1024, test_subset=256, attack=AttackConfig(eps=0.1, steps=1),
                      eval_attack=AttackConfig(eps=0.1, steps=1, seed=0))
    a, _ = train_model(cfg, progress=False, data=(x, y, xt[:256], yt[:256]))
    spec = permutation_spec(a, x[:2])
    pi = random_permutation(spec=spec, seed=3)
    return a, apply(a, pi), pi, x, y


# 4 epochs x 8 batches = 32 steps; lr 10 gives lr x steps ~ theirs (0.05 x 20 x 391)
PLANTED = dict(perm_epochs=4, curve_epochs=1, perm_lr=10.0, bvn_samples=8, batch_size=128,
               select_examples=512)


def _recovered(planted) -> tuple[float, dict]:
    a, b, pi, x, y = planted
    res = tatro_pam(a, b, x, y, TatroPAMConfig(**PLANTED), progress=False)
    # apply(b, perm) unit i is A's unit pi[perm[i]]: recovered where that is i
    frac = min(float((pi[g][res.perm[g]] == torch.arange(len(pi[g]))).float().mean())
               for g in pi)
    return frac, res.history[0]


def test_pam_recovers_a_planted_permutation(planted):
    frac, h = _recovered(planted)
    assert frac >= 0.75, h
    assert h["chosen"] != "previous"
    assert h["candidates"]["projection"] < h["candidates"]["previous"] - 0.1


def test_sign_flipped_update_fails_the_recovery_test(planted, monkeypatch):
    """Negative control: the same run with gradient *ascent* in the permutation step
    must not pass the recovery test above (it would if the test had no power)."""
    orig = tatro.perm_update
    monkeypatch.setattr(tatro, "perm_update",
                        lambda s, g, lr, sp, nu, it: orig(s, -g, lr, sp, nu, it))
    frac, h = _recovered(planted)
    assert frac < 0.5, h


def test_exported_curve_is_the_pam_curve_and_robust_objective_runs(planted):
    a, b, _, x, y = planted
    cfg = TatroPAMConfig(objective="robust", perm_epochs=1, curve_epochs=1, bvn_samples=2,
                         select_examples=256, attack=AttackConfig(eps=0.1, steps=1))
    res = tatro_pam(a, b, x[:256], y[:256], cfg, progress=False)
    c = res.curve(a, b)
    path = tatro._Path(a, b, res.perm.spec, "cpu")
    for t in (0.0, 0.3, 1.0):
        assert torch.allclose(c.flat_at(t), path.theta(t, tatro._mats(res.perm, "cpu"), res.phi),
                              atol=1e-5)
    with pytest.raises(UserError):
        TatroPAMConfig(objective="adv").validate()
