"""Ternary heat maps of the triangle of three models, and the pairwise barrier matrix.

Barycentric coordinates ``(λ0, λ1, λ2)`` map to the plane as vertex 0 at (0, 0),
vertex 1 at (1, 0), vertex 2 at (1/2, √3/2): ``x = λ1 + λ2 / 2``, ``y = √3/2 λ2``.
Each grid point of :func:`robustpath.soup.triangle.barycentric_grid` is drawn as the hexagon
of its cell of the triangular lattice (clipped to the triangle), so what is shown is
what was measured, without interpolation. Sizes and palette: :mod:`robustpath.report.style`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from robustpath.report.plots import save_figure
from robustpath.report.style import COLUMN, OKABE_ITO, TEXT, paper_style

SQRT3 = 3 ** 0.5


def to_xy(bary: np.ndarray) -> np.ndarray:
    """``[P, 3]`` barycentric coordinates -> ``[P, 2]`` points of the equilateral triangle."""
    bary = np.asarray(bary, dtype=np.float64)
    return np.stack([bary[:, 1] + 0.5 * bary[:, 2], SQRT3 / 2 * bary[:, 2]], axis=1)


def _panel(ax, bary, values, k, norm, cmap, labels, title, soup_value=None):
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Polygon, RegularPolygon

    xy = to_xy(bary)
    corners = np.array([[0, 0], [1, 0], [0.5, SQRT3 / 2]])
    outline = Polygon(corners, closed=True, fill=False, lw=0.6, color="k")
    ax.add_patch(outline)
    # the Voronoi cell of a triangular lattice of spacing 1/k: a pointy-top hexagon
    hexes = [RegularPolygon((x, y), 6, radius=1 / (k * SQRT3)) for x, y in xy]
    coll = PatchCollection(hexes, cmap=cmap, norm=norm, edgecolor="face", lw=0.2)
    coll.set_array(np.asarray(values) * 100)
    coll.set_clip_path(outline)
    ax.add_collection(coll)
    for (x, y), name, (dx, dy), ha in zip(corners, labels, [(-0.02, -0.05), (0.02, -0.05),
                                                            (0, 0.04)], ["right", "left", "center"]):
        ax.text(x + dx, y + dy, name, ha=ha, va="center", fontsize=7)
    ax.plot([0.5], [SQRT3 / 6], marker="*", ms=7, mfc="none", mec=OKABE_ITO["black"], mew=0.8)
    if soup_value is not None:
        ax.text(0.5, SQRT3 / 6 - 0.08, f"soup {100 * soup_value:.1f}", ha="center", fontsize=6,
                bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8})
    ax.set_xlim(-0.12, 1.12)
    ax.set_ylim(-0.1, SQRT3 / 2 + 0.08)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(title)
    return coll


def plot_triangles(panels: dict[str, dict], labels: Sequence[str], k: int,
                   out_stem: str | Path, shared: bool = True) -> list[Path]:
    """One row per alignment method (``panels[method]`` holds ``weights`` ``[P, 3]``,
    per-point ``clean_acc`` / ``robust_acc`` ``[P]`` and optionally the soup's
    ``soup_clean_acc`` / ``soup_robust_acc``), columns clean and robust accuracy, one
    colour scale per column (comparable across rows). The star marks the centroid,
    the 3-model soup when only three models are merged. Writes ``.png`` and ``.pdf``;
    ``shared=False``: one figure per method, ``<out_stem>_<method>``, each with its own
    scale (shows the structure inside a high-accuracy triangle)."""
    from matplotlib.colors import Normalize

    if not shared:
        return [f for m, p in panels.items()
                for f in plot_triangles({m: p}, labels, k, f"{out_stem}_{m}")]
    with paper_style() as plt:
        rows = len(panels)
        fig, axes = plt.subplots(rows, 2, figsize=(TEXT * 0.7, 0.3 + 1.9 * rows), squeeze=False,
                                 constrained_layout=True)
        for col, kind in enumerate(("clean", "robust")):
            vals = np.concatenate([p[f"{kind}_acc"] for p in panels.values()]) * 100
            norm = Normalize(float(vals.min()), float(max(vals.max(), vals.min() + 1e-6)))
            coll = None
            for row, (method, p) in enumerate(panels.items()):
                coll = _panel(axes[row, col], p["weights"], p[f"{kind}_acc"], k, norm, "viridis",
                              labels, f"{method}: {kind} acc. (%)",
                              p.get(f"soup_{kind}_acc"))
            fig.colorbar(coll, ax=list(axes[:, col]), shrink=0.85, label=f"{kind} accuracy (%)")
        return save_figure(fig, out_stem)


def plot_barrier_matrix(frame, labels: Sequence[str], out_stem: str | Path,
                        metric: str = "robust_acc_barrier", label: str = "robust acc. barrier (pp)",
                        scale: float = 100.0) -> list[Path]:
    """Heat map per alignment method (columns of one figure, one shared colour scale) of
    ``metric`` for every pair (symmetric; diagonal grey), values printed in the cells.
    ``frame``: :func:`robustpath.soup.triangle.barrier_table`. Writes ``.png`` and ``.pdf``."""
    from matplotlib.colors import Normalize

    n = len(labels)
    methods = list(dict.fromkeys(frame["align"]))
    with paper_style() as plt:
        size = 0.9 + 0.35 * n
        fig, axes = plt.subplots(1, len(methods), figsize=(min(TEXT, max(COLUMN, size * len(methods) + 1.2)),
                                                            size + 0.6),
                                 squeeze=False, constrained_layout=True)
        vals = frame[metric].to_numpy() * scale
        norm = Normalize(float(min(vals.min(), 0.0)), float(max(vals.max(), 1e-6)))
        cmap = plt.get_cmap("magma_r").with_extremes(bad="#dddddd")
        im = None
        for col, method in enumerate(methods):
            mat = np.full((n, n), np.nan)
            for _, r in frame[frame["align"] == method].iterrows():
                i, j = int(r["index_a"]), int(r["index_b"])
                mat[i, j] = mat[j, i] = r[metric] * scale
            ax = axes[0, col]
            im = ax.imshow(np.ma.masked_invalid(mat), cmap=cmap, norm=norm)
            for i, j in zip(*np.nonzero(np.isfinite(mat))):
                r_, g_, b_, _ = cmap(norm(mat[i, j]))
                dark = 0.299 * r_ + 0.587 * g_ + 0.114 * b_ < 0.5
                ax.text(j, i, f"{mat[i, j]:.1f}", ha="center", va="center", fontsize=6,
                        color="w" if dark else "k")
            ax.set_xticks(range(n), labels, fontsize=6)
            ax.set_yticks(range(n), labels if col == 0 else [""] * n, fontsize=6)
            ax.set_title(f"align: {method}")
        fig.colorbar(im, ax=list(axes[0]), shrink=0.8, label=label)
        return save_figure(fig, out_stem)
