"""The plane of a curve: orthonormal basis, coordinates, planarity, a small grid."""

from __future__ import annotations

import numpy as np
import torch

from robustpath import models
from robustpath.attacks.base import AttackConfig, build_attack
from robustpath.data import Batches
from robustpath.paths.curves import build_curve
from robustpath.paths.plane import coords, out_of_plane, plane_basis, plane_grid, plot_planes


def _pair(seed_a=0, seed_b=1):
    torch.manual_seed(seed_a)
    a = models.create("cnn-small", "fashion-mnist", width=0.5)
    torch.manual_seed(seed_b)
    b = models.create("cnn-small", "fashion-mnist", width=0.5)
    return a, b


def _bent(kind="bezier", bends=1):
    a, b = _pair()
    c = build_curve(kind, a, b, bends=bends)
    with torch.no_grad():
        c.controls.add_(torch.randn_like(c.controls) * 0.05)
    return c


def test_basis_is_orthonormal_and_endpoints_on_axis():
    c = _bent()
    _, e1, e2 = plane_basis(c)
    assert abs(float(e1.norm()) - 1) < 1e-9 and abs(float(e2.norm()) - 1) < 1e-9
    assert abs(float(e1 @ e2)) < 1e-9
    xy = coords(c, [0.0, 1.0])
    dist = float((c.theta_b.double() - c.theta_a.double()).norm())
    assert np.allclose(xy[0], [0, 0], atol=1e-6)
    assert np.allclose(xy[1], [dist, 0], atol=1e-6 * dist)


def test_quadratic_bezier_is_planar_and_more_bends_are_not():
    assert out_of_plane(_bent("bezier", 1), np.linspace(0, 1, 11)).max() < 1e-6
    assert out_of_plane(_bent("bezier", 3), np.linspace(0, 1, 11)).max() > 1e-3


def test_small_grid_runs_and_plots(fmnist, tmp_path):
    x_tr, y_tr, x_te, y_te = fmnist
    c = _bent()
    bn_data = list(Batches(x_tr[:256], y_tr[:256], 128))
    res = plane_grid(c, x_te[:64], y_te[:64], build_attack(AttackConfig(eps=0.1, steps=2, seed=0)),
                     bn_data, grid=3, progress=False)
    assert res["clean_loss"].shape == (3, 3) and np.isfinite(res["robust_loss"]).all()
    assert (res["robust_loss"] >= res["clean_loss"] - 1e-6).all()
    assert ((res["robust_err"] >= res["clean_err"] - 0.25) & (res["robust_err"] <= 1)).all()
    fig = plot_planes({"unaligned": res, "aligned": res}, tmp_path / "plane")
    assert len([ax for ax in fig.axes if ax.get_title()]) == 6  # clean, robust loss, robust error
    assert all((tmp_path / f"plane.{e}").stat().st_size > 1000 for e in ("png", "pdf"))
