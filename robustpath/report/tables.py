"""Barrier tables in the layout of Tatro et al.'s tables: one row per alignment x
path family; columns endpoint / min / average clean and robust accuracy along the
path and the loss and accuracy barriers. CSV (full precision, CIs as columns),
Markdown and LaTeX.

One seed pair: value [95% bootstrap CI] ("[no CI]" with fewer than 30 test examples or
bootstrap resamples, :func:`robustpath.stats.barrier.ci_note`). Several pairs: mean ± std over
pairs. Accuracies in percent, losses in nats. Min / barrier columns marked "(grid)" use
the grid points only; "(refined)" ones every evaluated point, grid and refinement.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from robustpath.align import methods
from robustpath.io.records import PathRecord
from robustpath.io.store import atomic_write_text
from robustpath.report import metric_registry
from robustpath.report.escape import latex, md_text
from robustpath.stats.barrier import path_metrics

ALIGN_LABEL = methods.LABEL  # labels and row order: robustpath.align.methods

# (metric, header, percent?): declared in robustpath.report.metric_registry (labels, units,
# definitions); the CSV columns keep these names
COLUMNS = metric_registry.triples(metric_registry.SUMMARY)


def per_path_frame(paths: list[PathRecord], bootstrap: int = 1000,
                   strong: dict | None = None) -> pd.DataFrame:
    """One row per path with ``<metric>``, ``<metric>_lo``, ``<metric>_hi`` columns;
    ``strong`` (:func:`robustpath.strong.files.read`) adds the strong-stage metrics."""
    from robustpath.strong.files import strong_metrics

    rows = []
    for p in paths:
        m = path_metrics(p.result, bootstrap=bootstrap, seed=0)
        if strong and p.path_id in strong:
            m.update(strong_metrics(strong[p.path_id], bootstrap=bootstrap, seed=0))
        row = {"path_id": p.path_id, **p.identity}
        for name, v in m.items():
            row[name], row[f"{name}_lo"], row[f"{name}_hi"] = v["value"], v["lo"], v["hi"]
        rows.append(row)
    return pd.DataFrame(rows)


def summary_frame(per_path: pd.DataFrame) -> pd.DataFrame:
    """Aggregate over seed pairs per (align, curve): mean, std, CI of single pairs."""
    rows = []
    order = {a: i for i, a in enumerate(ALIGN_LABEL)}
    keys = sorted(per_path.groupby(["align", "curve"]).groups,
                  key=lambda k: (order.get(k[0], 99), k[0], k[1]))
    for align, curve in keys:
        g = per_path[(per_path["align"] == align) & (per_path["curve"] == curve)]
        row = {"align": align, "curve": curve, "pairs": len(g)}
        for name, _, _ in columns(per_path):
            vals = g[name].to_numpy(dtype=np.float64)
            row[name] = float(vals.mean())
            row[f"{name}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
            row[f"{name}_lo"] = float(g[f"{name}_lo"].iloc[0]) if len(g) == 1 else float("nan")
            row[f"{name}_hi"] = float(g[f"{name}_hi"].iloc[0]) if len(g) == 1 else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def columns(frame: pd.DataFrame) -> list[tuple[str, str, bool]]:
    """The :data:`COLUMNS` that ``frame`` holds (runs without refinement or strong
    stage have fewer)."""
    return [c for c in COLUMNS if c[0] in frame.columns]


def _fmt(row, name: str, pct: bool, latex: bool) -> str:
    scale, digits = (100.0, 1) if pct else (1.0, 3)
    v = row[name] * scale
    if row["pairs"] > 1:
        pm = r" $\pm$ " if latex else " ± "
        return f"{v:.{digits}f}{pm}{row[f'{name}_std'] * scale:.{digits}f}"
    lo, hi = row[f"{name}_lo"] * scale, row[f"{name}_hi"] * scale
    if not (np.isfinite(lo) and np.isfinite(hi)):  # too few examples / resamples for one
        return f"{v:.{digits}f} [no CI]"
    return f"{v:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _cells(summary: pd.DataFrame, latex: bool,
           names=None) -> tuple[list[str], list[list[str]]]:
    cols = [c for c in columns(summary) if names is None or c[0] in names]
    header = ["Alignment", "Path"] + [h for _, h, _ in cols]
    body = []
    for _, row in summary.iterrows():
        body.append([ALIGN_LABEL.get(row["align"], row["align"]), str(row["curve"])]
                    + [_fmt(row, n, p, latex) for n, _, p in cols])
    return header, body


def to_markdown(summary: pd.DataFrame, names=None) -> str:
    """The summary as a Markdown table (only the columns ``names`` when given)."""
    header, body = _cells(summary, latex=False, names=names)
    lines = ["| " + " | ".join(map(md_text, header)) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join([*map(md_text, r[:2]), *r[2:]]) + " |" for r in body]
    if any("[no CI]" in c for r in body for c in r):
        lines += ["", "[no CI]: fewer than 30 test examples or bootstrap resamples, too few "
                  "for a 95% interval (robustpath.stats.barrier.ci_note)."]
    return "\n".join(lines) + "\n"


def to_latex(summary: pd.DataFrame, caption: str = "") -> str:
    header, body = _cells(summary, latex=True)
    esc = lambda s: s.replace("_", r"\_").replace("%", r"\%")  # noqa: E731
    lines = [r"\begin{table}[t]", r"\centering", r"\small",
             r"\begin{tabular}{ll" + "r" * (len(header) - 2) + "}", r"\toprule",
             " & ".join(latex(h) for h in header) + r" \\", r"\midrule"]
    # the label and path name are free text (escape.latex); the numbers carry $\pm$
    lines += [" & ".join([*map(latex, r[:2]), *map(esc, r[2:])]) + r" \\" for r in body]
    lines += [r"\bottomrule", r"\end{tabular}"]
    if caption:
        lines.append(r"\caption{" + latex(caption) + "}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def write_tables(out_dir: str | Path, paths: list[PathRecord], *, bootstrap: int = 1000,
                 caption: str = "", strong: dict | None = None) -> pd.DataFrame:
    """Write per_path.csv, summary.csv, summary.md, summary.tex; returns the summary."""
    out_dir = Path(out_dir)
    per_path = per_path_frame(paths, bootstrap, strong)
    summary = summary_frame(per_path)
    atomic_write_text(out_dir / "per_path.csv", per_path.to_csv(index=False, float_format="%.6f"))
    atomic_write_text(out_dir / "summary.csv", summary.to_csv(index=False, float_format="%.6f"))
    atomic_write_text(out_dir / "summary.md", to_markdown(summary))
    atomic_write_text(out_dir / "summary.tex", to_latex(summary, caption))
    return summary
