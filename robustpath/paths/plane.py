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

import dataclasses
from pathlib import Path

import numpy as np
import torch

from robustpath import progress as progress_mod
from robustpath.attacks.base import Attack
from robustpath.attacks.metrics import per_example
from robustpath.paths.bn import recompute_bn
from robustpath.report.plots import save_figure


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


def _control_coords(curve, a, e1, e2) -> np.ndarray:
    """Plane coordinates ``[2]`` of the first control point (θ(1/2) without one)."""
    with torch.no_grad():
        c = curve.controls[0] if curve.controls.shape[0] else curve.flat_at(0.5)
        v = c.detach().double() - a
    return np.array([float(v @ e1), float(v @ e2)])


def _model_at_flat(curve, flat: torch.Tensor):
    model = curve.model_at(0.0)
    params = curve.unflatten(flat.to(curve.theta_a.dtype))
    with torch.no_grad():
        for name, value in params.items():
            owner, _, attr = name.rpartition(".")
            getattr(model.get_submodule(owner), attr).copy_(value)
    return model


#: the lattice's side across θ1 − θ0, relative to its side along it (before margins)
ORTH_SPAN = 0.45


def plane_lattice(curve, grid: int = 7, margin: float = 0.25) -> dict:
    """The lattice of :func:`plane_grid`: basis ``a, e1, e2`` and ``xs [G], ys [G]``,
    with the drawn ``curve_xy [T, 2]``, ``line_xy [2, 2]``, ``control_xy [2]``."""
    a, e1, e2 = plane_basis(curve)
    ts = np.linspace(0, 1, 41)
    cxy = coords(curve, ts)
    lxy = np.array([[0.0, 0.0], [float((curve.theta_b.double() - a) @ e1), 0.0]])
    ctrl = _control_coords(curve, a, e1, e2)
    pts = np.vstack([cxy, lxy, ctrl[None]])  # the control point is drawn, so it is inside
    lo, hi = pts.min(0), pts.max(0)
    span = np.maximum(hi - lo, 1e-6)
    # the valley's walls: a strip of a quarter of the length showed only its floor
    span[1] = max(span[1], ORTH_SPAN * span[0])
    xs = np.linspace(lo[0] - margin * span[0], hi[0] + margin * span[0], grid)
    mid_y = 0.5 * (lo[1] + hi[1])
    ys = np.linspace(mid_y - (0.5 + margin) * span[1], mid_y + (0.5 + margin) * span[1], grid)
    return {"a": a, "e1": e1, "e2": e2, "xs": xs, "ys": ys, "curve_xy": cxy, "line_xy": lxy,
            "control_xy": ctrl}


#: the arrays of one lattice row (``[G]`` each; row i of the plane's ``[G, G]`` arrays)
ROW_ARRAYS = ("clean_loss", "robust_loss", "clean_err", "robust_err")


def plane_row(curve, lat: dict, i: int, x_test, y_test, attack: Attack, bn_data, *,
              bn_inputs: str = "clean", bn_attack: Attack | None = None, device="cpu",
              bar=None) -> dict[str, np.ndarray]:
    """Row ``i`` (y = ``lat["ys"][i]``) of :func:`plane_grid`: :data:`ROW_ARRAYS`, each
    ``[G]``. Every point is independent of the others (seeded attacks, the same BN
    batches), so rows computed apart give the bytes of the whole grid."""
    a, e1, e2, y = lat["a"], lat["e1"], lat["e2"], lat["ys"][i]
    g = len(lat["xs"])
    out = {k: np.zeros(g) for k in ROW_ARRAYS}
    for j, x in enumerate(lat["xs"]):
        flat = (a + x * e1 + y * e2).to(curve.theta_a.device)
        model = _model_at_flat(curve, flat).to(device)
        recompute_bn(model, bn_data, batches=len(bn_data), inputs=bn_inputs, attack=bn_attack)
        ce = per_example(model, x_test, y_test, None, device=device)
        rob = per_example(model, x_test, y_test, attack, device=device)
        out["clean_loss"][j], out["clean_err"][j] = ce.mean_loss, 1.0 - ce.accuracy
        out["robust_loss"][j], out["robust_err"][j] = rob.mean_loss, 1.0 - rob.accuracy
        if bar is not None:
            bar.update(1)
    return out


def _assemble(lat: dict, rows: list[dict]) -> dict[str, np.ndarray]:
    """:func:`plane_grid`'s arrays from its lattice and rows, in its order."""
    grid = {k: np.stack([r[k] for r in rows]) for k in ROW_ARRAYS}
    return {"xs": lat["xs"], "ys": lat["ys"], "clean_loss": grid["clean_loss"],
            "robust_loss": grid["robust_loss"], "clean_err": grid["clean_err"],
            "robust_err": grid["robust_err"], "curve_xy": lat["curve_xy"],
            "line_xy": lat["line_xy"], "control_xy": lat["control_xy"]}


def plane_grid(curve, x_test, y_test, attack: Attack, bn_data, *, grid: int = 7,
               margin: float = 0.25, bn_inputs: str = "clean", bn_attack: Attack | None = None,
               device="cpu", progress: bool = True, desc: str = "plane") -> dict[str, np.ndarray]:
    """Clean and robust loss and error on a ``grid`` x ``grid`` lattice of the curve's plane.

    The lattice spans the extent of the curve, the line and the control point plus
    ``margin`` of it on each side; across θ1 − θ0 at least :data:`ORTH_SPAN` of its
    length along, so the valley's walls are in the window. ``bn_data`` is a list of training batches used at every grid point.
    Returns ``xs [G], ys [G], clean_loss [G, G], robust_loss [G, G]``, ``clean_err``,
    ``robust_err [G, G]`` (fractions of the examples misclassified; row = y) and
    ``curve_xy [T, 2]``, ``line_xy [2, 2]``, ``control_xy [2]``.
    """
    lat = plane_lattice(curve, grid, margin)
    bar = progress_mod.bar(total=grid * grid, desc=desc, unit="pt", progress=progress)
    rows = [plane_row(curve, lat, i, x_test, y_test, attack, bn_data, bn_inputs=bn_inputs,
                      bn_attack=bn_attack, device=device, bar=bar) for i in range(grid)]
    bar.close()
    return _assemble(lat, rows)


# the colour of loss above the top contour level (Garipov et al. draw it as one colour)
CLIP_COLOR = "#cfcfcf"
LEVELS = 9


def control_xy(p: dict[str, np.ndarray]) -> np.ndarray:
    """Plane coordinates ``[2]`` of the curve's first control point: stored by
    :func:`plane_grid`, or, for older grids, recovered from θ(1/2) of the quadratic
    Bezier (θ(1/2) = (θ0 + 2c + θ1) / 4)."""
    if "control_xy" in p:
        return np.asarray(p["control_xy"], dtype=np.float64)
    cxy = np.asarray(p["curve_xy"], dtype=np.float64)
    mid = cxy[len(cxy) // 2]
    return 2.0 * mid - 0.5 * (cxy[0] + cxy[-1])


def contour_levels(values: list[np.ndarray], levels: int = LEVELS,
                   clip_quantile: float = 0.8) -> np.ndarray:
    """Log-spaced contour levels shared by ``values`` (the panels that are compared),
    after Garipov et al. 2018's plane plots: the excess over the lowest loss grows
    geometrically from 1/50 of the range to the clip level, so the basin gets fine
    contours and the walls coarse ones. The clip level is the ``clip_quantile`` of
    all values (higher loss is drawn in one clip colour). Returns ``levels + 1``
    increasing values, the first the minimum."""
    allv = np.concatenate([np.asarray(v, dtype=np.float64).ravel() for v in values])
    allv = allv[np.isfinite(allv)]
    lo = float(allv.min())
    top = float(np.quantile(allv, clip_quantile))
    if top <= lo * (1 + 1e-9) + 1e-12:
        top = float(allv.max()) if allv.max() > lo else lo + 1.0
    offsets = np.geomspace(0.02, 1.0, levels) * (top - lo)
    return np.concatenate([[lo], lo + offsets])


def _fmt_level(v: float, pos=None) -> str:  # pos: matplotlib's tick formatter signature
    return f"{v:.3g}"


def _avoid_points(p: dict[str, np.ndarray]) -> np.ndarray:
    """Points ``[K, 2]`` a contour label must not cover: the curve, the line (sampled)
    and the markers."""
    line = np.asarray(p["line_xy"], dtype=np.float64)
    s = np.linspace(0, 1, 21)[:, None]
    return np.vstack([np.asarray(p["curve_xy"], dtype=np.float64),
                      line[0] + s * (line[1] - line[0]), control_xy(p)[None]])


def _label_contours(ax, lines, avoid: np.ndarray, clearance: float, grid_xs, grid_ys) -> list:
    """One label in nats on every other contour level, placed where the level's line
    is farthest from the drawn curve, line, markers and the labels placed before (and
    inside the panel's limits and its grid, so call it after setting them): no label
    covers the path or hangs over the panel's edge. A level whose line never gets ``clearance`` away from them stays unlabelled
    (the colour bar names it). Matplotlib's automatic placement put labels on the
    curve and under the markers. Returns the labels."""
    x0, x1 = max(ax.get_xlim()[0], grid_xs[0]), min(ax.get_xlim()[1], grid_xs[-1])
    y0, y1 = max(ax.get_ylim()[0], grid_ys[0]), min(ax.get_ylim()[1], grid_ys[-1])
    pad = 0.05 * (x1 - x0)
    paths = lines.get_paths()  # one path per level
    placed: list[np.ndarray] = []
    chosen, positions = [], []
    for i in range(1, len(lines.levels), 2):
        v = np.asarray(paths[i].vertices) if i < len(paths) else np.zeros((0, 2))
        v = v[(v[:, 0] > x0 + pad) & (v[:, 0] < x1 - pad) & (v[:, 1] > y0 + pad)
              & (v[:, 1] < y1 - pad)] if len(v) else v
        if not len(v):
            continue
        d = np.sqrt(((v[:, None, :] - avoid[None, :, :]) ** 2).sum(-1)).min(1)
        if placed:  # a label is about two clearances wide: keep labels apart by that
            others = np.vstack(placed)
            d = np.minimum(d, 0.5 * np.sqrt(((v[:, None, :] - others[None]) ** 2).sum(-1)).min(1))
        best = int(d.argmax())
        if d[best] < clearance:
            continue
        placed.append(v[best][None])
        chosen.append(lines.levels[i])
        positions.append((float(v[best, 0]), float(v[best, 1])))
    if not chosen:
        return []
    return ax.clabel(lines, chosen, fmt=_fmt_level, fontsize=5.5, inline=True, manual=positions)


def plot_planes(panels: dict[str, dict[str, np.ndarray]], out_stem: str | Path | None = None,
                title: str = ""):
    """Draw :func:`planes_figure`; writes ``<out_stem>.png`` and ``.pdf`` when given a
    stem. Returns the Figure."""
    from robustpath.report.style import paper_style

    with paper_style():
        fig = planes_figure(panels, title)
        if out_stem is not None:
            save_figure(fig, out_stem)
    return fig


#: the rows of a plane figure: (array key, name, unit, display scale); a row is drawn
#: when every plane holds its array (grids saved before errors were stored have none)
QUANTITIES = (("clean_loss", "clean loss", "nats", 1.0),
              ("robust_loss", "robust loss", "nats", 1.0),
              ("robust_err", "robust error", "%", 100.0))
#: contours are drawn on a grid this many times finer than the measured one
REFINE = 6
CURVE_COLOR = "#D55E00"  # Okabe-Ito vermillion: reads on every viridis shade
OUTSIDE_HATCH = "////"


def smooth_grid(xs: np.ndarray, ys: np.ndarray, z: np.ndarray,
                factor: int = REFINE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(xs', ys', z')`` on a ``factor`` times finer lattice: a bicubic interpolating
    spline through the measured values (of log z where z > 0, so the interpolant stays
    positive), clipped to their range. Equal to ``z`` at the measured points; the
    contours of a 13 x 13 grid, drawn piecewise linearly, had V-shaped kinks between
    grid points. Grids under 4 x 4 are returned unchanged (no cubic through them).
    Cost: 0.2 ms for 13 x 13 -> 73 x 73 (measured, one thread; no network is evaluated
    again, so the plane stage costs what it did)."""
    from scipy.interpolate import RectBivariateSpline

    xs, ys, z = (np.asarray(a, dtype=np.float64) for a in (xs, ys, z))
    if len(xs) < 4 or len(ys) < 4 or factor <= 1 or not np.isfinite(z).all():
        return xs, ys, z
    fx = np.linspace(xs[0], xs[-1], (len(xs) - 1) * factor + 1)
    fy = np.linspace(ys[0], ys[-1], (len(ys) - 1) * factor + 1)
    positive = bool((z > 0).all())
    spline = RectBivariateSpline(ys, xs, np.log(z) if positive else z, kx=3, ky=3, s=0)
    out = spline(fy, fx)
    out = np.exp(out) if positive else out
    return fx, fy, np.clip(out, z.min(), z.max())


def planes_figure(panels: dict[str, dict[str, np.ndarray]], title: str = ""):
    """Loss and robust-error surfaces on the plane of each labelled curve (columns, e.g.
    unaligned / aligned), one quantity per row (:data:`QUANTITIES`), after Garipov et
    al. 2018 (their ``plane_plot.py``).

    Every panel is drawn at true aspect on the same axis limits, so a unit of L2
    distance in weight space has one length in the whole figure; where a plane's grid
    does not reach, the panel is hatched (never coloured). Each row shares one colour
    scale (the panels it compares) with log-spaced contour levels above the minimum
    (:func:`contour_levels`), labelled in the row's unit; values above the top level
    are one grey. Contours are drawn on a refined lattice (:func:`smooth_grid`).
    Markers: θ₀ and θ₁ (black circles) and the control point (white diamond); the
    fitted curve (vermillion) and the straight line (black, dashed) run between them.
    Returns the figure.
    """
    from matplotlib import patheffects
    from matplotlib.colors import BoundaryNorm
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch, Rectangle

    from robustpath.report.style import TEXT, paper_style

    cols = list(panels)
    rows = [q for q in QUANTITIES if all(q[0] in p for p in panels.values())]
    xlo = min(float(p["xs"][0]) for p in panels.values())
    xhi = max(float(p["xs"][-1]) for p in panels.values())
    ylo = min(float(p["ys"][0]) for p in panels.values())
    yhi = max(float(p["ys"][-1]) for p in panels.values())
    panel_w = (TEXT - 1.4) / len(cols)
    drawn_h = panel_w * (yhi - ylo) / max(xhi - xlo, 1e-9)  # at true aspect
    panel_h = max(0.5, drawn_h)
    bar_w = 0.04 * panel_w * len(cols)  # colour bar width: fraction 0.04 of its row
    # titles, ticks and labels: about 0.4 in a row, 0.75 in for the x label and legend
    height = len(rows) * (panel_h + 0.4) + 0.75 + (0.25 if title else 0)
    white = [patheffects.withStroke(linewidth=2.8, foreground="white")]
    with paper_style() as plt:
        fig, axes = plt.subplots(len(rows), len(cols), figsize=(TEXT, height), squeeze=False,
                                 sharex=True, sharey=True, layout="constrained")
        for r, (key, name, unit, scale) in enumerate(rows):
            levels = contour_levels([panels[c][key] * scale for c in cols])
            cmap = plt.get_cmap("viridis").with_extremes(over=CLIP_COLOR)
            norm = BoundaryNorm(levels, cmap.N, extend="max")
            for c, label in enumerate(cols):
                p, ax = panels[label], axes[r, c]
                # outside this plane's grid: hatched, so it never reads as a value
                ax.add_patch(Rectangle((xlo, ylo), xhi - xlo, yhi - ylo, facecolor="white",
                                       edgecolor="#b0b0b0", hatch=OUTSIDE_HATCH, linewidth=0,
                                       zorder=0))
                fx, fy, fz = smooth_grid(p["xs"], p["ys"], p[key] * scale)
                cs = ax.contourf(fx, fy, fz, levels=levels, cmap=cmap, norm=norm, extend="max",
                                 zorder=1)
                lines = ax.contour(fx, fy, fz, levels=levels, colors="black", linewidths=0.4,
                                   alpha=0.55, zorder=2)
                ax.plot(p["curve_xy"][:, 0], p["curve_xy"][:, 1], "-", color=CURVE_COLOR,
                        lw=1.5, path_effects=white, zorder=4)
                ax.plot(p["line_xy"][:, 0], p["line_xy"][:, 1], "--", color="black", lw=1.0,
                        path_effects=white, zorder=4)
                ax.plot(p["line_xy"][:, 0], p["line_xy"][:, 1], "o", color="black", ms=5,
                        mec="white", mew=0.8, zorder=5)
                cx, cy = control_xy(p)
                ax.plot([cx], [cy], "D", color="white", ms=4.5, mec="black", mew=0.8, zorder=5)
                for (x, y), t, dx in zip(p["line_xy"], ("θ₀", "θ₁"), (-11, 4)):
                    ax.annotate(t, (x, y), xytext=(dx, -11), textcoords="offset points",
                                fontsize=7.5, color="black", zorder=6, path_effects=white)
                ax.set_title(f"{label}: {name}")
                ax.set_aspect("equal")
                ax.set_xlim(xlo, xhi)
                ax.set_ylim(ylo, yhi)
                _label_contours(ax, lines, _avoid_points(p), (xhi - xlo) * 0.06, fx, fy)
                if r == len(rows) - 1:
                    ax.set_xlabel("L2 distance in weight space along θ₁ − θ₀")
            # a tick label every ~0.2 in of bar, the top level always named
            k = max(3, min(len(levels), int(drawn_h / 0.2) + 1))
            ticks = levels[np.unique(np.round(np.linspace(0, len(levels) - 1, k)).astype(int))]
            # a bar as tall as its row (aspect: length / width), not taller: a taller
            # one spread the rows apart
            cb = fig.colorbar(cs, ax=list(axes[r, :]), location="right", shrink=1.0,
                              fraction=0.04, aspect=max(2.0, 0.95 * drawn_h / bar_w),
                              ticks=ticks,
                              format=_fmt_level, extendfrac=0.08)
            cb.set_label(f"{name} ({unit})")
            cb.ax.tick_params(labelsize=6.5)
        fig.supylabel("L2 distance across θ₁ − θ₀\n(towards the control point)", fontsize=8)
        handles = [Line2D([], [], color=CURVE_COLOR, lw=1.5, label="fitted curve"),
                   Line2D([], [], color="black", lw=1.0, ls="--", label="line"),
                   Line2D([], [], ls="", marker="o", color="black", ms=5,
                          label="endpoints θ₀, θ₁"),
                   Line2D([], [], ls="", marker="D", color="white", mec="black", ms=4.5,
                          label="control point"),
                   Patch(facecolor=CLIP_COLOR, edgecolor="#999999", linewidth=0.4,
                         label="above the top level"),
                   Patch(facecolor="white", edgecolor="#b0b0b0", hatch=OUTSIDE_HATCH,
                         linewidth=0.4, label="outside this plane's grid")]
        fig.legend(handles=handles, loc="outside lower center", ncol=3, handlelength=2.6)
        if title:
            fig.suptitle(title)
        return fig


def save_planes(path: str | Path, planes: dict[str, dict[str, np.ndarray]]) -> None:
    """Store plane grids (method -> arrays) as one ``.npz`` with keys
    ``<method>/<array>``, written atomically; :func:`load_planes` reads it back."""
    import io

    from robustpath.io.store import atomic_write_bytes

    buf = io.BytesIO()
    np.savez_compressed(buf, **{f"{m}/{k}": np.asarray(v) for m, p in planes.items()
                                for k, v in p.items()})
    atomic_write_bytes(Path(path), buf.getvalue())


def load_planes(path: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """Plane grids stored by :func:`save_planes`, in their stored order."""
    out: dict[str, dict[str, np.ndarray]] = {}
    with np.load(path) as z:
        for name in z.files:
            method, _, key = name.rpartition("/")
            out.setdefault(method, {})[key] = z[name]
    return out


__all__ = ["plane_basis", "coords", "out_of_plane", "plane_grid", "plot_planes", "save_planes",
           "load_planes", "contour_levels", "control_xy"]


# ---------------------------------------------------------------- plane of a curve
PLANE_EXAMPLES = 300  # the plane stage's test examples (the first ones)


def plane_spec(cfg, curve_key: str) -> dict:
    """What the plane of the curve with key ``curve_key`` depends on (its cache key)."""
    return {"curve": curve_key, "grid": cfg.plane_grid, "examples": PLANE_EXAMPLES,
            # the lattice covers the control point; its orthogonal side is at least
            # ORTH_SPAN of the side along θ1 - θ0; clean and robust error too
            "extent": "with-control/orth-0.45/err",
            "bn_batches": cfg.bn_batches, "bn_inputs": cfg.bn_inputs,
            "attack": cfg.eval_attack().to_dict()}


def stage(cfg, c, curve_key: str, run_dir: Path, data, device, progress: bool = True,
          desc: str = "plane") -> dict:
    """The plane stage (registered below as a path stage): loss surface on the plane of curve
    ``c`` (``cfg.plane_grid`` squared points, on the first ``PLANE_EXAMPLES`` test
    examples); cached as ``ckpt/plane/<key>.npz``.

    Cost (measured for the quick preset, cnn-small, one CPU thread on a shared,
    loaded 2-core machine): one grid point (BatchNorm recomputed on 2 PGD batches,
    clean and PGD-10 loss on 300 examples) took 1.7-1.9 s, so the quick preset's two
    9 x 9 planes are about 160 points (~5 min there), 13 x 13 about 340 and 17 x 17
    about 580. At 9 x 9 the contours of the unaligned plane still showed kinks between
    grid points (the contouring interpolates linearly), so the quick preset uses 13 x 13."""
    spec, path, cached = _cached(cfg, curve_key, run_dir)
    if cached is not None:
        return cached
    attack, bn_attack, bn_data = _measure(cfg, data, device)
    res = plane_grid(c, data.x_test[:PLANE_EXAMPLES], data.y_test[:PLANE_EXAMPLES], attack,
                     bn_data, grid=cfg.plane_grid, bn_inputs=cfg.bn_inputs, bn_attack=bn_attack,
                     device=device, progress=progress, desc=desc)
    res["out_of_plane"] = out_of_plane(c, np.linspace(0, 1, 21))
    _save(path, res, spec)
    return res


def _cached(cfg, curve_key: str, run_dir: Path):
    """``(spec, path, arrays or None)`` of the plane's cache entry ``ckpt/plane/<key>.npz``."""
    from robustpath.io.cache import load_npz, recompute_notice
    from robustpath.io.store import CacheError, config_hash

    spec = plane_spec(cfg, curve_key)
    path = Path(run_dir) / "ckpt" / "plane" / f"{config_hash(spec)}.npz"
    try:
        return spec, path, load_npz(path, spec)
    except CacheError as e:
        recompute_notice(e, "loss plane")
    return spec, path, None


def _measure(cfg, data, device):
    """The evaluation attack, the BN attack (seed 1) and the BN batches of every point."""
    from robustpath.attacks.base import build_attack

    attack = build_attack(cfg.eval_attack(), data.num_classes)
    bn_attack = build_attack(dataclasses.replace(cfg.train_attack(), seed=1), data.num_classes)
    bn_data = list(data.train_batches(cfg, seed=0, device=device))[: cfg.bn_batches]
    return attack, bn_attack, bn_data


def _save(path: Path, res: dict, spec: dict) -> None:
    import shutil

    from robustpath.io.cache import save_npz

    save_npz(path, res, spec)
    shutil.rmtree(path.with_suffix(".rows"), ignore_errors=True)  # its rows, now in the entry


def stage_row(cfg, c, curve_key: str, i: int, run_dir: Path, data, device,
              progress: bool = True, desc: str = "plane") -> dict[str, np.ndarray]:
    """Row ``i`` of the plane stage (:func:`plane_row`; one engine node each, so rows run
    in parallel): from the whole plane's entry when it exists, else from
    ``ckpt/plane/<key>.rows/row<i>.npz`` (a killed run resumes by row), else computed
    and stored there. ``c``: the curve, or a function returning it (called on a miss)."""
    from robustpath.io.cache import load_npz, recompute_notice, save_npz
    from robustpath.io.store import CacheError

    spec, path, full = _cached(cfg, curve_key, run_dir)
    if full is not None:
        return {k: full[k][i] for k in ROW_ARRAYS}
    rpath, rspec = path.with_suffix(".rows") / f"row{i}.npz", {**spec, "row": i}
    try:
        got = load_npz(rpath, rspec)
        if got is not None:
            return {k: got[k] for k in ROW_ARRAYS}
    except CacheError as e:
        recompute_notice(e, f"loss plane row {i}")
    c = c if isinstance(c, torch.nn.Module) else c()
    attack, bn_attack, bn_data = _measure(cfg, data, device)
    lat = plane_lattice(c, cfg.plane_grid)
    bar = progress_mod.bar(total=cfg.plane_grid, desc=f"{desc} row {i}", unit="pt",
                           progress=progress)
    row = plane_row(c, lat, i, data.x_test[:PLANE_EXAMPLES], data.y_test[:PLANE_EXAMPLES],
                    attack, bn_data, bn_inputs=cfg.bn_inputs, bn_attack=bn_attack,
                    device=device, bar=bar)
    bar.close()
    save_npz(rpath, row, rspec)
    return row


def stage_from_rows(cfg, c, curve_key: str, rows: list[dict], run_dir: Path) -> dict:
    """The plane stage's arrays (:func:`stage`'s) from its rows (:func:`stage_row`),
    cached as ``ckpt/plane/<key>.npz``."""
    spec, path, cached = _cached(cfg, curve_key, run_dir)
    if cached is not None:
        return cached
    c = c if isinstance(c, torch.nn.Module) else c()
    res = _assemble(plane_lattice(c, cfg.plane_grid), rows)
    res["out_of_plane"] = out_of_plane(c, np.linspace(0, 1, 21))
    _save(path, res, spec)
    return res


# ---------------------------------------------------------------- its registration
def write_planes(run_dir: Path, cfg, entries: dict) -> None:
    """``plane.npz`` (the grids, so that report redraws plots/plane.* without ckpt/) and
    ``plane.json``; ``entries``: path id -> (alignment method, plane arrays)."""
    from robustpath.io.store import atomic_write_json

    planes = dict(entries.values())
    save_planes(run_dir / "plane.npz", planes)
    atomic_write_json(run_dir / "plane.json", {
        m: {"max_out_of_plane": float(p["out_of_plane"].max()),
            "clean_loss_min": float(p["clean_loss"].min()),
            "robust_loss_min": float(p["robust_loss"].min()),
            **({"robust_err_min": float(p["robust_err"].min())} if "robust_err" in p else {})}
        for m, p in planes.items()})


def _parts(info) -> list:
    """One node per lattice row (independent: they run in parallel), then the plane
    from its rows (keyed as the whole plane always was)."""
    from robustpath.engine.path_stages import Part

    spec = plane_spec(info.cfg, info.curve_key)
    rows = [Part(f"row{i}", {"plane": spec, "row": i}, params={"row": i})
            for i in range(info.cfg.plane_grid)]
    return [*rows, Part("main", {"plane": spec}, ("curve", *(r.name for r in rows)))]


def _run(inp) -> dict:
    if inp.part == "main":
        rows = [u["row"] for u in inp.inputs if "row" in u]
        return {"plane": stage_from_rows(inp.cfg, inp.curve, inp.curve_key, rows, inp.root)}
    return {"row": stage_row(inp.cfg, inp.curve, inp.curve_key, inp.params["row"], inp.root,
                             inp.data, inp.device, inp.progress, desc=inp.desc)}


def _register() -> None:
    from robustpath.engine.path_stages import PathStage, register

    register(PathStage(
        # a node of the default quick run's 13 x 13 planes (timings.json, 2 workers of one
        # thread): 259.4 s / 28 nodes (26 rows, 2 planes)
        name="plane", label="plane", seconds=9.3, work=lambda cfg: float(cfg.plane_grid),
        # the bezier curve of the cell's first pair, per alignment method
        applies=lambda info: bool(info.cfg.plane_grid) and info.kind == "bezier"
        and info.index == 0,
        parts=_parts, run=_run,
        collect=lambda ref, res: (ref.method, res["main"]["plane"]),
        write=write_planes))


_register()


if __name__ == "__main__":  # a library module: say so rather than exit 0 having done nothing
    import sys

    print("error: robustpath.paths.plane is a library module, not a command; loss planes come from "
          "python -m robustpath.bench --plane-grid N", file=sys.stderr)
    raise SystemExit(2)
