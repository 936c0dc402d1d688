"""Input curvature (robustpath.paths.curvature): power iteration against a dense input
Hessian, the cached and resumable stage, its outputs and its flag."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from robustpath.errors import UserError
from robustpath.paths import curvature as cv


def _dense_eigs(model, x, y) -> list[np.ndarray]:
    """Eigenvalues of each example's input Hessian, from the full dense Hessian."""
    out = []
    for i in range(len(x)):
        h = torch.autograd.functional.hessian(
            lambda xi, yi=y[i:i + 1]: F.cross_entropy(model(xi[None]), yi), x[i])
        d = x[i].numel()
        out.append(torch.linalg.eigvalsh(h.reshape(d, d)).numpy())
    return out


def test_power_iteration_matches_dense_hessian_per_example():
    # tanh: an indefinite Hessian, so the sign and the largest-magnitude choice matter
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.Tanh(),
                          nn.Linear(12, 3)).double().eval()
    x = torch.rand(6, 1, 4, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (6,))
    # batch_size 4: two batches, examples of one batch iterate independently
    lam, used = cv.input_hessian_top_eig(model, x, y, iters=2000, tol=1e-12, batch_size=4,
                                         return_iters=True)
    assert lam.shape == (6,) and used.shape == (6,)
    dense = _dense_eigs(model, x, y)
    want = np.array([ev[np.argmax(np.abs(ev))] for ev in dense])
    assert (want < 0).any() and (want > 0).any()  # both signs occur in this draw
    np.testing.assert_allclose(lam, want, rtol=1e-6)
    # the weights' grad flags are restored
    assert all(p.requires_grad for p in model.parameters())


def test_relu_network_default_settings_bounded_by_top_eigenvalue():
    # ReLU + softmax-CE: PSD Hessian, so the Rayleigh quotient lies in [0, lambda_max]
    # and 20 iterations get close
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Flatten(), nn.Linear(64, 5)).eval()
    x, y = torch.rand(5, 1, 4, 4), torch.randint(0, 5, (5,))
    lam = cv.input_hessian_top_eig(model, x, y)
    top = np.array([ev.max() for ev in _dense_eigs(model, x, y)])
    assert np.all(lam >= -1e-6) and np.all(lam <= top * (1 + 1e-4))
    np.testing.assert_allclose(lam, top, rtol=0.05)
    model.train()
    with pytest.raises(UserError, match="eval mode"):
        cv.input_hessian_top_eig(model, x, y)


def test_bootstrap_and_pearson():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(4, 50)) + np.arange(4)[:, None]
    mean, lo, hi = cv.bootstrap_mean(v, bootstrap=500)
    np.testing.assert_allclose(mean, v.mean(1))
    assert np.all(lo < mean) and np.all(mean < hi) and np.all(hi - lo < 1.0)
    a, b = rng.normal(size=9), rng.normal(size=9)
    r, p = cv.pearson(a, b)
    assert r == pytest.approx(np.corrcoef(a, b)[0, 1]) and 0 < p < 1
    assert np.isnan(cv.pearson([1, 1, 1], [1, 2, 3])[0])


@pytest.fixture()
def stage_inputs(fmnist, tmp_path):
    from robustpath.config import from_preset
    from robustpath.engine.stages import RunData
    from robustpath.models import create
    from robustpath.paths.curves import build_curve

    x_tr, y_tr, x_te, y_te = fmnist
    cfg = from_preset("quick", seeds=[0, 1], t_points=3, bn_batches=1, train_subset=256,
                      test_subset=20, curvature_examples=4, curvature_iters=3, strong=False)
    data = RunData(x_tr[:256], y_tr[:256], x_te[:20], y_te[:20], 10)
    torch.manual_seed(0)
    a, b = create("cnn-small", "fashion-mnist"), create("cnn-small", "fashion-mnist")
    return cfg, build_curve("line", a.eval(), b.eval()), data, tmp_path


def test_stage_caches_and_resumes_after_a_kill(stage_inputs, monkeypatch):
    cfg, c, data, run = stage_inputs
    real = cv.input_hessian_top_eig
    calls = []

    def killed_at_third_t(*args, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(cv, "input_hessian_top_eig", killed_at_third_t)
    with pytest.raises(KeyboardInterrupt):
        cv.curvature(cfg, c, "curve-key", run, data, "cpu", progress=False)
    calls.clear()
    monkeypatch.setattr(cv, "input_hessian_top_eig",
                        lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    got = cv.curvature(cfg, c, "curve-key", run, data, "cpu", progress=False)
    assert len(calls) == 1  # resumed: only the last t was computed
    assert got["eig"].shape == (3, 4) and np.all(np.isfinite(got["eig"]))
    assert not any((run / "ckpt" / "curvature").glob("*.partial"))
    # the same as computed in one go, from scratch
    fresh = cv.curvature(cfg, c, "curve-key", run / "other", data, "cpu", progress=False)
    np.testing.assert_array_equal(got["eig"], fresh["eig"])

    def boom(*a, **k):
        raise AssertionError("recomputed")

    monkeypatch.setattr(cv, "compute_path", boom)
    again = cv.curvature(cfg, c, "curve-key", run, data, "cpu", progress=False)
    np.testing.assert_array_equal(again["eig"], got["eig"])
    with pytest.raises(AssertionError, match="recomputed"):  # another key is a miss
        cv.curvature(cfg, c, "other-curve", run, data, "cpu", progress=False)


def test_write_outputs(tmp_path):
    from robustpath.paths.evaluate import PathResult

    ts = np.linspace(0, 1, 5)
    rl = np.array([0.5, 0.9, 1.3, 0.8, 0.4])
    res = PathResult(ts=ts, speed=np.ones(5), clean_correct=np.ones((5, 3), bool),
                     robust_correct=np.ones((5, 3), bool), clean_loss=np.zeros((5, 3)),
                     robust_loss=np.repeat(rl[:, None], 3, 1))
    eig = np.repeat((rl * 2)[:, None], 6, 1) + np.linspace(0, 0.1, 6)
    ident = {"align": "none", "curve": "line", "endpoint_a": 0, "endpoint_b": 1}
    cv.write(tmp_path, {"none-line-s0-1": (ident, {"ts": ts, "eig": eig}, res)}, bootstrap=200)
    table = pd.read_csv(tmp_path / "curvature.csv")
    assert list(table.columns[:5]) == ["path_id", "align", "curve", "endpoint_a", "endpoint_b"]
    np.testing.assert_allclose(table["robust_loss"], rl)
    np.testing.assert_allclose(table["mean"], eig.mean(1), rtol=1e-5)
    assert "| none-line-s0-1 | 6 | 5 | 1.000 |" in (tmp_path / "curvature.md").read_text()
    assert (tmp_path / "plots" / "curvature_none-line-s0-1.png").stat().st_size > 1000


def test_bad_curvature_flag_one_line_exit_2(capsys):
    from robustpath.bench import main

    assert main(["--curvature", "-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--curvature must be >= 0" in err[0]


def test_stage_follows_renorm(stage_inputs):
    # --renorm repair: the points are prepared by REPAIR, as path evaluation does, under
    # another key
    from dataclasses import replace

    cfg, c, data, run = stage_inputs
    rcfg = replace(cfg, renorm="repair")
    assert cv.stage_spec(rcfg, "k") != cv.stage_spec(cfg, "k")
    got = cv.curvature(rcfg, c, "curve-key", run, data, "cpu", progress=False)
    base = cv.curvature(cfg, c, "curve-key", run, data, "cpu", progress=False)
    assert np.all(np.isfinite(got["eig"]))
    # REPAIR leaves the endpoints as they are (their own BatchNorm statistics), while
    # bn-reset re-estimates them at t = 0 too: here (untrained endpoints) that differs
    x, y = data.x_test[:4], data.y_test[:4]
    np.testing.assert_allclose(got["eig"][0], cv.input_hessian_top_eig(c.model_at(0.0), x, y, 3),
                               rtol=1e-6)
    assert not np.allclose(got["eig"][0], base["eig"][0], rtol=0.1)
