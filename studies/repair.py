"""Study: REPAIR (Jordan et al. 2022) and REPAIR under attack vs BatchNorm reset along the
paths of the embedded default (issue 19, part 1).

Question: on robust ``cnn-small`` endpoints on Fashion-MNIST (the committed default run,
seed pair 0,1), how do the robust-accuracy barrier, the minimum robust and clean accuracy
and the robust-loss barrier of the line and the Bezier curve, unaligned and aligned,
change when every point is renormalised by REPAIR (clean or PGD statistics) instead of
re-estimating BatchNorm statistics (``bn-reset``, on PGD inputs in the quick preset), or
not at all (``none``)?

Each arm is ``robustpath.bench.run`` with ``--renorm X --seeds 0,1 --no-strong
--plane-grid 0`` on a copy of the committed run's ``ckpt/`` (endpoints, alignment and
curves come from its caches; ``bn-reset`` evaluations too), so only the path evaluation
of the REPAIR arms is computed. Measuring data for every renormalisation: the same 2
training batches of 128 (``--bn-batches``); REPAIR's adversarial inputs: the training
PGD (5 steps, eps 0.1, seed 1).

``python -m studies.repair`` writes ``studies/results/repair/`` (``repair.csv``,
``repair.md``, ``robust_acc.png``, ``command.txt``). ``--arch mlp --source ''`` runs the
same arms on a network without BatchNorm from scratch (the first arm trains the
endpoints, the others copy its caches; there ``bn-reset`` is no renormalisation at all):
``studies/results/repair-mlp/``.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from robustpath.bench import run
from robustpath.config import MAX_BOOTSTRAP, from_preset
from robustpath.errors import UserError, cli_main
from robustpath.io.records import read
from robustpath.io.store import atomic_write_bytes, atomic_write_text
from robustpath.paths.repair import RENORMS
from robustpath.stats.barrier import path_metrics

ROOT = Path(__file__).resolve().parents[1]
METRICS = [("robust_acc_barrier", "robust acc barrier", True),
           ("robust_acc_min", "min robust acc", True),
           ("clean_acc_min", "min clean acc", True),
           ("robust_loss_barrier", "robust loss barrier", False),
           ("robust_acc_ends", "robust acc at ends", True)]


def arm(renorm: str, source: Path | None, work: Path, progress: bool, arch: str,
        paths: list[str]) -> tuple[list, float]:
    """Run the bench for one ``--renorm`` on a copy of ``source``'s caches (None: from
    scratch, training the endpoints)."""
    run_dir = work / renorm
    if source is not None and not (run_dir / "ckpt").is_dir():
        run_dir.mkdir(parents=True, exist_ok=True)
        shutil.copytree(source / "ckpt", run_dir / "ckpt")
        shutil.copy(source / "config.json", run_dir / "config.json")
    cfg = from_preset("quick", seeds=[0, 1], strong=False, plane_grid=0, renorm=renorm,
                      arch=arch, paths=paths)
    cfg.out = str(run_dir)
    start = time.perf_counter()
    run(cfg, progress=progress, overwrite=True, command=f"studies.repair arm {renorm}")
    return read(run_dir), time.perf_counter() - start


def table(records: dict[str, list], bootstrap: int) -> pd.DataFrame:
    rows = []
    for renorm, recs in records.items():
        for r in recs:
            m = path_metrics(r.result, bootstrap=bootstrap)
            row = {"renorm": renorm, "align": r.align, "curve": r.curve}
            for key, _, _ in METRICS:
                row[key], row[f"{key}_lo"], row[f"{key}_hi"] = (m[key]["value"], m[key]["lo"],
                                                                m[key]["hi"])
            rows.append(row)
    return pd.DataFrame(rows)


def markdown(df: pd.DataFrame) -> str:
    head = "| renorm | align | curve | " + " | ".join(label for _, label, _ in METRICS) + " |"
    lines = [head, "|" + "---|" * (3 + len(METRICS))]
    for _, r in df.iterrows():
        cells = []
        for key, _, pct in METRICS:
            f = (lambda v: f"{100 * v:.1f}") if pct else (lambda v: f"{v:.3f}")
            cells.append(f"{f(r[key])} [{f(r[key + '_lo'])}, {f(r[key + '_hi'])}]")
        lines.append(f"| {r['renorm']} | {r['align']} | {r['curve']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def figure(records: dict[str, list], path: Path) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [(r.align, r.curve) for r in next(iter(records.values()))]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.0), sharey=True)
    for ax, (align, curve) in zip(np.atleast_1d(axes), keys):
        for renorm, recs in records.items():
            r = next(x for x in recs if (x.align, x.curve) == (align, curve)).result
            acc = r.per_t()["robust_acc"]
            ax.plot(r.ts, 100 * acc, marker=".", label=RENORMS.get(renorm).label)
        ax.set_title(f"{curve}, align {align}", fontsize=9)
        ax.set_xlabel("t")
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel("robust accuracy (PGD-10, %)")
    np.atleast_1d(axes)[0].legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=130)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


@cli_main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m studies.repair", description=__doc__.split("\n\n")[0])
    p.add_argument("--source", default=str(ROOT / "results/fashion-mnist-cnn-small-quick"),
                   help="committed run whose ckpt/ is reused (seed pair 0,1); '' = train "
                   "from scratch in the first arm, whose caches the others copy")
    p.add_argument("--arch", default="cnn-small", help="architecture (the source's)")
    p.add_argument("--paths", default="line,bezier", help="path families")
    p.add_argument("--work", default="/tmp/robustpath-repair-study",
                   help="scratch folder for the per-arm run folders (copies of ckpt/)")
    p.add_argument("--out", default=str(ROOT / "studies/results/repair"))
    p.add_argument("--renorms", default="bn-reset,repair,repair-adv,none",
                   help=f"arms, comma-separated from {', '.join(RENORMS.names())}")
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--progress", action="store_true")
    args = p.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    work, out = Path(args.work), Path(args.out)
    source = Path(args.source) if args.source else None
    renorms = args.renorms.split(",")
    for renorm in renorms:  # every bad input refused before the first arm's work
        RENORMS.get(renorm)
        from_preset("quick", seeds=[0, 1], renorm=renorm, arch=args.arch,
                    paths=args.paths.split(",")).validate()
    if source is not None and not (source / "ckpt").is_dir():
        raise UserError(f"--source {source} holds no run (no ckpt/); '' trains from scratch")
    if not 1 <= args.bootstrap <= MAX_BOOTSTRAP:
        raise UserError(f"--bootstrap must be in 1..{MAX_BOOTSTRAP}, got {args.bootstrap}")
    records, seconds = {}, {}
    for renorm in renorms:
        records[renorm], seconds[renorm] = arm(renorm, source, work, args.progress, args.arch,
                                               args.paths.split(","))
        source = source or work / renorm
        print(f"{renorm}: {seconds[renorm]:.0f} s", flush=True)
    df = table(records, args.bootstrap)
    atomic_write_text(out / "repair.csv", df.to_csv(index=False, float_format="%.6f"))
    timing = "\n".join(f"- `{k}`: {v:.0f} s (one thread)" for k, v in seconds.items())
    atomic_write_text(out / "repair.md", (
        f"# REPAIR vs BatchNorm reset, {args.arch} on Fashion-MNIST, quick preset "
        "(seed pair 0,1)\n\n"
        "Per path: value [95% bootstrap CI over the 1,000 test examples]; accuracies in %. "
        "Robust: PGD-10, eps 0.1. Barriers (robustpath.stats.barrier, grid points): "
        "max_t of the linear interpolation of the endpoints' value minus the path's "
        "(accuracy) or the path's minus it (loss).\n\n" + markdown(df) + "\nWall time per arm (cached arms ~0):\n\n"
        + timing + "\n"))
    figure(records, out / "robust_acc.png")
    atomic_write_text(out / "command.txt", " ".join(
        ["OMP_NUM_THREADS=1 python -m studies.repair", *map(shlex.quote, argv)]) + "\n")
    print(markdown(df))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
