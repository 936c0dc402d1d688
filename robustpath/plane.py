"""The plane of a curve (Garipov et al. 2018, Tatro et al. 2020, Fig. 1): loss
surfaces on the plane through θ0, the curve's (first) control point and θ1.

Orthonormal basis by Gram-Schmidt: ``e1 = (θ1 - θ0) / |θ1 - θ0|``,
``e2 = (c - θ0)`` minus its ``e1`` component, normalised. A point (x, y) of the
plane is the network ``θ0 + x e1 + y e2``; at every grid point BatchNorm is
recomputed, then clean and robust loss are measured. The curve and the straight
line are drawn in plane coordinates. For curves with more bends,
:func:`out_of_plane` measures how far θ(t) leaves that plane (the "planar" claim).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .attacks import Attack
from .bn import recompute_bn
from .metrics import per_example
from .plots import save_figure


def plane_basis(curve) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(origin θ0, e1, e2)`` as flat ``[P]`` vectors (float64)."""
    with torch.no_grad():
        a, b = curve.theta_a.double(), curve.theta_b.double()
        if curve.controls.shape[0]:
            c = curve.controls[0].detach().double()
        else:
            c = curve.flat_at(0.5).detach().double()
        u = b - a
        e1 = u / u.norm().clamp_min(1e-30)
        v = c - a
        v = v - (v @ e1) * e1
        if float(v.norm()) < 1e-9 * float(u.norm()):  # a straight path: any orthogonal direction
            g = torch.Generator().manual_seed(0)
            v = torch.randn(u.shape, generator=g, dtype=torch.float64)
            v = v - (v @ e1) * e1
        e2 = v / v.norm()
    return a, e1, e2


def coords(curve, ts) -> np.ndarray:
    """Plane coordinates ``[T, 2]`` of θ(t)."""
    a, e1, e2 = plane_basis(curve)
    with torch.no_grad():
        pts = [curve.flat_at(float(t)).detach().double() - a for t in ts]
    return np.array([[float(p @ e1), float(p @ e2)] for p in pts])


def out_of_plane(curve, ts) -> np.ndarray:
    """Distance of θ(t) from the plane, relative to |θ1 - θ0|, at each t ``[T]``."""
    a, e1, e2 = plane_basis(curve)
    scale = float((curve.theta_b.double() - a).norm())
    out = []
    with torch.no_grad():
        for t in ts:
            p = curve.flat_at(float(t)).detach().double() - a
            r = p - (p @ e1) * e1 - (p @ e2) * e2
            out.append(float(r.norm()) / max(scale, 1e-30))
    return np.asarray(out)


def _model_at_flat(curve, flat: torch.Tensor):
    model = curve.model_at(0.0)
    params = curve.unflatten(flat.to(curve.theta_a.dtype))
    with torch.no_grad():
        for name, value in params.items():
            owner, _, attr = name.rpartition(".")
            getattr(model.get_submodule(owner), attr).copy_(value)
    return model


def plane_grid(curve, x_test, y_test, attack: Attack, bn_data, *, grid: int = 7,
               margin: float = 0.25, bn_inputs: str = "clean", bn_attack: Attack | None = None,
               device="cpu", progress: bool = True) -> dict[str, np.ndarray]:
    """Clean and robust loss on a ``grid`` x ``grid`` lattice of the curve's plane.

    The lattice spans the curve's and the line's extent plus ``margin`` of it on each
    side. ``bn_data`` is a list of training batches used at every grid point.
    Returns ``xs [G], ys [G], clean_loss [G, G], robust_loss [G, G]`` (row = y) and
    ``curve_xy [T, 2]``, ``line_xy [2, 2]``.
    """
    a, e1, e2 = plane_basis(curve)
    ts = np.linspace(0, 1, 41)
    cxy = coords(curve, ts)
    lxy = np.array([[0.0, 0.0], [float((curve.theta_b.double() - a) @ e1), 0.0]])
    pts = np.vstack([cxy, lxy])
    lo, hi = pts.min(0), pts.max(0)
    span = np.maximum(hi - lo, 1e-6)
    span[1] = max(span[1], 0.25 * span[0])
    xs = np.linspace(lo[0] - margin * span[0], hi[0] + margin * span[0], grid)
    mid_y = 0.5 * (lo[1] + hi[1])
    ys = np.linspace(mid_y - (0.5 + margin) * span[1], mid_y + (0.5 + margin) * span[1], grid)
    clean = np.zeros((grid, grid))
    robust = np.zeros((grid, grid))
    bar = tqdm(total=grid * grid, desc="plane", disable=not progress, leave=False)
    for i, y in enumerate(ys):
        for j, x in enumerate(xs):
            flat = (a + x * e1 + y * e2).to(curve.theta_a.device)
            model = _model_at_flat(curve, flat).to(device)
            recompute_bn(model, bn_data, batches=len(bn_data), inputs=bn_inputs, attack=bn_attack)
            clean[i, j] = per_example(model, x_test, y_test, None, device=device).mean_loss
            robust[i, j] = per_example(model, x_test, y_test, attack, device=device).mean_loss
            bar.update(1)
    bar.close()
    return {"xs": xs, "ys": ys, "clean_loss": clean, "robust_loss": robust, "curve_xy": cxy,
            "line_xy": lxy}


def plot_planes(panels: dict[str, dict[str, np.ndarray]], out_stem: str | Path,
                title: str = "") -> list[Path]:
    """Filled contours of clean and robust loss (columns) for each labelled plane
    (rows, e.g. unaligned / aligned), with the curve and the line drawn on them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(panels)
    fig, axes = plt.subplots(len(rows), 2, figsize=(10, 4 * len(rows)), squeeze=False)
    for r, label in enumerate(rows):
        p = panels[label]
        for c, key in enumerate(("clean_loss", "robust_loss")):
            ax = axes[r, c]
            z = np.log(np.maximum(p[key], 1e-6))
            cs = ax.contourf(p["xs"], p["ys"], z, levels=20, cmap="viridis")
            fig.colorbar(cs, ax=ax, label=f"log {key.replace('_', ' ')}")
            ax.plot(p["curve_xy"][:, 0], p["curve_xy"][:, 1], "w-", lw=2, label="curve")
            ax.plot(p["line_xy"][:, 0], p["line_xy"][:, 1], "w--", lw=1.5, label="line")
            ax.plot(p["line_xy"][:, 0], p["line_xy"][:, 1], "wo", ms=6)
            ax.set_title(f"{label}: {key.replace('_', ' ')}")
            ax.set_xlabel("along θ1 - θ0")
            ax.set_ylabel("towards the control point")
            ax.set_aspect("auto")
    axes[0, 0].legend(loc="upper right", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, out_stem, dpi=110)


__all__ = ["plane_basis", "coords", "out_of_plane", "plane_grid", "plot_planes"]
