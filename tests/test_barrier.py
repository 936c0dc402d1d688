"""Barrier metrics (robustpath.stats.barrier): refined metrics over every evaluated point, the
same tie-break for a value and its bootstrap, no interval from too few examples or
resamples (issue 25 D5, issue 27)."""

from __future__ import annotations

import numpy as np
import pytest

from robustpath.io.records import PathRecord
from robustpath.paths.evaluate import PathResult
from robustpath.report.tables import per_path_frame, summary_frame, to_markdown
from robustpath.stats.barrier import REFINED, ci_note, path_metrics


def _path(acc: list[float], n: int = 100, refined: list[bool] | None = None,
          loss: list[float] | None = None) -> PathResult:
    """Robust (= clean) correctness: the first ``acc[i] * n`` examples right at point i."""
    ts = np.linspace(0, 1, len(acc))
    c = np.stack([np.arange(n) < round(a * n) for a in acc])
    lo = np.where(c, 0.1, 2.0).astype(np.float32)
    if loss is not None:
        lo = lo + np.asarray(loss, dtype=np.float32)[:, None]
    return PathResult(ts=ts, speed=np.ones(len(ts)), clean_correct=c.copy(),
                      robust_correct=c.copy(), clean_loss=lo.copy(), robust_loss=lo.copy(),
                      refined=None if refined is None else np.asarray(refined))


def test_refined_min_and_its_interval_break_ties_alike():
    # D5: every point equally accurate; the highest loss is at t = 1, so the refined
    # minimum is there, and every bootstrap replicate must pick it too
    res = _path([0.5, 0.5, 0.5, 0.5, 0.5], loss=[0.0, 0.0, 0.0, 0.0, 0.3])
    m = path_metrics(res, bootstrap=200)
    t = m["robust_t_min_refined"]
    assert t["value"] == 1.0 and t["lo"] == 1.0 and t["hi"] == 1.0


def test_refined_barriers_use_refinement_points_and_grid_ones_do_not():
    # a dip only a refinement point (t = 0.375) sees
    acc = [0.8, 0.7, 0.2, 0.7, 0.8]
    res = _path(acc, n=200, refined=[False, False, True, False, False])
    res.ts = np.array([0.0, 0.25, 0.375, 0.5, 1.0])
    m = path_metrics(res, bootstrap=100)
    assert m["robust_acc_min"]["value"] == pytest.approx(0.7)
    assert m["robust_acc_min_refined"]["value"] == pytest.approx(0.2)
    assert m["robust_acc_barrier"]["value"] == pytest.approx(0.1)
    assert m["robust_acc_barrier_refined"]["value"] == pytest.approx(0.6)
    assert m["robust_loss_barrier_refined"]["value"] > m["robust_loss_barrier"]["value"] + 0.5
    for name in REFINED:
        assert m[name]["lo"] <= m[name]["value"] <= m[name]["hi"]


@pytest.mark.parametrize("n,boot", [(16, 1000), (100, 1), (1, 1000)])
def test_too_few_examples_or_resamples_give_no_interval(n, boot):
    res = _path([0.9, 0.5, 0.9], n=n)
    m = path_metrics(res, bootstrap=boot)
    assert all(np.isnan(v["lo"]) and np.isnan(v["hi"]) for v in m.values())
    assert ci_note(n, boot) is not None
    rec = PathRecord("none", "line", 0, 1, res)
    md = to_markdown(summary_frame(per_path_frame([rec], bootstrap=boot)))
    assert "[no CI]" in md and "fewer than 30" in md and "nan" not in md


def test_enough_examples_give_an_interval_around_the_value():
    m = path_metrics(_path([0.9, 0.5, 0.9], n=100), bootstrap=100)
    assert ci_note(100, 100) is None
    v = m["robust_acc_min"]
    assert v["lo"] < v["value"] < v["hi"]


def test_exact_intervals_are_scipys_and_never_zero_width():
    from scipy.stats import binomtest

    from robustpath.stats.exact import (
        accuracy_interval,
        clopper_pearson,
        discordant,
        paired_difference,
    )

    lo, hi = clopper_pearson(0, 16)
    assert lo == 0.0 and hi == pytest.approx(0.2059, abs=1e-4)        # the issue's [0, 20.6 %]
    ci = binomtest(5, 16).proportion_ci(method="exact")
    assert clopper_pearson(5, 16) == pytest.approx((ci.low, ci.high))
    assert accuracy_interval(np.ones(16, bool))[0] < 1.0
    x = np.array([1, 1, 0, 0, 1, 0, 0, 0] * 2, bool)
    y = np.array([1, 0, 0, 1, 0, 0, 0, 0] * 2, bool)
    assert discordant(x, y) == (4, 2)
    lo, hi = paired_difference(x, y)
    assert lo < (4 - 2) / 16 < hi and lo > -1 and hi < 1
    lo, hi = paired_difference(np.zeros(16, bool), np.zeros(16, bool))  # no discordance
    assert lo < 0 < hi                                                   # not [0, 0]
