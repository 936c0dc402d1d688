"""``python -m robustpath.sweep SWEEP.toml``: run a grid of benchmark cells, locally or on Ray.

Each cell (dataset x architecture x ... x seed pair) is one ``robustpath.bench`` run;
its stages (endpoints, alignment, curves, evaluation) are tasks wired by their
inputs, so a shared endpoint is trained once, and stage outputs are cached under
``<out>/ckpt/``: a finished cell is never redone and a rerun after a crash continues.
At the end, one table across cells (mean ± std over seed pairs, aligned vs
unaligned) goes to ``<out>/aggregate/``; ``python -m robustpath.report <out>`` rebuilds it.

Examples: ``python -m robustpath.sweep sweeps/quick.toml`` (local, in-process);
``python -m robustpath.sweep sweeps/paper.toml --executor ray --address auto``.
Exit code 0 when every cell finished, 1 when some failed (listed), 2 for bad input.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from robustpath.cli import ArgumentParser, RawHelpFormatter, add_run_options
from robustpath.errors import UserError, cli_main
from robustpath.sweep.driver import run_sweep
from robustpath.sweep.spec import load_sweep


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m robustpath.sweep", description=__doc__.split("\n\n")[0],
                       epilog=__doc__.split("\n\n", 1)[1],
                       formatter_class=RawHelpFormatter)
    a = p.add_argument
    a("sweep", help="sweep file (TOML): grid axes, preset, overrides, resources; "
      "see sweeps/quick.toml and robustpath/sweep/spec.py")
    a("--executor", default="local", metavar="{local,ray}",
      help="local: in-process, one stage at a time, no Ray (the default and the reference); "
      "ray: every stage a Ray task (pip install 'robustpath[ray]')")
    a("--address", default=None, metavar="auto|HOST:PORT",
      help="Ray cluster to join: auto (the one `ray start` made on this machine) or HOST:PORT; "
      "omitted: start a local Ray instance (--executor ray only)")
    a("--max-parallel", type=int, default=0, metavar="N",
      help="at most N cells submitted at a time with --executor ray (0: all at once; Ray "
      "then runs as many tasks as the cluster's CPUs/GPUs allow)")
    a("--workers", type=int, default=1, metavar="N",
      help="--executor local: N worker processes run independent tasks at once (default 1: "
      "one after the other in process); each task has its stage's [resources] cpus threads")
    a("--out", default=None, help="sweep folder (default runs/<name from the sweep file>, git-ignored; "
      "committed sweeps use an explicit --out results/...); "
      "on a cluster, a path every node shares")
    a("--overwrite", action="store_true",
      help="allow cells of --out to hold a different configuration (they are redone)")
    a("--dry-run", action="store_true", help="print the output folder, the cells with their "
      "resolved settings and their tasks; run nothing")
    a("--no-progress", action="store_true", help="hide progress bars (cell lines still print)")
    add_run_options(p, config=False)  # the sweep file is its configuration
    return p


@cli_main
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    if args.max_parallel < 0:
        raise UserError(f"--max-parallel must be >= 0, got {args.max_parallel}")
    if args.address and args.executor != "ray":
        raise UserError("--address needs --executor ray")
    sweep = load_sweep(args.sweep)
    out = Path(args.out) if args.out else Path("runs") / sweep.name
    command = "python -m robustpath.sweep " + " ".join(shlex.quote(a) for a in argv)
    res = run_sweep(sweep, out, executor=args.executor, address=args.address,
                    max_parallel=args.max_parallel, workers=args.workers,
                    progress=not args.no_progress,
                    overwrite=args.overwrite, command=command, dry_run=args.dry_run)
    if args.dry_run:
        return 0
    ran = sum(1 for t in res.tasks if "error" not in t)
    print(f"\n{len(res.done)}/{len(sweep.cells)} cells done ({len(res.skipped)} from an earlier "
          f"run), {len(res.failed)} failed; {ran} tasks ran in {res.seconds:.0f} s")
    table = out / "aggregate" / "summary.md"
    if table.is_file():
        print(table.read_text().rstrip())
        print(f"\ntables: {out / 'aggregate'}/summary.{{csv,md,tex}}; per cell: {out / 'cells'}/")
    for cell, error in res.failed.items():
        print(f"FAILED {cell}: {error}", file=sys.stderr)
    return 0 if res.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
