"""Comparison of several runs (``python -m robustpath.report RUN_A RUN_B ...``).

Writes to ``--compare-out`` (default ``results/comparison``):

* ``comparison.{csv,md,tex}``: every path family of every run, one row per run x
  alignment x path, with each run's own uncertainty (95% bootstrap CI for one seed
  pair, ± std over several), headers as in ``tables/summary.md``;
* ``differences.{csv,md}``: each later run minus the first (the baseline), per
  path present in both with the same seed pair, with a 95% *paired* bootstrap CI:
  both runs' per-example results are resampled with the same example indices; with
  several seed pairs, also their mean (two-level bootstrap CI over pairs and examples). Only
  done where the runs share their test examples (same dataset, test subset and number
  of examples, which fixes the seeded subset of :class:`robustpath.engine.stages.RunData`);
  otherwise the file says why there is no row;
* ``settings.md``: the settings in which the runs differ;
* ``comparison.html``: both tables in one self-contained page, after the settings in
  which the runs differ (:func:`config_differences`) and, for each run, the paths
  that could not be paired with the baseline and why (:func:`unpaired`).

The input run folders are only read, never written.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from robustpath.io.records import PathRecord
from robustpath.io.records import read as read_records
from robustpath.io.store import atomic_write_text
from robustpath.report.escape import csv_frame, latex, md_code, md_text
from robustpath.report.metric_registry import triples
from robustpath.report.style import attack_label
from robustpath.report.tables import ALIGN_LABEL, _fmt, per_path_frame, summary_frame
from robustpath.stats.barrier import KINDS, metrics_from_curves

# (metric, header, percent?): labels from robustpath.report.metric_registry
COMPARE_COLUMNS = triples(("clean_acc_ends", "clean_acc_min", "robust_acc_ends", "robust_acc_min",
                           "robust_acc_avg", "clean_loss_barrier", "robust_loss_barrier"))
DIFF_METRICS = [m for m in COMPARE_COLUMNS if m[0] != "clean_acc_ends"]


def run_names(run_dirs: list[Path]) -> list[str]:
    """Folder names, or the full paths where two names coincide."""
    names = [Path(r).name for r in run_dirs]
    return [str(r) if names.count(n) > 1 else n for r, n in zip(run_dirs, names)]


def shared_examples(cfg_a: dict, cfg_b: dict, n_a: int, n_b: int) -> str | None:
    """None when two runs were evaluated on the same test examples; else why not."""
    for key in ("dataset", "test_subset"):
        if cfg_a.get(key) != cfg_b.get(key):
            return f"different {key} ({cfg_a.get(key)} vs {cfg_b.get(key)})"
    if n_a != n_b:
        return f"different numbers of test examples ({n_a} vs {n_b})"
    return None


def config_differences(names: list[str], configs: list[dict]) -> list[str]:
    """Markdown lines: one table row per result-relevant setting
    (:func:`robustpath.io.outputs.comparable`) whose value differs between the runs."""
    from robustpath.io.outputs import comparable
    from robustpath.report.style import format_eps

    flat = [comparable(c) for c in configs]
    keys = sorted({k for f in flat for k in f if any(g.get(k) != flat[0].get(k) for g in flat)})
    if not keys:
        return ["All runs have the same result-relevant settings.", ""]

    def show(k, v):
        if v is None:
            return "(unset)"
        if k in ("eps", "step_size"):
            return format_eps(v)
        return ", ".join(map(str, v)) if isinstance(v, list) else str(v)

    lines = ["| Setting | " + " | ".join(f"`{n}`" for n in names) + " |",
             "|---|" + "---|" * len(names)]
    lines += [f"| {k} | " + " | ".join(show(k, f.get(k)).replace("|", "/") for f in flat) + " |"
              for k in keys]
    return lines + [""]


def unpaired(base: list[PathRecord], other: list[PathRecord]) -> list[str]:
    """Why paths of two runs got no paired difference: a path (alignment, family, seed
    pair) that only one of the runs evaluated."""
    a, b = {p.path_id for p in base}, {p.path_id for p in other}
    return ([f"{pid}: only in the run" for pid in sorted(b - a)]
            + [f"{pid}: only in the baseline" for pid in sorted(a - b)])


def _boot_metrics(p: PathRecord, weights: np.ndarray) -> dict[str, np.ndarray]:
    res = p.result.grid()  # grid metrics, as in tables/summary
    acc = {k: weights @ getattr(res, f"{k}_correct").astype(np.float64).T for k in KINDS}
    loss = {k: weights @ getattr(res, f"{k}_loss").astype(np.float64).T for k in KINDS}
    return metrics_from_curves(res.ts, res.speed, acc, loss)


def _point_metrics(p: PathRecord) -> dict[str, np.ndarray]:
    res = p.result.grid()
    per_t = res.per_t()
    return metrics_from_curves(res.ts, res.speed,
                               {k: per_t[f"{k}_acc"] for k in KINDS},
                               {k: per_t[f"{k}_loss"] for k in KINDS})


def paired_differences(base: list[PathRecord], other: list[PathRecord], *, bootstrap: int = 1000,
                       seed: int = 0, level: float = 0.95) -> list[dict]:
    """``other - base`` for every path (alignment, family, seed pair) in both, with a
    paired percentile bootstrap CI (the same resample of examples for both runs).

    Where an alignment x family has several seed pairs in both runs, one more row
    (``endpoint_a = endpoint_b = "all"``, ``pairs`` = their number) gives the mean difference
    over pairs with a two-level bootstrap CI: seed pairs resampled with replacement,
    and within each bootstrap draw the same example resample as the per-pair rows (so
    the CI covers both the seed and the test-example variation)."""
    by_id = {p.path_id: p for p in base}
    n = base[0].result.clean_correct.shape[1]
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(n, np.full(n, 1.0 / n), size=bootstrap).astype(np.float64) / n
    alpha = (1 - level) / 2
    rows = []
    groups: dict[tuple[str, str], list[tuple[dict, dict]]] = {}
    for q in other:
        p = by_id.get(q.path_id)
        if p is None:
            continue
        pa, pb = _point_metrics(p), _point_metrics(q)
        ba, bb = _boot_metrics(p, weights), _boot_metrics(q, weights)
        row = {**q.identity, "pairs": 1}
        point, boot = {}, {}
        for m, _, _ in DIFF_METRICS:
            point[m], boot[m] = float(pb[m] - pa[m]), np.asarray(bb[m] - ba[m])
            lo, hi = np.quantile(boot[m], [alpha, 1 - alpha])
            row[m], row[f"{m}_lo"], row[f"{m}_hi"] = point[m], float(lo), float(hi)
        rows.append(row)
        groups.setdefault((q.align, q.curve), []).append((point, boot))
    pair_rng = np.random.default_rng(seed + 1)
    for (align, curve), members in groups.items():
        k = len(members)
        if k < 2:
            continue
        pick = pair_rng.integers(0, k, size=(bootstrap, k))  # seed pairs, per draw
        row = {"align": align, "curve": curve, "endpoint_a": "all", "endpoint_b": "all",
               "pairs": k}
        for m, _, _ in DIFF_METRICS:
            d = np.stack([b[m] for _, b in members])  # [pairs, bootstrap]
            pooled = d[pick, np.arange(bootstrap)[:, None]].mean(1)
            lo, hi = np.quantile(pooled, [alpha, 1 - alpha])
            row[m] = float(np.mean([pt[m] for pt, _ in members]))
            row[f"{m}_lo"], row[f"{m}_hi"] = float(lo), float(hi)
        rows.append(row)
    return rows


def _md(header: list[str], rows: list[list[str]], n_text: int) -> str:
    """A Markdown table whose first ``n_text`` columns are free text (escaped)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join([*map(md_text, r[:n_text]), *r[n_text:]]) + " |"
                              for r in rows]) + "\n"


def _diff_cell(r, m: str, pct: bool) -> str:
    scale, digits = (100.0, 1) if pct else (1.0, 3)
    return (f"{r[m] * scale:+.{digits}f} [{r[m + '_lo'] * scale:+.{digits}f}, "
            f"{r[m + '_hi'] * scale:+.{digits}f}]")


def compare_runs(run_dirs: list[Path], out_dir: Path, configs: list[dict]) -> pd.DataFrame:
    """Write the comparison files (module docstring); returns the long comparison
    frame (one row per run x alignment x path, full precision)."""
    from robustpath.report.html import markdown_to_html

    out_dir = Path(out_dir)
    names = run_names(run_dirs)
    records = [read_records(rd) for rd in run_dirs]
    frames, md_rows, tex_rows = [], [], []
    for name, cfg, recs in zip(names, configs, records):
        s = summary_frame(per_path_frame(recs, int(cfg.get("bootstrap", 1000))))
        atk = attack_label(cfg.get("attack"), cfg.get("norm"), cfg.get("eps"),
                           cfg.get("eval_steps"))
        s.insert(0, "attack", atk)
        for i, k in enumerate(("run", "dataset", "arch")):
            s.insert(i, k, name if k == "run" else cfg.get(k, "?"))
        frames.append(s)
        for _, r in s.iterrows():
            lead = [name, str(r["dataset"]), str(r["arch"]), atk,
                    ALIGN_LABEL.get(r["align"], r["align"]), str(r["curve"]), str(int(r["pairs"]))]
            md_rows.append(lead + [_fmt(r, m, pct, latex=False) for m, _, pct in COMPARE_COLUMNS])
            tex_rows.append(lead + [_fmt(r, m, pct, latex=True) for m, _, pct in COMPARE_COLUMNS])
    long = pd.concat(frames, ignore_index=True)
    header = ["Run", "Dataset", "Architecture", "Attack", "Alignment", "Path", "Pairs"] + \
        [h for _, h, _ in COMPARE_COLUMNS]
    note = ("Accuracies in %, losses in nats; one seed pair: value [95% bootstrap CI over test "
            "examples]; several: mean ± std over seed pairs.\n")
    table_md = _md(header, md_rows, 6)
    atomic_write_text(out_dir / "comparison.csv",
                      csv_frame(long).to_csv(index=False, float_format="%.6f"))
    atomic_write_text(out_dir / "comparison.md", table_md + "\n" + note)
    esc = lambda t: t.replace("_", r"\_").replace("%", r"\%").replace("∞", "inf") \
        .replace("ε", "eps")  # noqa: E731
    tex = [r"\begin{tabular}{" + "l" * 7 + "r" * len(COMPARE_COLUMNS) + "}", r"\toprule",
           " & ".join(esc(h) for h in header) + r" \\", r"\midrule"]
    tex += [" & ".join([*(latex(c.replace("∞", "inf").replace("ε", "eps")) for c in r[:6]), *map(esc, r[6:])]) + r" \\"
            for r in tex_rows]
    atomic_write_text(out_dir / "comparison.tex", "\n".join(tex + [r"\bottomrule",
                                                                    r"\end{tabular}"]) + "\n")

    diff_rows, diff_md, notes = [], [], []
    base_cfg, base_recs = configs[0], records[0]
    boot = int(base_cfg.get("bootstrap", 1000))
    for name, cfg, recs in zip(names[1:], configs[1:], records[1:]):
        why = shared_examples(base_cfg, cfg, base_recs[0].result.clean_correct.shape[1],
                              recs[0].result.clean_correct.shape[1])
        if why:
            notes.append(f"- {md_text(name)} vs {md_text(names[0])}: no paired differences, {why}.")
            continue
        rows = paired_differences(base_recs, recs, bootstrap=boot)
        if not rows:
            notes.append(f"- {md_text(name)} vs {md_text(names[0])}: no path (alignment, family, seed pair) in both.")
        missing = unpaired(base_recs, recs)
        if missing:
            notes.append(f"- {md_text(name)} vs {md_text(names[0])}: {len(missing)} path(s) not paired: "
                         + "; ".join(map(md_text, missing)) + ".")
        for r in rows:
            r = {"run": name, "baseline": names[0], **r}
            diff_rows.append(r)
            diff_md.append([f"{name} − {names[0]}", ALIGN_LABEL.get(r["align"], r["align"]),
                            str(r["curve"]), f"all {r['pairs']} pairs" if r["endpoint_a"] == "all"
                            else f"{r['endpoint_a']},{r['endpoint_b']}"]
                           + [_diff_cell(r, m, pct) for m, _, pct in DIFF_METRICS])
    dheader = ["Difference", "Alignment", "Path", "Seeds"] + [f"Δ {h}" for _, h, _ in DIFF_METRICS]
    diff_text = (_md(dheader, diff_md, 4) if diff_md else "") + \
        ("\nDifference [95% paired bootstrap CI over the shared test examples]; rows 'all N "
         "pairs': the mean over seed pairs, its CI a two-level bootstrap over seed pairs and "
         "test examples; accuracies in percentage points, losses in nats.\n"
         if diff_md else "") + \
        ("\n" + "\n".join(notes) + "\n" if notes else "")
    atomic_write_text(out_dir / "differences.csv",
                      csv_frame(pd.DataFrame(diff_rows)).to_csv(index=False, float_format="%.6f"))
    atomic_write_text(out_dir / "differences.md", diff_text)
    atomic_write_text(out_dir / "settings.md", "\n".join(config_differences(names, configs)))
    page = "\n".join(["# Comparison of runs", "", "Runs: " + ", ".join(map(md_code, names))
                      + f"; baseline for differences: {md_code(names[0])}.", "",
                      "## Settings that differ", "", *config_differences(names, configs),
                      "## All paths", "",
                      table_md, note, "## Differences to the baseline", "", diff_text])
    atomic_write_text(out_dir / "comparison.html",
                      markdown_to_html(page, title="robustpath: comparison of runs"))
    return long
