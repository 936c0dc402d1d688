"""One run's report, rebuilt from its records: the checks of a run folder's
``config.json`` and ``records.csv`` (values, columns, path ids), the tables, plots,
``summary.json`` and the Markdown / HTML page (:func:`build_report`), and the console
summary (:func:`format_summary`). Used by the bench's run-folder writer
(:mod:`robustpath.io.outputs`), by ``python -m robustpath.report``
(:mod:`robustpath.report.cli`) and by the sweep report (:mod:`robustpath.sweep.report`)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from robustpath.errors import UserError
from robustpath.io.records import frame_path_ids
from robustpath.io.records import read as read_records
from robustpath.io.records import read_frame as read_records_frame
from robustpath.report.plots import plot_paths
from robustpath.report.tables import ALIGN_LABEL, write_tables


def _config(run_dir: Path) -> dict:
    path = run_dir / "config.json"
    try:
        cfg = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        raise UserError(f"{path} is corrupt") from None
    return check_config(cfg, path)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_config(cfg, path: Path) -> dict:
    """The fields of a run's ``config.json`` that report reads, checked: a JSON object,
    ``bootstrap`` an integer >= 1, ``eps`` a finite number >= 0, names as strings."""
    if not isinstance(cfg, dict):
        raise UserError(f"{path} is not a run configuration (a JSON {type(cfg).__name__}, "
                        "not an object)")
    boot = cfg.get("bootstrap", 1000)
    if not (_is_number(boot) and int(boot) == boot and boot >= 1):
        raise UserError(f"{path}: bootstrap must be an integer >= 1, got {boot!r}")
    eps = cfg.get("eps", 0)
    if not (_is_number(eps) and eps >= 0):
        raise UserError(f"{path}: eps must be a finite number >= 0, got {eps!r}")
    for k in ("dataset", "arch", "attack", "norm"):
        if k in cfg and not isinstance(cfg[k], str):
            raise UserError(f"{path}: {k} must be a string, got {cfg[k]!r}")
    return cfg


# records.csv columns: (name, lowest, highest) of the numeric ones
_NUMERIC = {"t": (0.0, 1.0), "speed": (0.0, math.inf), "clean_acc": (0.0, 1.0),
            "robust_acc": (0.0, 1.0), "clean_loss": (0.0, math.inf),
            "robust_loss": (0.0, math.inf), "n": (1, math.inf)}


def check_records(run_dir: Path, paths=None) -> list:
    """Every column of ``records.csv`` checked: numeric columns numeric, finite and in
    range, and equal to what ``examples.npz`` gives (not only ``robust_acc``, which
    :func:`robustpath.io.records.read` compares), so garbage in any column is refused."""
    csv = run_dir / "records.csv"
    # either schema (records.LEGACY_COLUMNS renamed); empty cells: named below
    frame = read_records_frame(run_dir, complete=False)
    for col, (lo, hi) in _NUMERIC.items():
        vals = pd.to_numeric(frame[col], errors="coerce")
        bad = vals.isna() | ~np.isfinite(vals) | (vals < lo) | (vals > hi)
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            value = frame[col].iloc[row]
            shown = "nothing" if pd.isna(value) else repr(str(value))
            raise UserError(f"{csv}: column {col} row {row + 2} holds {shown}, "
                            f"not a number in [{lo}, {hi}] (truncated or edited file?)")
    if frame_path_ids(frame) != frame["path_id"].astype(str).tolist():
        raise UserError(f"{csv}: path_id does not match align, curve and endpoints")
    if paths is None:
        paths = read_records(run_dir)
    for p in paths:
        grp = frame[frame["path_id"] == p.path_id]
        per_t = p.result.per_t()
        expect = {**per_t, "speed": p.result.speed,
                  "n": np.full(len(grp), p.result.clean_correct.shape[1])}
        for col, v in expect.items():
            if not np.allclose(grp[col].to_numpy(dtype=np.float64), v, rtol=1e-5, atol=1e-5):
                raise UserError(f"{csv} and examples.npz disagree on {col} of path "
                                f"{p.path_id} (edited or corrupt file?)")
    return paths


def build_report(run_dir: str | Path) -> pd.DataFrame:
    """Tables, figures and the run report of one run from its records; returns the
    summary frame.

    Writes ``tables/``, ``plots/paths.{png,pdf}``, ``plots/plane.{png,pdf}`` (when the
    run folder holds ``plane.npz``) and ``report.{md,html}``
    (:mod:`robustpath.report.html`). Everything is computed before anything is
    written, so a corrupt input leaves the earlier tables untouched.
    """
    from robustpath.report.html import write_run_report
    from robustpath.report.style import attack_label

    run_dir = Path(run_dir)
    cfg = _config(run_dir)
    paths = check_records(run_dir)  # every column checked, not only robust_acc
    boot = int(cfg.get("bootstrap", 1000))
    atk = attack_label(cfg.get("attack"), cfg.get("norm"), cfg.get("eps"), cfg.get("eval_steps"))
    title = f"{cfg.get('dataset', '?')} / {cfg.get('arch', '?')}, {atk}"
    caption = title.replace("L∞", "Linf").replace("ε", "eps")  # LaTeX captions stay ASCII
    from robustpath.strong.files import read as read_strong
    from robustpath.strong.files import refresh as refresh_strong

    refresh_strong(run_dir, cfg)  # exact intervals + McNemar counts from the stored arrays
    summary = write_tables(run_dir / "tables", paths, bootstrap=boot, caption=caption,
                           strong=read_strong(run_dir))
    from robustpath.stats.paired import (
        write_paired,  # tables/paired.{md,csv}: aligned vs unaligned, curve vs line
    )

    write_paired(run_dir, paths, bootstrap=boot)
    plot_paths(paths, run_dir / "plots" / "paths", title=title, bootstrap=boot)
    if (run_dir / "plane.npz").is_file():
        from robustpath.paths.plane import load_planes, plot_planes

        planes = load_planes(run_dir / "plane.npz")
        plot_planes({ALIGN_LABEL.get(m, m): p for m, p in planes.items()},
                    run_dir / "plots" / "plane",
                    title=f"{cfg.get('dataset', '?')} / {cfg.get('arch', '?')}: "
                    + ("loss and robust error" if all("robust_err" in p for p in planes.values())
                       else "loss") + " on the planes of the Bezier curves (first seed pair)")
    write_run_report(run_dir, summary, cfg)
    from robustpath.report import summary_json
    from robustpath.report.html import _json

    summary_json.write(run_dir, summary, cfg, paths, _json(run_dir / "provenance.json"))
    return summary


def read_summary(run_dir: str | Path) -> pd.DataFrame:
    """The summary frame of one run computed from its records, writing nothing (what
    ``report A B`` shows for runs it must leave untouched)."""
    from robustpath.report.tables import per_path_frame, summary_frame
    from robustpath.strong.files import read as read_strong

    run_dir = Path(run_dir)
    cfg = _config(run_dir)
    paths = check_records(run_dir)
    return summary_frame(per_path_frame(paths, int(cfg.get("bootstrap", 1000)),
                                        read_strong(run_dir)))


def format_summary(summary: pd.DataFrame, cfg: dict | None = None, width: int = 100) -> str:
    """A compact plain-text table for the terminal, at most ``width`` characters wide:
    the key columns of :data:`robustpath.report.metric_registry.CONSOLE_CANDIDATES` that fit,
    in that order, with the precision of ``tables/summary.md`` (accuracies in % to
    0.1, losses to 0.001); every column is in ``tables/summary.{md,csv}``."""
    from robustpath.report.metric_registry import CONSOLE_CANDIDATES, get
    from robustpath.report.tables import _fmt

    names = [ALIGN_LABEL.get(r["align"], r["align"]) + f" {r['curve']}"
             for _, r in summary.iterrows()]
    first = max([4] + [len(n) for n in names]) + 1
    cols, widths, used = [], [], first
    for name in CONSOLE_CANDIDATES:
        if name not in summary.columns:
            continue
        m = get(name)
        head = m.short + (" %" if m.percent else "")
        cells = [_fmt(r, name, m.percent, latex=False) for _, r in summary.iterrows()]
        w = max([len(head)] + [len(c) for c in cells]) + 2
        if used + w > width:
            break  # a less important column never replaces a more important one
        cols.append((head, cells))
        widths.append(w)
        used += w
    head = f"{'path':<{first}}" + "".join(f"{h:>{w}}" for (h, _), w in zip(cols, widths))
    lines = [head, "-" * len(head)]
    for i, n in enumerate(names):
        lines.append(f"{n:<{first}}" + "".join(f"{c[i]:>{w}}" for (_, c), w in zip(cols, widths)))
    if cfg:  # which run, and eps as the paper writes it
        from robustpath.report.style import attack_label

        atk = attack_label(cfg.get("attack"), cfg.get("norm"), cfg.get("eps"),
                           cfg.get("eval_steps"))
        lines.insert(0, f"{cfg.get('dataset', '?')} / {cfg.get('arch', '?')}, {atk}")
    pairs = int(summary["pairs"].max()) if len(summary) else 0
    lines.append("accuracies in %, losses in nats; " + (
        "value [95% bootstrap CI over test examples; AA columns: exact CI]" if pairs <= 1 else
        f"mean ± std over {pairs} seed pairs"))
    lines.append("all columns and their definitions: tables/summary.md, report.html")
    return "\n".join(lines)


def _report_run(run_dir: Path) -> pd.DataFrame:
    """Rebuild one run's tables under its run lock, after finishing an interrupted
    commit and checking the folder against its manifest (:mod:`robustpath.io.runfolder`)."""
    from robustpath.io import runfolder
    from robustpath.io.lock import run_lock

    with run_lock(run_dir):
        runfolder.recover(run_dir)
        runfolder.verify(run_dir)
        return build_report(run_dir)


def _read_run(run_dir: Path) -> pd.DataFrame:
    """One run's summary for a comparison, checked against its manifest, writing
    nothing (an interrupted commit is reported, not finished)."""
    from robustpath.io import runfolder

    if (run_dir / runfolder.STAGING / runfolder.MANIFEST).is_file():
        raise UserError(f"{run_dir} holds an interrupted commit; run python -m robustpath.report "
                        f"{run_dir} alone first (a comparison leaves its inputs untouched)")
    runfolder.verify(run_dir)
    return read_summary(run_dir)
