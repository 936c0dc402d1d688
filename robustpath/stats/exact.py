"""Exact small-sample intervals for accuracies on n examples and paired differences.

A percentile bootstrap of 16 binary outcomes gives "[0, 0]" for an accuracy of 0 %;
an exact interval does not (Clopper-Pearson for 0 / 16: [0, 20.6 %]). Everything here
calls scipy's implementation (``scipy.stats.binomtest(...).proportion_ci(method=
"exact")``), nothing is hand-written:

* :func:`clopper_pearson` - the exact binomial interval of k successes in n;
* :func:`discordant` - McNemar's discordant counts ``(b, c)`` of two paired outcomes;
* :func:`paired_difference` - an exact (conservative) interval for ``mean(x) - mean(y)``
  of two paired bool outcomes on the same n examples: ``(b - c) / n`` with b = x only,
  c = y only; Clopper-Pearson intervals for b / n and c / n at level ``1 - alpha / 2``
  each, combined by Bonferroni: ``[b_lo - c_hi, b_hi - c_lo]`` covers with probability
  at least ``level``.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import binomtest


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The exact (Clopper-Pearson) interval of a proportion ``k / n``; NaNs for n = 0."""
    if n <= 0:
        return float("nan"), float("nan")
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="exact")
    return float(ci.low), float(ci.high)


def accuracy_interval(correct: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """:func:`clopper_pearson` of a bool (or 0/1) array of per-example outcomes."""
    c = np.asarray(correct, dtype=bool)
    return clopper_pearson(int(c.sum()), len(c), level)


def discordant(x: np.ndarray, y: np.ndarray) -> tuple[int, int]:
    """``(b, c)``: examples with ``x`` true and ``y`` false, and the reverse."""
    x, y = np.asarray(x, dtype=bool), np.asarray(y, dtype=bool)
    return int((x & ~y).sum()), int((~x & y).sum())


def paired_difference(x: np.ndarray, y: np.ndarray,
                      level: float = 0.95) -> tuple[float, float]:
    """Exact conservative interval of ``mean(x) - mean(y)`` on paired bool outcomes."""
    n = len(np.asarray(x))
    b, c = discordant(x, y)
    each = 1 - (1 - level) / 2
    b_lo, b_hi = clopper_pearson(b, n, each)
    c_lo, c_hi = clopper_pearson(c, n, each)
    return b_lo - c_hi, b_hi - c_lo
