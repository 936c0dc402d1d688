"""Paired differences (robustpath.stats.paired) on planted data: per-pair values, t-interval over
seed pairs, exact sign-flip p, within-pair bootstrap over examples."""

from __future__ import annotations

import numpy as np
import pytest

from robustpath.io.records import PathRecord, write
from robustpath.paths.evaluate import PathResult
from robustpath.stats.paired import (
    _replicates,
    comparisons,
    paired_differences,
    signflip_p,
    t_interval,
    to_markdown,
    write_paired,
)

T, N = 5, 400


def _result(correct_mid: np.ndarray) -> PathResult:
    """All examples right at the ends; ``correct_mid`` [N] bool in the middle of the path."""
    c = np.ones((T, N), dtype=bool)
    c[T // 2] = correct_mid
    loss = np.where(c, 0.1, 2.0).astype(np.float32)
    return PathResult(ts=np.linspace(0, 1, T), speed=np.ones(T), clean_correct=c.copy(),
                      robust_correct=c.copy(), clean_loss=loss.copy(), robust_loss=loss.copy())


def _records(mid: dict[tuple[str, str, int], np.ndarray]) -> list[PathRecord]:
    return [PathRecord(a, c, 2 * p, 2 * p + 1, _result(m)) for (a, c, p), m in mid.items()]


def _first(k: int) -> np.ndarray:
    """The first ``k`` test examples right, the rest wrong."""
    return np.arange(N) < k


def test_comparisons_cover_alignment_and_curve_rows():
    recs = _records({(a, c, 0): _first(200) for a in ("none", "activation")
                     for c in ("line", "bezier")})
    labels = [lab for lab, _, _ in comparisons(recs)]
    assert labels == ["activation - none (line)", "activation - none (bezier)",
                      "bezier - line (none)", "bezier - line (activation)"]


def test_a_planted_difference_is_recovered_with_its_intervals():
    # every pair: aligned bezier gets 40 more of the same examples right (+0.10)
    base = {0: 200, 1: 240, 2: 180}
    mid = {}
    for p, k in base.items():
        mid["none", "bezier", p] = _first(k)
        mid["activation", "bezier", p] = _first(k + 40)
    f = paired_differences(_records(mid), bootstrap=500)
    r = f[(f.comparison == "activation - none (bezier)") & (f.metric == "robust_acc_min")].iloc[0]
    assert r.pairs == 3
    assert r.diff_mean == pytest.approx(0.10)
    assert [float(v) for v in r.diffs.split(";")] == pytest.approx([0.1, 0.1, 0.1])
    assert r.diff_std == pytest.approx(0.0, abs=1e-12)
    assert r.x_std == pytest.approx(np.std([0.6, 0.7, 0.55], ddof=1))
    # no spread across pairs: the t-interval is the point; three pairs, all positive:
    # the sign-flip test cannot go below 2 / 2^3
    assert r.ci_lo == pytest.approx(0.10) and r.ci_hi == pytest.approx(0.10)
    assert r.p_signflip == pytest.approx(0.25)
    # within pairs, by example: the 40 extra examples are the only ones that differ
    assert 0.05 < r.ex_lo <= 0.10 <= r.ex_hi < 0.15
    md = to_markdown(f)
    assert "activation - none (bezier)" in md and "10.0, 10.0, 10.0" in md


def _old_two_level(records, x, y, metric, bootstrap=2000, seed=0):
    """The former method (for the test only): seed pairs resampled with replacement,
    then examples; percentile interval of the mean difference."""
    by = {(r.align, r.curve, r.endpoints): r for r in records}
    pairs = sorted({r.endpoints for r in records})
    n = records[0].result.clean_correct.shape[1]
    rng = np.random.default_rng(seed)
    w = rng.multinomial(n, np.full(n, 1.0 / n), size=bootstrap) / n
    d = np.stack([_replicates(by[(*x, p)], w, [metric])[metric]
                  - _replicates(by[(*y, p)], w, [metric])[metric] for p in pairs], 1)
    draw = rng.integers(0, len(pairs), size=(bootstrap, len(pairs)))
    return np.quantile(np.take_along_axis(d, draw, 1).mean(1), [0.025, 0.975])


def test_three_pairs_the_old_interval_excludes_zero_the_t_interval_does_not():
    # the README's case: aligned bezier minus aligned line = +8.0, +5.25, +1.5 points
    mid = {}
    for p, k in enumerate((32, 21, 6)):
        mid["activation", "line", p] = _first(200)
        mid["activation", "bezier", p] = _first(200 + k)
    recs = _records(mid)
    old = _old_two_level(recs, ("activation", "bezier"), ("activation", "line"),
                         "robust_acc_min")
    assert old[0] > 0                                     # the old method: "significant"
    f = paired_differences(recs, bootstrap=500)
    r = f[(f.comparison == "bezier - line (activation)") & (f.metric == "robust_acc_min")].iloc[0]
    d = np.array([0.08, 0.0525, 0.015])
    assert [float(v) for v in r.diffs.split(";")] == pytest.approx(d)
    assert r.ci_lo < 0 < r.ci_hi                          # t with 2 df: not significant
    sem = d.std(ddof=1) / np.sqrt(3)
    assert r.ci_hi - r.diff_mean == pytest.approx(4.302653 * sem, rel=1e-5)
    assert r.p_signflip == pytest.approx(0.25)
    assert r.ex_lo > 0                                    # the examples-only interval


def test_t_interval_and_signflip_p():
    assert np.isnan(t_interval(np.array([0.3]))).all()
    lo, hi = t_interval(np.array([1.0, 2.0, 3.0]))
    assert (lo, hi) == pytest.approx((2 - 4.302653 / np.sqrt(3), 2 + 4.302653 / np.sqrt(3)),
                                     rel=1e-6)
    # 5 positive pairs: 2 of 32 sign vectors are as extreme
    assert signflip_p(np.array([1.0, 2, 3, 4, 5])) == pytest.approx(2 / 32)
    assert signflip_p(np.array([1.0, -1.0])) == pytest.approx(1.0)
    assert signflip_p(np.zeros(3)) == 1.0


def test_one_pair_has_no_seed_interval():
    mid = {("none", "bezier", 0): _first(200), ("activation", "bezier", 0): _first(240)}
    f = paired_differences(_records(mid), bootstrap=1000)
    r = f[f.metric == "robust_acc_min"].iloc[0]
    assert r.pairs == 1 and np.isnan(r.diff_std) and np.isnan(r.ci_lo) and np.isnan(r.ci_hi)
    assert r.ex_lo > 0.05                               # one pair: examples only
    md = to_markdown(f)
    assert "t-interval" not in md and "One seed pair: no interval over seeds" in md


def test_write_paired_reads_a_run_folder(tmp_path):
    mid = {(a, c, 0): _first(150 if a == "none" else 250) for a in ("none", "activation")
           for c in ("line", "bezier")}
    write(tmp_path, _records(mid))
    f = write_paired(tmp_path, bootstrap=50)
    assert (tmp_path / "tables" / "paired.md").is_file()
    assert (tmp_path / "tables" / "paired.csv").is_file()
    assert len(f) == 4 * 5
