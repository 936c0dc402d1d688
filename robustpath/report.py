"""``python -m robustpath.report RUN [RUN ...]``: rebuild tables and plots from the
stored per-t records of one or more runs, and compare several runs in one table.

For each run folder: reads ``records.csv`` + ``examples.npz`` (and ``config.json``
for the bootstrap count), writes ``tables/summary.{csv,md,tex}``, ``tables/per_path.csv``
and ``plots/paths.{png,pdf}``. Tables are byte-identical to the ones the benchmark
wrote. With several runs, also writes a comparison table (rows: dataset x
architecture; columns: unaligned vs aligned robust / clean minimum accuracy and
robust loss barrier) to ``--compare-out`` (default ``results/comparison``).
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
from .tables import ALIGN_LABEL, write_tables


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


@cli_main
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m robustpath.report", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="run folders (each with records.csv and examples.npz)")
    p.add_argument("--compare-out", default="results/comparison",
                   help="where the cross-run comparison table goes (with several runs)")
    args = p.parse_args(argv)
    run_dirs = [Path(r) for r in args.runs]
    for rd in run_dirs:
        if not rd.is_dir():
            raise UserError(f"run folder {rd} not found")
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
