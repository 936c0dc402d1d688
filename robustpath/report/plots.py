"""Plots of clean / robust accuracy and loss against t, one line per alignment x path
family, with their uncertainty bands.

Bands: with one seed pair of a group, the pointwise 95% percentile bootstrap CI over
test examples (:func:`robustpath.stats.barrier.per_t_bands`); with several pairs, ± one
standard deviation over pairs. The figure's single legend says which.
Sizes, fonts and the colour-blind-safe palette come from :mod:`robustpath.report.style`.
Every figure is written as PNG and as vector PDF, without dates in the metadata, so
a rerun on the same data gives the same bytes.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from robustpath.align.methods import COLORS as ALIGN_COLORS
from robustpath.align.methods import LABEL
from robustpath.align.methods import MARKERS as ALIGN_MARKERS
from robustpath.io.records import PathRecord
from robustpath.io.store import atomic_write_bytes
from robustpath.report.style import CURVE_STYLES, DPI, OTHER_COLOR, TEXT, paper_style
from robustpath.stats.barrier import per_t_bands

PANELS = [("clean_acc", "clean accuracy (%)", 100.0), ("robust_acc", "robust accuracy (%)", 100.0),
          ("clean_loss", "clean loss (nats)", 1.0), ("robust_loss", "robust loss (nats)", 1.0)]
COLORS = ALIGN_COLORS  # kept for callers that import it from here
STYLES = CURVE_STYLES
CI_LABEL = "95% bootstrap CI"


def _matplotlib():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def band_label(pairs: set[int]) -> str:
    """What the shaded bands are, for groups with these numbers of seed pairs."""
    if pairs == {1}:
        return f"shaded: {CI_LABEL} (over test examples)"
    if 1 not in pairs:
        n = f"{min(pairs)}" if len(pairs) == 1 else f"{min(pairs)}-{max(pairs)}"
        return f"shaded: ± 1 std over seed pairs (n = {n})"
    return f"shaded: {CI_LABEL} (one seed pair) or ± 1 std (several)"


def plot_paths(paths: list[PathRecord], out_stem: str | Path | None = None, *, title: str = "",
               bootstrap: int = 1000):
    """Draw :func:`paths_figure`; writes ``<out_stem>.png`` and ``.pdf`` when given a
    stem. Returns the Figure."""
    with paper_style():
        fig = paths_figure(paths, title=title, bootstrap=bootstrap)
        if out_stem is not None:
            save_figure(fig, out_stem)
    return fig


#: the smallest y range of a panel, in its plotted unit: a constant series (0 % robust
#: accuracy along a whole path) got a -0.04..0.04 % axis from matplotlib's autoscale
MIN_SPAN = {"clean_acc": 2.0, "robust_acc": 2.0, "clean_loss": 0.02, "robust_loss": 0.02}


def _min_span(ax, key: str) -> None:
    """Widen ``ax``'s y range to :data:`MIN_SPAN` around its data; accuracies stay
    within 0..100 %."""
    lo, hi = ax.get_ylim()
    if key.endswith("_acc"):  # autoscale put a constant 100 % on a 94.5..105.5 axis
        lo, hi = max(lo, 0.0), min(hi, 100.0)
    need = MIN_SPAN[key]
    if hi - lo >= need:
        ax.set_ylim(lo, hi)
        return
    mid = 0.5 * (lo + hi)
    lo, hi = max(0.0, mid - need / 2), max(0.0, mid - need / 2) + need
    if key.endswith("_acc") and hi > 100.0:
        lo, hi = 100.0 - need, 100.0
    ax.set_ylim(lo, hi)


def paths_figure(paths: list[PathRecord], *, title: str = "", bootstrap: int = 1000):
    """The 2x2 panel figure (text width, one legend below the panels); returns it."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    groups: dict[tuple[str, str], list[PathRecord]] = defaultdict(list)
    for p in paths:
        groups[(p.align, p.curve)].append(p)
    order = {a: i for i, a in enumerate(LABEL)}
    keys = sorted(groups, key=lambda k: (order.get(k[0], 99), k[0], k[1]))
    with paper_style() as plt:
        fig, axes = plt.subplots(2, 2, figsize=(TEXT, 4.4), sharex=True, layout="constrained")
        handles = []
        for align, curve in keys:
            members = groups[(align, curve)]
            ts = members[0].result.grid().ts
            color, style = ALIGN_COLORS.get(align, OTHER_COLOR), CURVE_STYLES.get(curve, ":")
            marker = ALIGN_MARKERS.get(align, "x")
            curves = {k: np.stack([m.result.grid().per_t()[k] for m in members]) for k, _, _ in PANELS}
            bands = per_t_bands(members[0].result.grid(), bootstrap=bootstrap) if len(members) == 1 \
                else None
            every = max(1, len(ts) // 8)  # markers tell methods apart in greyscale
            for ax, (key, ylabel, scale) in zip(axes.flat, PANELS):
                mean = curves[key].mean(0)
                ax.plot(ts, mean * scale, style, color=color, marker=marker, markevery=every,
                        markersize=3.5)
                if bands is not None:
                    lo, hi = bands[key]
                else:
                    sd = curves[key].std(0, ddof=1)
                    lo, hi = mean - sd, mean + sd
                ax.fill_between(ts, lo * scale, hi * scale, color=color, alpha=0.15, linewidth=0)
                ax.set_ylabel(ylabel)
            handles.append(Line2D([], [], linestyle=style, color=color, marker=marker,
                                  markersize=3.5, label=f"{LABEL.get(align, align)}, {curve}"))
        handles.append(Patch(facecolor="#999999", alpha=0.35, linewidth=0,
                             label=band_label({len(m) for m in groups.values()})))
        for ax in axes[1]:
            ax.set_xlabel("t (position along the path)")
        for ax, (key, _, _) in zip(axes.flat, PANELS):
            ax.grid(True)
            ax.set_xlim(0, 1)
            _min_span(ax, key)
        # handlelength: a dashed line needs room for its dashes and the marker, or it
        # reads as "==="
        fig.legend(handles=handles, loc="outside lower center", ncol=min(3, len(handles)),
                   handlelength=3.2)
        if title:
            fig.suptitle(title)
        return fig


def save_figure(fig, out_stem: str | Path, dpi: int = DPI) -> list[Path]:
    """Write ``fig`` as ``<stem>.png`` and ``<stem>.pdf`` atomically, without
    timestamps in the metadata (reruns give identical files), and close it in pyplot
    (the Figure object stays usable: a notebook still shows it)."""
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
