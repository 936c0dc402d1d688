"""The pairwise barrier matrix of a comparison (CSV and heat maps)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd

from robustpath.align.methods import LABEL
from robustpath.config import MATCH_METHODS as ALIGN_METHODS  # zoo runs one-shot matchers, not PAM
from robustpath.io.records import PathRecord
from robustpath.io.store import atomic_write_bytes

MATRIX_METRICS = ("robust_loss_barrier", "robust_acc_min", "robust_acc_ends", "clean_acc_min",
                  "clean_loss_barrier")


def barrier_matrix(records: list[PathRecord], models: list[str],
                   bootstrap: int = 1000) -> pd.DataFrame:
    """One row per evaluated path (model pair x alignment x path family) with the
    barrier metrics and their 95% bootstrap CIs (``_lo``, ``_hi``); ``models``: the
    comparison's models in order (the records name their endpoints by model name)."""
    from robustpath.stats.barrier import path_metrics

    rows = []
    for r in records:
        m = path_metrics(r.result, bootstrap=bootstrap)
        unknown = {str(e) for e in r.endpoints} - set(models)
        if unknown:
            raise ValueError(f"path {r.path_id}: endpoints {sorted(unknown)} not among the models")
        row = {"model_a": r.endpoint_a, "model_b": r.endpoint_b, "align": r.align,
               "curve": r.curve}
        for k in MATRIX_METRICS:
            row[k], row[f"{k}_lo"], row[f"{k}_hi"] = m[k]["value"], m[k]["lo"], m[k]["hi"]
        rows.append(row)
    return pd.DataFrame(rows)


def plot_barrier_matrix(frame: pd.DataFrame, models: list[str], out_dir: str | Path,
                        title: str = "") -> list[Path]:
    """Heat maps (one PNG per path family): rows robust loss barrier / robust accuracy
    minimum (one colour scale per row), one column per alignment method; the matrix is
    symmetric; grey cells: pairs not compared (diagonal, different architectures)."""
    from matplotlib.colors import Normalize

    from robustpath.report.plots import _matplotlib

    plt = _matplotlib()
    n, written = len(models), []
    pos = {m: i for i, m in enumerate(models)}  # the cells' order: the models' order
    from robustpath.report.metric_registry import get

    # labels and units: robustpath.report.metric_registry
    panels = (("robust_loss_barrier", get("robust_loss_barrier").header, 1.0, "magma_r", "{:.2f}"),
              ("robust_acc_min", get("robust_acc_min").header, 100.0, "viridis", "{:.1f}"))
    for curve, part in frame.groupby("curve", sort=True):
        aligns = [a for a in ALIGN_METHODS if a in set(part["align"])]
        size = 1.5 + 0.45 * n
        fig, axes = plt.subplots(2, len(aligns), figsize=(size * len(aligns) + 2.5, 2 * size + 2.5),
                                 squeeze=False, constrained_layout=True)
        for row, (metric, label, scale, cmap, fmt) in enumerate(panels):
            lo, hi = part[metric].min() * scale, part[metric].max() * scale
            tied = not hi > lo  # one value: a small symmetric range around it, one tick
            pad = 0.05 * max(abs(lo), 0.01 * scale) if tied else 0.0
            norm = Normalize(lo - pad, hi + pad)
            cm = plt.get_cmap(cmap).with_extremes(bad="#dddddd")
            for col, align in enumerate(aligns):
                mat = np.full((n, n), np.nan)
                for _, r in part[part["align"] == align].iterrows():
                    i, j = pos[r["model_a"]], pos[r["model_b"]]
                    mat[i, j] = mat[j, i] = r[metric] * scale
                ax = axes[row, col]
                im = ax.imshow(np.ma.masked_invalid(mat), cmap=cm, norm=norm)
                for i, j in zip(*np.nonzero(np.isfinite(mat))):
                    if n <= 12:
                        r_, g_, b_, _ = cm(norm(mat[i, j]))
                        dark = 0.299 * r_ + 0.587 * g_ + 0.114 * b_ < 0.5
                        ax.text(j, i, fmt.format(mat[i, j]), ha="center", va="center",
                                fontsize=7, color="w" if dark else "k")
                ax.set_xticks(range(n), models if row == 1 else [""] * n, rotation=60,
                              ha="right", fontsize=7)
                ax.set_yticks(range(n), models if col == 0 else [""] * n, fontsize=7)
                ax.set_title(f"{LABEL.get(align, align)}", fontsize=9)
            cb = fig.colorbar(im, ax=list(axes[row]), shrink=0.8, label=label)
            if tied:
                cb.set_ticks([lo], labels=[fmt.format(lo)])
        fig.suptitle(f"{title} ({curve} paths)" if title else f"{curve} paths", fontsize=10)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=120, metadata={"Software": None})
        plt.close(fig)
        path = Path(out_dir) / f"barrier_matrix_{curve}.png"
        atomic_write_bytes(path, buf.getvalue())
        written.append(path)
    return written


