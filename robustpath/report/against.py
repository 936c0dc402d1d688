"""``python -m robustpath.report NEW --against OLD``: did a change move a result?

Compares the summary tables (``tables/summary.csv``) of two run folders, e.g. the
committed default run before an optimisation and its rerun after. For every (alignment,
path) row and every barrier metric the new value must lie inside the old value's 95%
interval: the bootstrap CI over test examples (one seed pair), or, when the old run has
several seed pairs (its ``_std`` columns), the t-interval over pairs: mean +- t(0.975,
pairs - 1) std / sqrt(pairs) (``scipy.stats.t``; with 3 pairs t is 4.30, not 1.96 - the
same small-sample rule as :mod:`robustpath.stats.paired`).
Returns Markdown lines and the count of values outside; ``report`` exits 1 when any is.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from scipy import stats

from robustpath.errors import UserError
from robustpath.report.metric_registry import label

METRICS = ("clean_acc_min", "robust_acc_ends", "robust_acc_min", "robust_acc_avg",
           "clean_loss_barrier", "robust_loss_barrier", "robust_acc_barrier")


def _summary(run: Path) -> pd.DataFrame:
    path = Path(run) / "tables" / "summary.csv"
    if not path.is_file():
        raise UserError(f"{path} not found (is {run} a bench run folder?)")
    try:
        frame = pd.read_csv(path)
    except (ValueError, pd.errors.ParserError) as e:
        raise UserError(f"{path} is not a summary table ({e})") from None
    if not {"align", "curve"} <= set(frame.columns):
        raise UserError(f"{path} lacks the align / curve columns")
    frame = frame.set_index(["align", "curve"])
    if frame.index.duplicated().any():
        raise UserError(f"{path} has a repeated (align, curve) row "
                        f"{frame.index[frame.index.duplicated()][0]}; not one run's summary")
    for col in frame.columns:  # metric values, intervals, pairs: numbers or empty
        if col.startswith(METRICS + ("pairs",)) and not pd.api.types.is_numeric_dtype(frame[col]):
            raise UserError(f"{path}: column {col} holds values that are not numbers")
    return frame


#: settings that make two runs different experiments, not a rerun (checked when both
#: runs' config.json name them)
SAME = ("dataset", "arch", "threat", "norm", "eps", "attack")


def _check_same_experiment(old_run: Path, new_run: Path) -> None:
    import json

    def cfg(run):
        try:
            return json.loads((Path(run) / "config.json").read_text())
        except (OSError, ValueError):
            return {}

    old, new = cfg(old_run), cfg(new_run)
    diff = [f"{k}: {old[k]} vs {new[k]}" for k in SAME
            if k in old and k in new and old[k] != new[k]]
    if diff:
        raise UserError(f"{new_run} and {old_run} are different experiments ({', '.join(diff)}); "
                        "--against checks a rerun of the same settings")


def _interval(old: pd.DataFrame, row, m: str) -> tuple[float, float]:
    if f"{m}_lo" in old.columns and pd.notna(old.at[row, f"{m}_lo"]):
        return float(old.at[row, f"{m}_lo"]), float(old.at[row, f"{m}_hi"])
    if f"{m}_std" in old.columns and "pairs" in old.columns:
        n = int(old.at[row, "pairs"])
        if n < 2:
            raise UserError(f"the old run's summary has one seed pair and no interval for {m}")
        half = (float(stats.t.ppf(0.975, n - 1)) * float(old.at[row, f"{m}_std"])
                / math.sqrt(n))
        return float(old.at[row, m]) - half, float(old.at[row, m]) + half
    raise UserError(f"the old run's summary has no interval for {m}")


def compare(old_run: str | Path, new_run: str | Path) -> tuple[list[str], int]:
    """Markdown lines and the number of values of ``new_run`` outside the old intervals."""
    old, new = _summary(Path(old_run)), _summary(Path(new_run))
    _check_same_experiment(Path(old_run), Path(new_run))
    rows = [r for r in old.index if r in new.index]
    if not rows:
        raise UserError("the two runs share no (alignment, path) row")
    metrics = [m for m in METRICS if m in old.columns and m in new.columns]
    lines = ["| alignment | path | metric | old [95% interval] | new | inside |",
             "|---|---|---|---|---|---|"]
    outside = 0
    for r in rows:
        for m in metrics:
            lo, hi = _interval(old, r, m)
            o, n = float(old.at[r, m]), float(new.at[r, m])
            ok = lo - 1e-9 <= n <= hi + 1e-9
            outside += not ok
            scale = 100 if "acc" in m else 1
            lines.append(f"| {r[0]} | {r[1]} | {label(m)} (`{m}`) | {scale * o:.3f} [{scale * lo:.3f}, "
                         f"{scale * hi:.3f}] | {scale * n:.3f} | {'yes' if ok else '**no**'} |")
    lines += ["", f"{outside} of {len(rows) * len(metrics)} values outside the old 95% "
              "interval (accuracies in %)."]
    return lines, outside
