"""``python -m robustpath.report RUN [RUN ...]``: rebuild tables and plots from the
stored per-t records of one or more runs, and compare several runs in one table.

For each run folder: reads ``records.csv`` + ``examples.npz`` (and ``config.json``
for the bootstrap count, ``plane.npz`` for the plane figure), writes
``tables/summary.{csv,md,tex}``, ``tables/per_path.csv``, ``plots/*.{png,pdf}`` and
``report.{md,html}``; all byte-identical to what the benchmark wrote, also from a
copy of the run folder without ``ckpt/``. With several runs, also writes a comparison
(every path of every run with its CIs, and differences to the first run with paired
bootstrap CIs where the runs share test examples; :mod:`robustpath.report.compare`) to
``--compare-out`` (default ``results/comparison``).

A sweep folder (``python -m robustpath.sweep``; it holds ``sweep.json``) is reported
as a whole: each finished cell's tables and plots are rebuilt, then one table across
cells (:func:`robustpath.sweep.report.sweep_report`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from robustpath.cli import ArgumentParser, add_run_options
from robustpath.errors import UserError, cli_main
from robustpath.io.store import atomic_write_text
from robustpath.report.run import (
    _config,
    _read_run,
    _report_run,
    format_summary,
)


def comparison(run_dirs: list[Path], out_dir: Path) -> pd.DataFrame:
    """The comparison of several runs (:func:`robustpath.report.compare.compare_runs`): every
    path of every run with its CIs, and each run's differences to the first with
    paired bootstrap CIs where the runs share their test examples."""
    from robustpath.report.compare import compare_runs

    return compare_runs(run_dirs, out_dir, [_config(rd) for rd in run_dirs])


def parser() -> ArgumentParser:
    """The ``python -m robustpath.report`` command line."""
    p = ArgumentParser(prog="python -m robustpath.report", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="run folders (each with records.csv and examples.npz) "
                   "or sweep folders (with sweep.json: every cell, then the table across cells)")
    p.add_argument("--compare-out", default="results/comparison",
                   help="where the cross-run comparison table goes (with several runs)")
    p.add_argument("--against", default=None, metavar="OLD_RUN",
                   help="check every summary value of the (one) run against OLD_RUN's 95%% "
                   "intervals (did a change move a result?); exit code 1 when one falls outside")
    p.add_argument("--against-out", default=None, metavar="FILE",
                   help="with --against: also write the table to this Markdown file")
    add_run_options(p, config=False)
    return p


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    run_dirs = [Path(r) for r in args.runs]
    from robustpath.io.runfolder import is_run

    for rd in run_dirs:
        if not rd.is_dir():
            raise UserError(f"run folder {rd} not found")
        if not is_run(rd):  # before any lock or clean-up: such a folder is left as it is
            raise UserError(f"{rd} is not a run folder (no manifest.json, records.csv or "
                            "sweep.json); nothing was touched")
    if args.against_out is not None:
        if args.against is None:
            raise UserError("--against-out needs --against OLD_RUN")
        if not args.against_out.strip() or Path(args.against_out).is_dir():
            raise UserError(f"--against-out must name a file, got {args.against_out!r}")
    if args.against is not None:
        return _against(run_dirs, Path(args.against), args.against_out)
    from robustpath.sweep.report import is_sweep, sweep_report  # the sweep report reads run reports

    sweeps = [rd for rd in run_dirs if is_sweep(rd)]
    run_dirs = [rd for rd in run_dirs if not is_sweep(rd)]
    for sd in sweeps:
        long = sweep_report(sd)
        print(f"== sweep {sd}")
        if long is None:
            print("no finished cells yet")
        else:
            print((sd / "aggregate" / "summary.md").read_text().rstrip())
            print(f"report: {sd / 'aggregate' / 'report.html'}; tables: "
                  f"{sd / 'aggregate'}/summary.{{csv,md,tex}}, plots: {sd / 'aggregate' / 'plots'}/")
    # one run: its report is rebuilt; several: they are compared and left untouched
    summaries = [_report_run(rd) if len(run_dirs) == 1 else _read_run(rd) for rd in run_dirs]
    for rd, s in zip(run_dirs, summaries):
        print(f"== {rd}")
        print(format_summary(s, _config(rd)))
        if len(run_dirs) == 1:
            print(f"report: {rd / 'report.html'} (and report.md, summary.json)")
    if len(run_dirs) > 1:
        comparison(run_dirs, Path(args.compare_out))
        out = Path(args.compare_out)
        print(f"== settings that differ ({len(run_dirs)} runs)")
        print((out / "settings.md").read_text().rstrip())
        print(f"== comparison ({len(run_dirs)} runs)")
        print((out / "comparison.md").read_text().rstrip())
        if (out / "differences.md").read_text().strip():
            print("\n" + (out / "differences.md").read_text().rstrip())
        print(f"\ncomparison: {out}/comparison.{{csv,md,tex,html}}, {out}/differences.{{csv,md}}, "
              f"{out}/settings.md; the runs' own folders were not changed")
    return 0


def _against(run_dirs: list[Path], old: Path, out: str | None) -> int:
    from robustpath.report.against import compare

    if len(run_dirs) != 1:
        raise UserError("--against compares one run with OLD_RUN; name one run folder")
    if not old.is_dir():
        raise UserError(f"run folder {old} not found")
    lines, outside = compare(old, run_dirs[0])
    text = "\n".join(lines) + "\n"
    if out:
        atomic_write_text(Path(out), text)
    sys.stdout.write(text)
    return 1 if outside else 0


if __name__ == "__main__":
    raise SystemExit(main())
