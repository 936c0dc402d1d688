"""``python -m robustpath.report RUN [RUN ...]``: rebuild tables and plots from the
stored per-t records of one or more runs, and compare several runs in one table.

For each run folder: reads ``records.csv`` + ``examples.npz`` (and ``config.json``
for the bootstrap count), writes ``tables/summary.{csv,md,tex}``, ``tables/per_path.csv``
and ``plots/paths.{png,pdf}``. Tables are byte-identical to the ones the benchmark
wrote. With several runs, also writes a comparison table (rows: dataset x
architecture; columns: unaligned vs aligned robust / clean minimum accuracy and
robust loss barrier) to ``--compare-out`` (default ``results/comparison``).

A sweep folder (``python -m robustpath.sweep``; it holds ``sweep.json``) is reported
as a whole: each finished cell's tables and plots are rebuilt, then one table across
cells (:func:`sweep_report`).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from .cli import ArgumentParser
from .errors import UserError, cli_main
from .plots import plot_paths
from .records import read as read_records
from .store import atomic_write_text
from .tables import ALIGN_LABEL, summary_frame, write_tables


def _config(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "config.json").read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        raise UserError(f"{run_dir / 'config.json'} is corrupt") from None


def build_report(run_dir: str | Path) -> pd.DataFrame:
    """Tables and plots of one run from its records; returns the summary frame.

    Everything is computed before anything is written, so a corrupt input leaves the
    earlier tables untouched.
    """
    run_dir = Path(run_dir)
    cfg = _config(run_dir)
    paths = read_records(run_dir)
    boot = int(cfg.get("bootstrap", 1000))
    title = f"{cfg.get('dataset', '?')} / {cfg.get('arch', '?')}, {cfg.get('attack', '?')} " \
            f"{cfg.get('norm', '')} eps={cfg.get('eps', 0):.4g}"
    summary = write_tables(run_dir / "tables", paths, bootstrap=boot, caption=title)
    from .paired import write_paired  # tables/paired.{md,csv}: aligned vs unaligned, curve vs line

    write_paired(run_dir, paths, bootstrap=boot)
    plot_paths(paths, run_dir / "plots" / "paths", title=title, bootstrap=boot)
    return summary


def format_summary(summary: pd.DataFrame, cfg: dict | None = None) -> str:
    """A compact plain-text table for the terminal."""
    cols = [("clean_acc_ends", "clean@ends", 100), ("clean_acc_min", "clean min", 100),
            ("robust_acc_ends", "robust@ends", 100), ("robust_acc_min", "robust min", 100),
            ("robust_acc_avg", "robust avg", 100), ("robust_loss_barrier", "rob.loss barrier", 1)]
    head = f"{'path':<26}" + "".join(f"{h:>18}" for _, h, _ in cols)
    lines = [head, "-" * len(head)]
    for _, r in summary.iterrows():
        name = f"{ALIGN_LABEL.get(r['align'], r['align'])} {r['curve']}"
        cells = []
        for c, _, s in cols:
            if r["pairs"] > 1:
                cells.append(f"{r[c] * s:.2f}±{r[c + '_std'] * s:.2f}")
            else:
                cells.append(f"{r[c] * s:.2f} [{r[c + '_lo'] * s:.1f},{r[c + '_hi'] * s:.1f}]")
        lines.append(f"{name:<26}" + "".join(f"{c:>18}" for c in cells))
    return "\n".join(lines)


def comparison(run_dirs: list[Path], out_dir: Path) -> pd.DataFrame:
    """One table across runs: per (dataset, arch, attack, eps) the unaligned vs aligned
    statistics of the best curve family (bezier if present, else the first)."""
    rows = []
    for rd in run_dirs:
        cfg = _config(rd)
        s = pd.read_csv(rd / "tables" / "summary.csv")
        curve = "bezier" if "bezier" in set(s["curve"]) else s["curve"].iloc[0]
        row = {"run": rd.name, "dataset": cfg.get("dataset"), "arch": cfg.get("arch"),
               "attack": cfg.get("attack"), "eps": cfg.get("eps"), "curve": curve}
        for _, r in s[s["curve"] == curve].iterrows():
            tag = "unaligned" if r["align"] == "none" else f"aligned-{r['align']}"
            for m in ("clean_acc_min", "robust_acc_min", "robust_loss_barrier"):
                row[f"{tag}:{m}"] = r[m]
                row[f"{tag}:{m}_std"] = r[f"{m}_std"]
        rows.append(row)
    frame = pd.DataFrame(rows)
    atomic_write_text(out_dir / "comparison.csv", frame.to_csv(index=False, float_format="%.6f"))
    metric_cols = [c for c in frame.columns if ":" in c and not c.endswith("_std")]
    header = ["dataset", "arch", "attack", "eps", "curve"] + metric_cols
    md = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for _, r in frame.iterrows():
        cells = [str(r["dataset"]), str(r["arch"]), str(r["attack"]), f"{r['eps']:.4g}",
                 str(r["curve"])]
        for c in metric_cols:
            scale = 100 if "acc" in c else 1
            v, sd = r[c] * scale, r.get(c + "_std", 0) * scale
            cells.append(f"{v:.2f} ± {sd:.2f}" if sd else f"{v:.2f}")
        md.append("| " + " | ".join(cells) + " |")
    atomic_write_text(out_dir / "comparison.md", "\n".join(md) + "\n")
    return frame


# ---------------------------------------------------------------- sweeps
# the cross-cell table: (metric, header, percent?), one column per alignment method
SWEEP_METRICS = [("clean_acc_min", "Clean min", True), ("robust_acc_min", "Robust min", True),
                 ("robust_acc_avg", "Robust avg", True),
                 ("robust_loss_barrier", "Robust loss barrier", False)]
AXIS_LABEL = {"dataset": "Dataset", "arch": "Architecture"}


def is_sweep(folder: str | Path) -> bool:
    return (Path(folder) / "sweep.json").is_file()


def _sweep_meta(sweep_dir: Path) -> dict:
    try:
        return json.loads((sweep_dir / "sweep.json").read_text())
    except (OSError, ValueError):
        raise UserError(f"{sweep_dir / 'sweep.json'} is missing or corrupt") from None


def _cell_done(cell_dir: Path) -> bool:
    return all((cell_dir / f).is_file() for f in ("done.json", "records.csv", "examples.npz"))


def _mean_std(row, name: str, pct: bool, latex: bool = False) -> str:
    scale, digits = (100.0, 1) if pct else (1.0, 3)
    v = row[name] * scale
    if row["pairs"] > 1:
        pm = r" $\pm$ " if latex else " ± "
        return f"{v:.{digits}f}{pm}{row[name + '_std'] * scale:.{digits}f}"
    return f"{v:.{digits}f}"


def sweep_tables(long: pd.DataFrame, axes: list[str]) -> tuple[list[str], list[list[str]],
                                                                   list[list[str]]]:
    """The wide cross-cell table: one row per group x path family; endpoint accuracy,
    then each metric once per alignment method (mean ± std over seed pairs).
    Returns ``(header, markdown rows, latex rows)``."""
    aligns = [a for a in ALIGN_LABEL if a in set(long["align"])]
    aligns += sorted(set(long["align"]) - set(aligns))
    header = [AXIS_LABEL.get(a, a) for a in axes] + ["Path", "Pairs", "Clean ends", "Robust ends"]
    header += [f"{h}: {ALIGN_LABEL.get(a, a)}" for _, h, _ in SWEEP_METRICS for a in aligns]
    md, tex = [], []
    for (_, curve), g in long.groupby(["group", "curve"], sort=False):
        by_align = {r["align"]: r for _, r in g.iterrows()}
        first = by_align[next(a for a in aligns if a in by_align)]
        for latex, out in ((False, md), (True, tex)):
            cells = [str(first[a]) for a in axes] + [str(curve), str(int(g["pairs"].min()))]
            cells += [_mean_std(first, m, True, latex) for m in ("clean_acc_ends", "robust_acc_ends")]
            cells += [_mean_std(by_align[a], m, pct, latex) if a in by_align else "-"
                      for m, _, pct in SWEEP_METRICS for a in aligns]
            out.append(cells)
    return header, md, tex


def sweep_report(sweep_dir: str | Path, *, rebuild: bool = True) -> pd.DataFrame | None:
    """The table across a sweep's cells, in ``<sweep>/aggregate/``; returns its long form.

    Per group (the cells that differ only in their seed pair; e.g. one dataset x
    architecture) and per alignment x path family: mean and std over seed pairs of
    every metric of :mod:`robustpath.tables`, from the cells' ``tables/per_path.csv``.
    Writes ``summary.csv`` (long, full precision), ``summary.md`` / ``summary.tex`` (one
    row per group x path, aligned vs unaligned side by side), ``cells.csv`` (each
    cell's state) and ``plots/<group>.{png,pdf}`` (mean ± std over pairs along t).
    With ``rebuild``, each finished cell's own tables and plots are rebuilt first.
    Returns None when no cell has finished.
    """
    sweep_dir = Path(sweep_dir)
    meta = _sweep_meta(sweep_dir)
    axes = list(meta.get("axes", ["dataset", "arch"]))
    states, frames, records = [], {}, {}
    for cell in meta["cells"]:
        cdir = sweep_dir / cell["dir"]
        done = _cell_done(cdir)
        states.append({"cell": cell["name"], "group": cell["group"], "seed_a": cell["seeds"][0],
                       "seed_b": cell["seeds"][1], "state": "done" if done else "missing"})
        if not done:
            continue
        if rebuild or not (cdir / "tables" / "per_path.csv").is_file():
            build_report(cdir)
        frame = pd.read_csv(cdir / "tables" / "per_path.csv")
        frames.setdefault(cell["group"], []).append(frame)
        records.setdefault(cell["group"], []).extend(read_records(cdir))
    out_dir = sweep_dir / "aggregate"
    atomic_write_text(out_dir / "cells.csv", pd.DataFrame(states).to_csv(index=False))
    if not frames:
        return None
    axis_values = {c["group"]: c["axes"] for c in meta["cells"]}
    rows = []
    for group, parts in frames.items():
        s = summary_frame(pd.concat(parts, ignore_index=True))
        for a in reversed(axes):
            s.insert(0, a, axis_values[group].get(a))
        s.insert(0, "group", group)
        rows.append(s)
    long = pd.concat(rows, ignore_index=True)
    header, md_rows, tex_rows = sweep_tables(long, axes)
    attack = meta.get("attack_note", "")
    md = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    md += ["| " + " | ".join(r) + " |" for r in md_rows]
    note = (f"\nSweep {meta.get('name', sweep_dir.name)}: accuracies in %, losses in nats; "
            "mean ± std over seed pairs (a single value where one pair finished). "
            f"{attack}\n")
    esc = lambda t: t.replace("_", r"\_").replace("%", r"\%")  # noqa: E731
    tex = [r"\begin{tabular}{" + "l" * (len(axes) + 2) + "r" * (len(header) - len(axes) - 2) + "}",
           r"\toprule", " & ".join(esc(h) for h in header) + r" \\", r"\midrule"]
    tex += [" & ".join(esc(c) for c in r) + r" \\" for r in tex_rows]
    tex += [r"\bottomrule", r"\end{tabular}"]
    atomic_write_text(out_dir / "summary.csv", long.to_csv(index=False, float_format="%.6f"))
    atomic_write_text(out_dir / "summary.md", "\n".join(md) + "\n" + note)
    atomic_write_text(out_dir / "summary.tex", "\n".join(tex) + "\n")
    boot = int(meta.get("bootstrap", 1000))
    for group, recs in records.items():
        plot_paths(recs, out_dir / "plots" / group, title=f"{group} (mean ± std over seed pairs)",
                   bootstrap=boot)
    return long


@cli_main
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m robustpath.report", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="run folders (each with records.csv and examples.npz) "
                   "or sweep folders (with sweep.json: every cell, then the table across cells)")
    p.add_argument("--compare-out", default="results/comparison",
                   help="where the cross-run comparison table goes (with several runs)")
    args = p.parse_args(argv)
    run_dirs = [Path(r) for r in args.runs]
    for rd in run_dirs:
        if not rd.is_dir():
            raise UserError(f"run folder {rd} not found")
    sweeps = [rd for rd in run_dirs if is_sweep(rd)]
    run_dirs = [rd for rd in run_dirs if not is_sweep(rd)]
    for sd in sweeps:
        long = sweep_report(sd)
        print(f"== sweep {sd}")
        if long is None:
            print("no finished cells yet")
        else:
            print((sd / "aggregate" / "summary.md").read_text().rstrip())
            print(f"tables: {sd / 'aggregate'}/summary.{{csv,md,tex}}, plots: {sd / 'aggregate' / 'plots'}/")
    summaries = [build_report(rd) for rd in run_dirs]
    for rd, s in zip(run_dirs, summaries):
        print(f"== {rd}")
        print(format_summary(s))
    if len(run_dirs) > 1:
        comparison(run_dirs, Path(args.compare_out))
        print(f"comparison table: {Path(args.compare_out) / 'comparison.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
