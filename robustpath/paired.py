"""Paired differences between rows of a run, with a two-level bootstrap.

A reader compares rows: aligned vs unaligned (same curve family), curve vs line (same
alignment). Every seed pair is evaluated on the *same* test examples, so both
comparisons are paired twice over: by seed pair and by example. For a metric m (e.g.
the minimum robust accuracy along the path) and rows X, Y:

* per seed pair p: ``d_p = m(X_p) - m(Y_p)``; reported: the mean over pairs and its
  standard deviation across pairs (``ddof=1``), and each row's mean +- std;
* 95 % CI by a **two-level bootstrap**: each replicate draws the seed pairs with
  replacement (outer level) and one multinomial reweighting of the test examples
  (inner level, the same weights for every row and pair of the replicate, since they
  share the examples), recomputes m for every drawn pair and row from the
  per-example results (``examples.npz``) and averages ``d_p`` over the drawn pairs;
  the CI is the percentile interval of those means. With one seed pair the outer
  level is degenerate and the CI covers test examples only (column ``pairs`` says
  how many there were).

Metrics are those of :func:`robustpath.barrier.metrics_from_curves` on the grid points.
``python -m robustpath.paired RUN`` prints the table; :func:`write_paired` writes
``tables/paired.md`` and ``tables/paired.csv``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .barrier import KINDS, metrics_from_curves
from .errors import UserError, cli_main
from .records import PathRecord
from .records import read as read_records
from .store import atomic_write_text

METRICS = ("robust_acc_min", "robust_acc_avg", "robust_loss_barrier", "clean_acc_min",
           "clean_acc_avg")
#: accuracy-like metrics shown in percentage points in the Markdown table
_PERCENT = ("acc_min", "acc_avg", "acc_barrier", "acc_ends")


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


def paired_differences(records: Sequence[PathRecord], metrics: Sequence[str] = METRICS, *,
                       bootstrap: int = 1000, seed: int = 0, level: float = 0.95) -> pd.DataFrame:
    """One row per (comparison, metric): ``comparison``, ``metric``, ``pairs``,
    ``x_mean``, ``x_std``, ``y_mean``, ``y_std``, ``diff_mean``, ``diff_std`` (across
    pairs; NaN with one pair), ``ci_lo``, ``ci_hi`` (two-level bootstrap), ``level``."""
    cols = ["comparison", "metric", "pairs", "x_mean", "x_std", "y_mean", "y_std", "diff_mean",
            "diff_std", "ci_lo", "ci_hi", "level"]
    comps = comparisons(records)
    if not comps:
        return pd.DataFrame(columns=cols)
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
    out = []
    for label, x, y in comps:
        pairs = sorted(set(by_row[x]) & set(by_row[y]))
        if not pairs:
            continue
        draw = rng.integers(0, len(pairs), size=(bootstrap, len(pairs)))   # outer level
        for m in metrics:
            xv = np.array([point[x, p][m] for p in pairs])
            yv = np.array([point[y, p][m] for p in pairs])
            d_boot = np.stack([boot[x, p][m] - boot[y, p][m] for p in pairs], 1)   # [B, P]
            means = np.take_along_axis(d_boot, draw, 1).mean(1)
            sd = (lambda v: float(v.std(ddof=1)) if len(v) > 1 else float("nan"))
            out.append({"comparison": label, "metric": m, "pairs": len(pairs),
                        "x_mean": float(xv.mean()), "x_std": sd(xv),
                        "y_mean": float(yv.mean()), "y_std": sd(yv),
                        "diff_mean": float((xv - yv).mean()), "diff_std": sd(xv - yv),
                        "ci_lo": float(np.quantile(means, alpha)),
                        "ci_hi": float(np.quantile(means, 1 - alpha)), "level": level})
    return pd.DataFrame(out, columns=cols)


def to_markdown(frame: pd.DataFrame) -> str:
    """Accuracies in percentage points, losses as they are; ``mean ± std`` over pairs."""
    def fmt(v: float, pct: bool) -> str:
        return "n/a" if not np.isfinite(v) else (f"{100 * v:.1f}" if pct else f"{v:.3f}")

    from .metric_registry import label

    # one seed pair: no std across pairs, so the ± columns would only say "n/a"
    single = bool(len(frame)) and int(frame["pairs"].max()) <= 1
    pm = (lambda v, sd, pct: fmt(v, pct)) if single else \
        (lambda v, sd, pct: f"{fmt(v, pct)} ± {fmt(sd, pct)}")
    what = "" if single else " mean ± std"
    lines = [f"| Comparison | Metric | Pairs | X{what} | Y{what} | X − Y{what} "
             "| 95% CI (pairs x examples) |", "|---|---|---|---|---|---|---|"]
    for r in frame.itertuples():
        pct = r.metric.endswith(_PERCENT)
        lines.append(
            f"| {r.comparison} | {label(r.metric)}{' (pp)' if pct else ' (nats)'} | {r.pairs} "
            f"| {pm(r.x_mean, r.x_std, pct)} | {pm(r.y_mean, r.y_std, pct)} "
            f"| {pm(r.diff_mean, r.diff_std, pct)} "
            f"| [{fmt(r.ci_lo, pct)}, {fmt(r.ci_hi, pct)}] |")
    note = ("\nX − Y on the same test examples; one seed pair: the CI covers test examples "
            "only (robustpath.paired).\n") if single else (
        "\nX − Y per seed pair on the same test examples; ± is the std across seed pairs; "
        "the CI is a two-level bootstrap over seed pairs and test examples "
        "(robustpath.paired).\n")
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
    from .cli import ArgumentParser

    p = ArgumentParser(prog="python -m robustpath.paired",
                       description="Paired differences of a run's rows (aligned vs unaligned, "
                       "curve vs line), printed as Markdown.")
    p.add_argument("run", help="run folder (records.csv + examples.npz)")
    p.add_argument("--bootstrap", type=int, default=1000,
                   help="bootstrap resamples of the two-level (seed pairs x examples) CI")
    args = p.parse_args(argv)
    if not 1 <= args.bootstrap <= 100000:
        raise UserError(f"--bootstrap must be in 1..100000, got {args.bootstrap}")
    print(to_markdown(paired_differences(read_records(args.run), bootstrap=args.bootstrap)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
