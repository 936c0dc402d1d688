"""``python -m benchmarks.rerun_check OLD_RUN NEW_RUN``: did a speed change move a result?

Compares the summary tables (``tables/summary.csv``) of two bench run folders, e.g.
the committed default run before an optimisation and its rerun after. For every
(alignment, path) row and every barrier metric, the new value must lie inside the
old value's 95% bootstrap confidence interval. Prints a Markdown table (old [CI],
new, inside?) and writes it to ``--out`` when given; exit code 1 when a value falls
outside, 2 on bad input.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from robustpath.cli import ArgumentParser
from robustpath.errors import UserError, cli_main
from robustpath.store import atomic_write_text

METRICS = ("clean_acc_min", "robust_acc_ends", "robust_acc_min", "robust_acc_avg",
           "clean_loss_barrier", "robust_loss_barrier", "robust_acc_barrier")


def _summary(run: Path) -> pd.DataFrame:
    path = Path(run) / "tables" / "summary.csv"
    if not path.is_file():
        raise UserError(f"{path} not found (is {run} a bench run folder?)")
    return pd.read_csv(path).set_index(["align", "curve"])


def compare(old_run: Path, new_run: Path) -> tuple[list[str], int]:
    """Markdown lines and the number of values outside the old CI."""
    old, new = _summary(old_run), _summary(new_run)
    rows = [r for r in old.index if r in new.index]
    if not rows:
        raise UserError("the two runs share no (alignment, path) row")
    lines = ["| alignment | path | metric | old [95% CI] | new | inside CI |", "|---|---|---|---|---|---|"]
    outside = 0
    for r in rows:
        for m in METRICS:
            o, lo, hi, n = old.at[r, m], old.at[r, f"{m}_lo"], old.at[r, f"{m}_hi"], new.at[r, m]
            ok = lo - 1e-9 <= n <= hi + 1e-9
            outside += not ok
            scale = 100 if "acc" in m else 1
            lines.append(f"| {r[0]} | {r[1]} | {m} | {scale * o:.3f} [{scale * lo:.3f}, "
                         f"{scale * hi:.3f}] | {scale * n:.3f} | {'yes' if ok else '**no**'} |")
    lines += ["", f"{outside} of {len(rows) * len(METRICS)} values outside the old 95% CI "
              "(accuracies in %)."]
    return lines, outside


@cli_main
def main(argv=None) -> int:
    p = ArgumentParser(prog="python -m benchmarks.rerun_check", description=__doc__.split("\n\n")[0])
    p.add_argument("old", help="run folder before the change")
    p.add_argument("new", help="run folder after the change")
    p.add_argument("--out", default=None, help="also write the table to this Markdown file")
    args = p.parse_args(argv)
    lines, outside = compare(Path(args.old), Path(args.new))
    text = "\n".join(lines) + "\n"
    if args.out:
        atomic_write_text(Path(args.out), text)
    sys.stdout.write(text)
    return 1 if outside else 0


if __name__ == "__main__":
    raise SystemExit(main())
