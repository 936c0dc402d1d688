"""Tatro et al.'s PAM (robustpath.pam): projection, Birkhoff-von Neumann, and a planted
permutation that PAM must recover - and must not recover when its update climbs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import robustpath.pam.tatro as tatro
from robustpath.align import apply, permutation_spec, random_permutation
from robustpath.attacks.base import AttackConfig
from robustpath.errors import UserError
from robustpath.pam import (
    TatroPAMConfig,
    bvn_decomposition,
    project_ds_tatro,
    sample_bvn,
    tatro_pam,
)
from robustpath.train.loop import TrainConfig, train_model


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


# ---------------------------------------------------------------- the bench's tatro-* methods
def test_bench_runs_tatro_pam_labels_it_and_reuses_it(tmp_path, monkeypatch):
    """``--align none,tatro-none`` on a tiny run: rows and labels exist, the report is
    Tatro's PAM with the bench's settings, keys hold the objective and the start, and a
    second identical run recomputes nothing (PAM, endpoints, curves, evaluations)."""
    import json

    import pandas as pd

    import robustpath.pam as pam_pkg
    from robustpath import bench
    from robustpath.config import BenchConfig
    from robustpath.engine import keys as stage_keys
    from robustpath.engine import stages
    from robustpath.paths import fit as curve_train

    out = tmp_path / "run"
    args = ["--train-subset", "300", "--test-subset", "40", "--epochs", "1", "--curve-epochs", "1",
            "--t-points", "3", "--bn-batches", "1", "--bootstrap", "20", "--seeds", "0,1",
            "--align", "none,tatro-none", "--paths", "line",
            "--steps", "1", "--train-steps", "1", "--pam-iters", "1", "--width", "0.25",
            "--refine-rounds", "0", "--no-strong", "--no-progress", "--out", str(out),
            # speed only (same function): fused views are retraced at every PAM forward
            "--no-fuse"]
    assert bench.main(args) == 0
    rep = json.loads((out / "alignment.json").read_text())
    clean = rep["tatro-none-s0-1"]
    assert clean["start"] == "none" and clean["method"] == "tatro-none"
    assert clean["config"]["objective"] == "clean" and clean["config"]["attack"] is None
    assert len(clean["history"]) == 1 and clean["history"][0]["chosen"] in (
        "projection", "previous", "sample")
    # 300 examples, batch 128, drop_last: 2 batches -> lr 0.05 x 7820 / 2
    assert clean["history"][0]["perm_lr"] == pytest.approx(0.05 * 7820 / 2)
    assert 0.0 <= clean["fraction_changed_all"] <= 1.0
    eq = clean["equivalence"]  # the aligned B computes B's function
    assert eq["max_abs_logit_diff"] <= 1e-4 * max(1, eq["max_abs_logit"])
    rec = pd.read_csv(out / "records.csv")
    assert set(rec["align"]) == {"none", "tatro-none"}
    md = (out / "tables" / "summary.md").read_text()
    assert "Tatro PAM from unaligned" in md and "| unaligned" in md
    # keys: the objective and the start are in them; the default methods' keys are not touched
    cfg = BenchConfig(train_subset=300, pam_iters=1)
    keys = {m: stage_keys.align_key(cfg, m, "a", "b")
            for m in ("tatro-none", "tatro-robust-none", "tatro-activation", "pam-none")}
    assert len(set(keys.values())) == 4
    assert "objective" not in json.dumps(stage_keys.pam_spec(cfg, "pam-none", "a", "b"))
    assert stage_keys.align_key(BenchConfig(train_subset=300, pam_iters=2), "tatro-none", "a",
                            "b") != keys["tatro-none"]
    robust = stage_keys.tatro_config(cfg, "tatro-robust-activation")
    assert robust.objective == "robust" and robust.attack == cfg.train_attack()

    def boom(*a, **k):
        raise AssertionError("a cached stage was recomputed")

    monkeypatch.setattr(pam_pkg, "tatro_pam", boom)
    monkeypatch.setattr(stages, "train_endpoint", boom)
    monkeypatch.setattr(stages, "evaluate_path", boom)
    monkeypatch.setattr(curve_train, "train_curve", boom)
    before = (out / "tables" / "summary.md").read_bytes()
    assert bench.main(args) == 0
    assert (out / "tables" / "summary.md").read_bytes() == before
