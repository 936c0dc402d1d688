"""One figure style for every robustpath plot: sizes for a two-column paper, a
colour-blind-safe palette, and the way eps is written.

Sizes: ``COLUMN`` = 3.35 in (one column of a two-column paper such as NeurIPS /
ICML / IEEE), ``TEXT`` = 6.9 in (the full text width). Fonts 8 pt (ticks 7 pt), so a
figure placed at its natural width reads at the paper's footnote size. Fonts are
embedded as TrueType (``pdf.fonttype`` 42), as most venues require.

Palette: Okabe & Ito (2008), "Color Universal Design", distinguishable under the
common colour-vision deficiencies; the alignment methods also differ by marker,
the path families by line style, so a greyscale print still separates them.
"""

from __future__ import annotations

import contextlib
from fractions import Fraction

COLUMN = 3.35  # inches
TEXT = 6.9

OKABE_ITO = {"orange": "#E69F00", "sky": "#56B4E9", "green": "#009E73", "yellow": "#F0E442",
             "blue": "#0072B2", "vermillion": "#D55E00", "purple": "#CC79A7", "black": "#000000"}

# the alignment methods' colours, markers and labels: robustpath.align.methods.ALIGN
CURVE_STYLES = {"line": "--", "bezier": "-", "polychain": "-."}
OTHER_COLOR = "#666666"

# PNG resolution: 200 dpi is sharp in print at column width and keeps files small
DPI = 200

RC = {
    "font.family": "DejaVu Sans",
    "font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "legend.fontsize": 7,
    "xtick.labelsize": 7, "ytick.labelsize": 7, "figure.titlesize": 9,
    "axes.linewidth": 0.6, "lines.linewidth": 1.3, "lines.markersize": 4,
    "xtick.major.width": 0.6, "ytick.major.width": 0.6,
    "grid.linewidth": 0.4, "grid.alpha": 0.35, "legend.frameon": False,
    "axes.spines.top": False, "axes.spines.right": False,
    "pdf.fonttype": 42, "ps.fonttype": 42,
    "svg.hashsalt": "robustpath",  # deterministic ids, should SVG ever be written
    "image.cmap": "viridis",
}


@contextlib.contextmanager
def paper_style():
    """``with paper_style(): ...`` draws with :data:`RC` (restored afterwards)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with plt.rc_context(RC):
        yield plt


def format_eps(eps: float | str | None) -> str:
    """``8/255`` for a radius that is a whole number of 8-bit grey levels and has no
    short decimal form; the decimal otherwise.

    >>> format_eps(8 / 255), format_eps(0.1), format_eps(2 / 255), format_eps(0.2)
    ('8/255', '0.1', '2/255', '0.2')
    """
    if eps is None or eps == "":
        return "?"
    try:
        value = float(Fraction(str(eps))) if isinstance(eps, str) else float(eps)
    except (ValueError, ZeroDivisionError):
        return str(eps)
    short = f"{value:.3g}"
    if abs(float(short) - value) <= 1e-12 * max(1.0, abs(value)):
        return short  # 0.1, 0.5, 1: exact in at most three significant digits
    levels = value * 255
    if abs(levels - round(levels)) < 1e-6 and round(levels) > 0:
        return f"{round(levels)}/255"
    return f"{value:.4g}"


def attack_label(attack: str | None, norm: str | None, eps, steps: int | None = None) -> str:
    """``"PGD-10, L∞ eps = 8/255"``: the attack as a paper writes it."""
    name = (attack or "?").upper() + (f"-{steps}" if steps else "")
    n = {"linf": "L∞", "l2": "L2"}.get(str(norm or "").lower(), norm or "")
    return f"{name}, {n} ε = {format_eps(eps)}".replace(" ,", ",")
