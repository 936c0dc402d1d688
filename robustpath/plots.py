"""Plots of clean / robust accuracy and loss against t, aligned vs unaligned, with
95% bootstrap bands (one seed pair) or mean ± std bands (several pairs).
Written as PNG and PDF (PDF without a creation date, so reruns are identical)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from .barrier import per_t_bands
from .records import PathRecord
from .store import atomic_write_bytes

PANELS = [("clean_acc", "clean accuracy (%)", 100.0), ("robust_acc", "robust accuracy (%)", 100.0),
          ("clean_loss", "clean loss", 1.0), ("robust_loss", "robust loss", 1.0)]
COLORS = {"none": "tab:red", "activation": "tab:blue", "weight": "tab:green",
          "pam-none": "tab:orange", "pam-activation": "tab:purple"}
STYLES = {"line": "--", "bezier": "-", "polychain": "-."}
LABEL = {"none": "unaligned", "activation": "aligned (act.)", "weight": "aligned (weight)",
         "pam-none": "PAM from unaligned", "pam-activation": "PAM from aligned"}


def _matplotlib():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_paths(paths: list[PathRecord], out_stem: str | Path, *, title: str = "",
               bootstrap: int = 1000) -> list[Path]:
    """Draw the 2x2 panel figure; returns the written files (``.png``, ``.pdf``)."""
    plt = _matplotlib()
    groups: dict[tuple[str, str], list[PathRecord]] = defaultdict(list)
    for p in paths:
        groups[(p.align, p.curve)].append(p)
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharex=True)
    for (align, curve), members in sorted(groups.items()):
        ts = members[0].result.ts
        color, style = COLORS.get(align, "tab:gray"), STYLES.get(curve, ":")
        curves = {k: np.stack([m.result.per_t()[k] for m in members]) for k, _, _ in PANELS}
        bands = per_t_bands(members[0].result, bootstrap=bootstrap) if len(members) == 1 else None
        for ax, (key, ylabel, scale) in zip(axes.flat, PANELS):
            mean = curves[key].mean(0) * scale
            ax.plot(ts, mean, style, color=color, label=f"{LABEL.get(align, align)}, {curve}")
            if bands is not None:
                lo, hi = bands[key]
            else:
                sd = curves[key].std(0, ddof=1)
                lo, hi = curves[key].mean(0) - sd, curves[key].mean(0) + sd
            ax.fill_between(ts, lo * scale, hi * scale, color=color, alpha=0.12, linewidth=0)
            ax.set_ylabel(ylabel)
    for ax in axes[1]:
        ax.set_xlabel("t")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, out_stem, dpi=120)


def save_figure(fig, out_stem: str | Path, dpi: int = 120) -> list[Path]:
    """Write ``fig`` as ``<stem>.png`` and ``<stem>.pdf`` atomically, without
    timestamps in the metadata (reruns give identical PDFs), and close it."""
    import io

    import matplotlib.pyplot as plt

    out_stem = Path(out_stem)
    written = []
    for ext, kw in (("png", {"dpi": dpi, "metadata": {"Software": None}}),
                    ("pdf", {"metadata": {"CreationDate": None, "Producer": None, "Creator": None}})):
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, **kw)
        path = out_stem.with_suffix(f".{ext}")
        atomic_write_bytes(path, buf.getvalue())
        written.append(path)
    plt.close(fig)
    return written
