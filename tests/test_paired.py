"""Paired differences with the two-level bootstrap (robustpath.paired) on planted data."""

from __future__ import annotations

import numpy as np
import pytest

from robustpath.evaluate import PathResult
from robustpath.paired import comparisons, paired_differences, to_markdown, write_paired
from robustpath.records import PathRecord, write

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


def test_a_planted_difference_is_recovered_with_a_ci_that_excludes_zero():
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
    assert r.diff_std == pytest.approx(0.0, abs=1e-12)
    assert r.x_std == pytest.approx(np.std([0.6, 0.7, 0.55], ddof=1))
    # paired by example: the 40 extra examples are the only ones that differ, so the CI
    # is the binomial spread of 40/400 under resampling, far from 0
    assert 0.05 < r.ci_lo <= 0.10 <= r.ci_hi < 0.15
    assert "activation - none (bezier)" in to_markdown(f)


def test_outer_level_widens_the_ci_when_seed_pairs_disagree():
    # pair differences +0.1, -0.1, 0.0 on the same examples: no consistent effect
    mid = {}
    for p, d in enumerate((40, -40, 0)):
        mid["none", "bezier", p] = _first(200)
        mid["activation", "bezier", p] = _first(200 + d)
    f = paired_differences(_records(mid), bootstrap=1000)
    r = f[(f.comparison == "activation - none (bezier)") & (f.metric == "robust_acc_min")].iloc[0]
    assert r.diff_mean == pytest.approx(0.0, abs=1e-12)
    assert r.diff_std == pytest.approx(0.1)
    assert r.ci_lo < -0.04 and r.ci_hi > 0.04            # pair spread enters the CI
    one = paired_differences(_records({k: v for k, v in mid.items() if k[2] == 0}),
                             bootstrap=1000)
    r1 = one[(one.comparison == "activation - none (bezier)")
             & (one.metric == "robust_acc_min")].iloc[0]
    assert r1.pairs == 1 and np.isnan(r1.diff_std)
    assert r1.ci_lo > 0.05                               # one pair: examples only


def test_write_paired_reads_a_run_folder(tmp_path):
    mid = {(a, c, 0): _first(150 if a == "none" else 250) for a in ("none", "activation")
           for c in ("line", "bezier")}
    write(tmp_path, _records(mid))
    f = write_paired(tmp_path, bootstrap=50)
    assert (tmp_path / "tables" / "paired.md").is_file()
    assert (tmp_path / "tables" / "paired.csv").is_file()
    assert len(f) == 4 * 5
