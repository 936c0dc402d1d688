"""The report of a sweep folder: each finished cell's tables and plots rebuilt (as
``python -m robustpath.report`` does for a run), then one table across cells, mean +- std
over seed pairs with the alignment methods side by side (``aggregate/``), committed
atomically under the sweep's lock."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from robustpath.errors import UserError
from robustpath.io.records import read as read_records
from robustpath.io.store import atomic_write_text
from robustpath.report.escape import csv_frame, md_text
from robustpath.report.escape import latex as latex_text
from robustpath.report.metric_registry import triples
from robustpath.report.plots import plot_paths
from robustpath.report.run import _report_run, check_config, check_records  # noqa: F401
from robustpath.report.tables import ALIGN_LABEL, summary_frame

# ---------------------------------------------------------------- sweeps
# the cross-cell table: (metric, header, percent?), one column per alignment method
SWEEP_METRICS = triples(("clean_acc_min", "robust_acc_min", "robust_acc_avg",
                         "robust_loss_barrier"))  # labels: robustpath.report.metric_registry
AXIS_LABEL = {"dataset": "Dataset", "arch": "Architecture"}
# a sweep's own sources (hashed in its manifest.json); aggregate/ is derived from them
SWEEP_SOURCES = ("sweep.json", "sweep.toml", "command.txt", "provenance.json", "tasks.json")


def is_sweep(folder: str | Path) -> bool:
    return (Path(folder) / "sweep.json").is_file()


def _sweep_meta(sweep_dir: Path) -> dict:
    try:
        meta = json.loads((sweep_dir / "sweep.json").read_text())
    except (OSError, ValueError):
        meta = None
    keys = {"name": str, "group": str, "dir": str, "seeds": list}
    if not (isinstance(meta, dict) and isinstance(meta.get("cells"), list) and all(
            isinstance(c, dict) and all(isinstance(c.get(k), t) for k, t in keys.items())
            and len(c["seeds"]) == 2 for c in meta["cells"])):
        raise UserError(f"{sweep_dir / 'sweep.json'} is missing or corrupt (not a sweep's "
                        "description); rerun the sweep into this folder")
    from robustpath.io.runfolder import inside

    for c in meta["cells"]:  # report locks and rewrites each cell: never one outside
        inside(sweep_dir, c["dir"], sweep_dir / "sweep.json")
    return meta


def _cell_done(cell_dir: Path) -> bool:
    return all((cell_dir / f).is_file() for f in ("done.json", "records.csv", "examples.npz"))


def _done_config(cell_dir: Path) -> str | None:
    """The configuration hash a cell's ``done.json`` was written for."""
    try:
        done = json.loads((cell_dir / "done.json").read_text())
    except (OSError, ValueError):
        return None
    return done.get("config") if isinstance(done, dict) else None


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


def sweep_report(sweep_dir: str | Path, *, rebuild: bool = True,
                 staging: Path | None = None) -> pd.DataFrame | None:
    """The table across a sweep's cells, in ``<sweep>/aggregate/``; returns its long form.

    Per group (the cells that differ only in their seed pair; e.g. one dataset x
    architecture) and per alignment x path family: mean and std over seed pairs of
    every metric of :mod:`robustpath.report.tables`, from the cells' ``tables/per_path.csv``.
    Writes ``summary.csv`` (long, full precision), ``summary.md`` / ``summary.tex`` (one
    row per group x path, aligned vs unaligned side by side), ``cells.csv`` (each
    cell's state) and ``plots/<group>.{png,pdf}`` (mean ± std over pairs along t).
    With ``rebuild``, each finished cell's own tables and plots are rebuilt first.
    Returns None when no cell has finished.

    Atomic (issue 17): everything goes into ``staging``, a staging folder holding the
    sweep's sources (``SWEEP_SOURCES``), which the caller commits
    (:func:`robustpath.io.runfolder.commit`); without one (``report``), the committed
    sources are staged and committed with the new ``aggregate/`` under the sweep's run
    lock, so a reader sees the old table or the new one, never a mix.
    """
    sweep_dir = Path(sweep_dir)
    if staging is None:
        return _sweep_report_staged(sweep_dir, rebuild)
    meta = _sweep_meta(staging)
    axes = list(meta.get("axes", ["dataset", "arch"]))
    states, frames, records = [], {}, {}
    for cell in meta["cells"]:
        cdir = sweep_dir / cell["dir"]
        done = _cell_done(cdir)
        if done and cell.get("config") and _done_config(cdir) != cell["config"]:
            # e.g. left by a killed sweep of another grid: never tabulated under this one
            raise UserError(f"{cdir} holds a cell of another sweep run than {sweep_dir}; "
                            "rerun the sweep to bring its cells and tables together")
        states.append({"cell": cell["name"], "group": cell["group"],
                       "endpoint_a": cell["seeds"][0], "endpoint_b": cell["seeds"][1],
                       "state": "done" if done else "missing"})
        if not done:
            continue
        if rebuild or not (cdir / "tables" / "per_path.csv").is_file():
            _report_run(cdir)  # under the cell's lock, its manifest checked
        frame = pd.read_csv(cdir / "tables" / "per_path.csv")
        frames.setdefault(cell["group"], []).append(frame)
        records.setdefault(cell["group"], []).extend(read_records(cdir))
    out_dir = staging / "aggregate"
    atomic_write_text(out_dir / "cells.csv", csv_frame(pd.DataFrame(states)).to_csv(index=False))
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
    n_text = len(axes) + 1  # axis values and path name: free text (robustpath.report.escape)
    md = ["| " + " | ".join(map(md_text, header)) + " |",
          "|" + "|".join("---" for _ in header) + "|"]
    md += ["| " + " | ".join([*map(md_text, r[:n_text]), *r[n_text:]]) + " |" for r in md_rows]
    note = (f"\nSweep {md_text(meta.get('name', sweep_dir.name))}: accuracies in %, losses in nats; "
            "mean ± std over seed pairs (a single value where one pair finished). "
            f"{attack}\n")
    esc = lambda t: t.replace("_", r"\_").replace("%", r"\%")  # noqa: E731
    tex = [r"\begin{tabular}{" + "l" * (len(axes) + 2) + "r" * (len(header) - len(axes) - 2) + "}",
           r"\toprule", " & ".join(latex_text(h) for h in header) + r" \\", r"\midrule"]
    tex += [" & ".join([*map(latex_text, r[:n_text]), *map(esc, r[n_text:])]) + r" \\"
            for r in tex_rows]
    tex += [r"\bottomrule", r"\end{tabular}"]
    atomic_write_text(out_dir / "summary.csv",
                      csv_frame(long).to_csv(index=False, float_format="%.6f"))
    atomic_write_text(out_dir / "summary.md", "\n".join(md) + "\n" + note)
    atomic_write_text(out_dir / "summary.tex", "\n".join(tex) + "\n")
    boot = int(meta.get("bootstrap", 1000))
    for group, recs in records.items():
        # the legend says what the bands are (bootstrap CI with one pair, std with more)
        plot_paths(recs, out_dir / "plots" / group, title=str(group), bootstrap=boot)
    from robustpath.report.html import write_sweep_report

    write_sweep_report(staging, meta, [m for m, _, _ in SWEEP_METRICS])  # staged sources
    return long


def _sweep_report_staged(sweep_dir: Path, rebuild: bool) -> pd.DataFrame | None:
    import shutil

    from robustpath.io import runfolder
    from robustpath.io.lock import run_lock

    with run_lock(sweep_dir):
        runfolder.recover(sweep_dir)
        manifest = runfolder.verify(sweep_dir)
        _sweep_meta(sweep_dir)  # a damaged sweep.json is named where it is, not staged
        sources = list(manifest["files"]) if manifest else [
            f for f in SWEEP_SOURCES if (sweep_dir / f).is_file()]  # written before manifests
        stage = runfolder.begin(sweep_dir)
        for rel in sources:
            shutil.copy2(sweep_dir / rel, stage / rel)
        try:
            long = sweep_report(sweep_dir, rebuild=rebuild, staging=stage)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)  # uncommitted: the old outputs stay
            raise
        runfolder.commit(sweep_dir, sources)
        return long


