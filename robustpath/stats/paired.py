"""Paired differences between rows of a run: per seed pair, with inference over pairs.

A reader compares rows: aligned vs unaligned (same curve family), curve vs line (same
alignment). Every seed pair is evaluated on the *same* test examples, so both
comparisons are paired twice over: by seed pair and by example. For a metric m (e.g.
the minimum robust accuracy along the path) and rows X, Y, per seed pair p:
``d_p = m(X_p) - m(Y_p)``. Reported:

* ``diffs``: every ``d_p`` (the pairs in seed order), the mean over pairs and its
  standard deviation across pairs (``ddof=1``), and each row's mean +- std;
* ``ci_lo`` / ``ci_hi``: the 95 % **t-interval over seed pairs**,
  ``mean +- t_{n-1} * sd / sqrt(n)`` (``scipy.stats.t``; n - 1 degrees of freedom, so
  t = 4.30 with three pairs, not 1.96). It is the interval for a claim about new seed
  pairs. With one pair there is none (NaN; the table says so);
* ``p_signflip``: the two-sided exact sign-flip permutation test of mean d = 0
  (``scipy.stats.permutation_test``, ``permutation_type="samples"``, every one of the
  2^n sign vectors; with n pairs it cannot go below 2 / 2^n, 0.25 with three);
* ``ex_lo`` / ``ex_hi``: a **within-pair bootstrap over test examples** (the seed
  pairs held fixed; one multinomial reweighting of the test examples per replicate,
  the same for every row and pair since they share the examples): the uncertainty of
  the mean difference *of these networks* from the finite test set only. It says
  nothing about other seeds. NaN with fewer than 30 test examples or resamples
  (:func:`robustpath.stats.barrier.ci_note`).

The former two-level bootstrap (seed pairs resampled with replacement, then examples)
is gone: with three pairs its outer level has ten distinct resamples, never leaves the
range of the per-pair values and has no small-sample inflation.

Metrics are those of :func:`robustpath.stats.barrier.metrics_from_curves` on the grid points.
``python -m robustpath.stats.paired RUN`` prints the table; :func:`write_paired` writes
``tables/paired.md`` and ``tables/paired.csv``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from robustpath.errors import UserError, cli_main
from robustpath.io.records import PathRecord
from robustpath.io.records import read as read_records
from robustpath.io.store import atomic_write_text
from robustpath.stats.barrier import KINDS, ci_note, metrics_from_curves

METRICS = ("robust_acc_min", "robust_acc_avg", "robust_loss_barrier", "clean_acc_min",
           "clean_acc_avg")
#: accuracy-like metrics shown in percentage points in the Markdown table
_PERCENT = ("acc_min", "acc_avg", "acc_barrier", "acc_ends")
COLUMNS = ["comparison", "metric", "pairs", "x_mean", "x_std", "y_mean", "y_std", "diffs",
           "diff_mean", "diff_std", "ci_lo", "ci_hi", "p_signflip", "ex_lo", "ex_hi", "level"]


def comparisons(records: Sequence[PathRecord]) -> list[tuple[str, tuple[str, str], tuple[str, str]]]:
    """``[(label, X, Y)]`` with rows ``(align, curve)`` present in ``records``:
    every alignment other than ``none`` vs ``none`` on each curve family, and every
    fitted curve family vs ``line`` for each alignment."""
    rows = {(r.align, r.curve) for r in records}
    aligns = list(dict.fromkeys(r.align for r in records))
    curves = list(dict.fromkeys(r.curve for r in records))
    out = []
    for c in curves:
        for a in aligns:
            if a != "none" and (a, c) in rows and ("none", c) in rows:
                out.append((f"{a} - none ({c})", (a, c), ("none", c)))
    for a in aligns:
        for c in curves:
            if c != "line" and (a, c) in rows and (a, "line") in rows:
                out.append((f"{c} - line ({a})", (a, c), (a, "line")))
    return out


def _replicates(rec: PathRecord, weights: np.ndarray | None,
                metrics: Sequence[str]) -> dict[str, np.ndarray]:
    """Metric values of one path: ``[B]`` per metric under example ``weights`` [B, N]
    (``None``: the point estimate, shape [])."""
    res = rec.result.grid() if hasattr(rec.result, "grid") else rec.result  # grid points only
    acc, loss = {}, {}
    for k in KINDS:
        c = getattr(res, f"{k}_correct").astype(np.float64)    # [T, N]
        lo = getattr(res, f"{k}_loss").astype(np.float64)
        acc[k] = c.mean(1) if weights is None else weights @ c.T
        loss[k] = lo.mean(1) if weights is None else weights @ lo.T
    m = metrics_from_curves(res.ts, res.speed, acc, loss)
    return {name: np.asarray(m[name], dtype=np.float64) for name in metrics}


def t_interval(d: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The t-interval of the mean of ``d`` (n - 1 degrees of freedom); NaNs for n < 2."""
    d = np.asarray(d, dtype=np.float64)
    if len(d) < 2:
        return float("nan"), float("nan")
    sem = float(d.std(ddof=1)) / np.sqrt(len(d))
    if sem == 0.0:   # every pair the same: scipy returns NaN, the interval is the point
        return float(d.mean()), float(d.mean())
    lo, hi = stats.t.interval(level, len(d) - 1, loc=float(d.mean()), scale=sem)
    return float(lo), float(hi)


def signflip_p(d: np.ndarray) -> float:
    """Two-sided exact sign-flip permutation p of mean(d) = 0 (every sign vector)."""
    d = np.asarray(d, dtype=np.float64)
    if len(d) == 0:
        return float("nan")
    if len(d) < 2 or not np.any(d):   # one pair: both signs are as extreme
        return 1.0
    res = stats.permutation_test((d, np.zeros_like(d)), lambda x, y, axis: np.mean(x - y, axis=axis),
                                 permutation_type="samples", alternative="two-sided",
                                 n_resamples=np.inf if len(d) <= 20 else 100000,
                                 vectorized=True, random_state=0)
    return float(res.pvalue)


def paired_differences(records: Sequence[PathRecord], metrics: Sequence[str] = METRICS, *,
                       bootstrap: int = 1000, seed: int = 0, level: float = 0.95) -> pd.DataFrame:
    """One row per (comparison, metric) with :data:`COLUMNS`: ``pairs``, each row's
    mean and std across pairs, ``diffs`` (the per-pair differences, ``;``-separated),
    ``diff_mean``, ``diff_std`` (NaN with one pair), ``ci_lo`` / ``ci_hi`` (t-interval
    over seed pairs; NaN with one pair), ``p_signflip`` (exact sign-flip test),
    ``ex_lo`` / ``ex_hi`` (bootstrap over test examples, pairs fixed), ``level``."""
    comps = comparisons(records)
    if not comps:
        return pd.DataFrame(columns=COLUMNS)
    by_row: dict[tuple[str, str], dict[tuple, PathRecord]] = {}
    for r in records:
        by_row.setdefault((r.align, r.curve), {})[r.endpoints] = r
    n = {r.result.clean_correct.shape[1] for r in records}
    if len(n) != 1:
        raise ValueError(f"records differ in their number of test examples: {sorted(n)}")
    n_ex = n.pop()
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(n_ex, np.full(n_ex, 1.0 / n_ex), size=bootstrap) / n_ex
    point, boot = {}, {}   # (row, pair) -> metric -> value / [B]
    for row, pairs in by_row.items():
        for pair, rec in pairs.items():
            point[row, pair] = _replicates(rec, None, metrics)
            boot[row, pair] = _replicates(rec, weights, metrics)
    alpha = (1 - level) / 2
    no_ex = ci_note(n_ex, bootstrap) is not None   # too few examples / resamples
    out = []
    for label, x, y in comps:
        pairs = sorted(set(by_row[x]) & set(by_row[y]))
        if not pairs:
            continue
        for m in metrics:
            xv = np.array([point[x, p][m] for p in pairs])
            yv = np.array([point[y, p][m] for p in pairs])
            d = xv - yv
            # within-pair: the examples resampled, the pairs held fixed
            d_boot = np.stack([boot[x, p][m] - boot[y, p][m] for p in pairs], 1).mean(1)
            sd = (lambda v: float(v.std(ddof=1)) if len(v) > 1 else float("nan"))
            lo, hi = t_interval(d, level)
            out.append({"comparison": label, "metric": m, "pairs": len(pairs),
                        "x_mean": float(xv.mean()), "x_std": sd(xv),
                        "y_mean": float(yv.mean()), "y_std": sd(yv),
                        "diffs": ";".join(f"{v:.6f}" for v in d),
                        "diff_mean": float(d.mean()), "diff_std": sd(d),
                        "ci_lo": lo, "ci_hi": hi, "p_signflip": signflip_p(d),
                        "ex_lo": np.nan if no_ex else float(np.quantile(d_boot, alpha)),
                        "ex_hi": np.nan if no_ex else float(np.quantile(d_boot, 1 - alpha)),
                        "level": level})
    return pd.DataFrame(out, columns=COLUMNS)


def to_markdown(frame: pd.DataFrame) -> str:
    """Accuracies in percentage points, losses as they are; ``mean ± std`` over pairs,
    the per-pair differences, the t-interval over pairs and the sign-flip p, then the
    within-pair interval over examples."""
    def fmt(v: float, pct: bool) -> str:
        return "n/a" if not np.isfinite(v) else (f"{100 * v:.1f}" if pct else f"{v:.3f}")

    from robustpath.report.metric_registry import label

    lev = f"{100 * float(frame['level'].iloc[0]):g}%" if len(frame) else "95%"
    # one seed pair: no std and no interval across pairs, so those columns are left out
    single = bool(len(frame)) and int(frame["pairs"].max()) <= 1
    what = "" if single else " mean ± std"
    head = [f"Comparison | Metric | Pairs | X{what} | Y{what} | X − Y{what}"]
    if not single:
        head.append(f"X − Y per pair | {lev} t-interval (seed pairs) | Sign-flip p")
    head.append(f"{lev} CI (examples, within pairs)")
    cols = " | ".join(head).count("|") + 1
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in range(cols)) + "|"]
    for r in frame.itertuples():
        pct = r.metric.endswith(_PERCENT)
        per = ", ".join(fmt(float(v), pct) for v in str(r.diffs).split(";") if v)
        tint = ("n/a (one pair)" if r.pairs < 2 else
                f"[{fmt(r.ci_lo, pct)}, {fmt(r.ci_hi, pct)}]")
        lines.append(
            f"| {r.comparison} | {label(r.metric)}{' (pp)' if pct else ' (nats)'} | {r.pairs} "
            + (f"| {fmt(r.x_mean, pct)} | {fmt(r.y_mean, pct)} | {fmt(r.diff_mean, pct)} "
               if single else
               f"| {fmt(r.x_mean, pct)} ± {fmt(r.x_std, pct)} | {fmt(r.y_mean, pct)} ± "
               f"{fmt(r.y_std, pct)} | {fmt(r.diff_mean, pct)} ± {fmt(r.diff_std, pct)} "
               f"| {per} | {tint} | {r.p_signflip:.3g} ")
            + (f"| [{fmt(r.ex_lo, pct)}, {fmt(r.ex_hi, pct)}] |" if np.isfinite(r.ex_lo)
               else "| n/a (< 30 examples or resamples) |"))
    note = ("\nX − Y per seed pair on the same test examples (pairs in seed order); ± is the "
            "std across seed pairs. The t-interval is over seed pairs "
            "(t distribution, pairs - 1 degrees of freedom): what the differences support "
            "for other seeds. Sign-flip p: two-sided exact permutation test over the 2^pairs "
            "sign flips (it cannot go below 2 / 2^pairs: 0.25 with three pairs). The last "
            "column resamples the test examples with the seed pairs held fixed: uncertainty "
            "from the test set only, not across seeds (robustpath.stats.paired).\n")
    if single:
        note = ("\nX − Y on the same test examples. One seed pair: no interval over seeds can "
                "be given; the examples interval covers these two networks only "
                "(robustpath.stats.paired).\n")
    return "\n".join(lines) + "\n" + note


def write_paired(run_dir: str | Path, records: Sequence[PathRecord] | None = None, *,
                 bootstrap: int = 1000) -> pd.DataFrame:
    """Write ``tables/paired.md`` and ``tables/paired.csv`` of ``run_dir``."""
    run_dir = Path(run_dir)
    records = read_records(run_dir) if records is None else records
    frame = paired_differences(records, bootstrap=bootstrap)
    atomic_write_text(run_dir / "tables" / "paired.csv", frame.to_csv(index=False, float_format="%.6f"))
    atomic_write_text(run_dir / "tables" / "paired.md", to_markdown(frame))
    return frame


@cli_main
def main(argv: list[str] | None = None) -> int:
    from robustpath.cli import ArgumentParser

    p = ArgumentParser(prog="python -m robustpath.stats.paired",
                       description="Paired differences of a run's rows (aligned vs unaligned, "
                       "curve vs line) per seed pair, with a t-interval over pairs, an exact "
                       "sign-flip p and a within-pair interval over examples, as Markdown.")
    p.add_argument("run", help="run folder (records.csv + examples.npz)")
    p.add_argument("--bootstrap", type=int, default=1000,
                   help="bootstrap resamples of the within-pair interval over test examples")
    args = p.parse_args(argv)
    if not 1 <= args.bootstrap <= 100000:
        raise UserError(f"--bootstrap must be in 1..100000, got {args.bootstrap}")
    print(to_markdown(paired_differences(read_records(args.run), bootstrap=args.bootstrap)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
