"""``python -m studies.aa_path``: does PGD-10 find the same worst t, and rank the paths the
same way, as AutoAttack run at every t?

The strong stage by default attacks t = 0, 1 and the t where PGD (the evaluation
attack, PGD-10 on the quick preset) finds the lowest robust accuracy, so its AA barrier
is a lower bound on AutoAttack's. This study runs the bench on one seed pair with all
four default paths (unaligned / activation-aligned x line / Bezier) and
``--strong-at grid`` (standard AutoAttack and PGD-50 x 10 at every grid t, on
``--strong-examples`` test examples, 500 by default), then reports per path:

* the worst t by PGD-10 (grid + refinement, all the evaluation's test examples: the t
  the default strong stage attacks) and by AutoAttack (over every attacked t, on the
  strong subset), and whether they agree (PGD's t is one of AA's lowest points, ties
  included); also PGD-10's worst t on the same subset and points as AutoAttack (the
  like-for-like comparison);
* the largest PGD-10 - AA gap along the path and where, with its exact paired 95%
  interval and discordant counts (:func:`robustpath.stats.exact.paired_difference`);
* the rank correlation of PGD-10's and AA's robust accuracy along the path
  (``scipy.stats.spearmanr`` over the attacked t);

and across the four paths: the rank correlation (Spearman's rho and Kendall's tau,
``scipy.stats``) of the paths ordered by PGD-10's minimum and by AA's minimum, and by
the two accuracy barriers. With four paths a rank correlation is coarse (tau moves in
steps of 1/3); the per-path agreement of the worst t is the sharper answer.

Writes ``RESULTS.md`` and ``aa_path.csv`` into ``--out`` (the bench run folder is
``<out>/run``, its stage cache inside it, so an interrupted study resumes). Extra
bench flags follow ``--`` (e.g. ``-- --test-subset 200`` for a smaller try).
"""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from robustpath.errors import UserError, cli_main
from robustpath.io.store import atomic_write_text
from robustpath.stats.exact import discordant, paired_difference

OUT = Path(__file__).resolve().parent / "results" / "aa_path"


def _parser():
    from robustpath.cli import ArgumentParser

    p = ArgumentParser(prog="python -m studies.aa_path", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(OUT), help="folder for RESULTS.md, aa_path.csv and the run")
    p.add_argument("--seeds", default="0,1", help="the seed pair (two seeds)")
    p.add_argument("--strong-examples", type=int, default=500,
                   help="test examples AutoAttack attacks at every t (>= 500 for the study)")
    p.add_argument("--analyse-only", action="store_true",
                   help="only analyse an existing <out>/run (no bench run)")
    p.add_argument("bench_args", nargs="*", help="extra bench flags, after --")
    return p


def bench_argv(args, run: Path) -> list[str]:
    """The bench command of the study: quick preset, one pair, four paths, AA at every t."""
    return ["--preset", "quick", "--seeds", args.seeds, "--align", "none,activation",
            "--paths", "line,bezier", "--strong-at", "grid",
            "--strong-examples", str(args.strong_examples), "--plane-grid", "0",
            *args.bench_args, "--out", str(run)]


def analyse(run: Path) -> tuple[pd.DataFrame, dict]:
    """Per-path rows and the across-path rank correlations of a ``--strong-at grid`` run."""
    from robustpath.io.records import read as read_records
    from robustpath.paths.evaluate import min_point
    from robustpath.strong.files import read as read_strong

    strong = read_strong(run)
    if strong is None:
        raise UserError(f"{run} has no strong stage (strong_examples.npz)")
    records = {r.path_id: r for r in read_records(run)}
    rows = []
    for pid, d in strong.items():
        roles = sorted({k.split("/")[0] for k in d if k.endswith("/aa")},
                       key=lambda r: float(d[f"{r}/t"][0]))
        if not any(r.startswith("grid") for r in roles):
            raise UserError(f"{run}: path {pid} was not attacked at every grid t "
                            "(run the bench with --strong-at grid)")
        # every attacked point (grid, and PGD's worst t when refinement put it between)
        pts = sorted({float(d[f"{r}/t"][0]): r for r in roles}.items())
        ts = np.array([t for t, _ in pts])
        aa = np.stack([d[f"{r}/aa"] for _, r in pts]).astype(bool)        # [T, n]
        pgd = np.stack([d[f"{r}/pgd"] for _, r in pts]).astype(bool)
        acc_aa, acc_pgd = aa.mean(1), pgd.mean(1)
        ia, ip = int(np.argmin(acc_aa)), int(np.argmin(acc_pgd))
        t_pgd_full, acc_pgd_full = min_point(records[pid].result)
        aa_at_worst = float(np.mean(d["worst/aa"]))
        gap = acc_pgd - acc_aa
        ig = int(np.argmax(gap))
        lo, hi = paired_difference(pgd[ig], aa[ig])
        b, c = discordant(pgd[ig], aa[ig])
        lin = (1 - ts) * acc_aa[0] + ts * acc_aa[-1]
        lin_p = (1 - ts) * acc_pgd[0] + ts * acc_pgd[-1]
        rho = stats.spearmanr(acc_pgd, acc_aa).statistic if np.ptp(acc_pgd) and np.ptp(acc_aa) \
            else float("nan")
        rec = records[pid]
        rows.append({
            "path_id": pid, "align": rec.align, "curve": rec.curve, "n": aa.shape[1],
            "t_worst_pgd_eval": t_pgd_full, "pgd_min_eval": acc_pgd_full,
            "t_worst_pgd_subset": float(ts[ip]), "t_worst_aa": float(ts[ia]),
            # PGD's choice is one of AA's minimisers (ties count as the same)
            "same_worst_t": bool(aa_at_worst <= acc_aa[ia] + 1e-12),
            "same_worst_t_subset": bool(acc_aa[ip] <= acc_aa[ia] + 1e-12),
            "pgd_min": float(acc_pgd[ip]), "aa_min": float(acc_aa[ia]),
            "aa_at_pgd_worst": aa_at_worst,
            "pgd_acc_barrier": float((lin_p - acc_pgd).max()),
            "aa_acc_barrier": float((lin - acc_aa).max()),
            "max_gap": float(gap[ig]), "max_gap_t": float(ts[ig]), "max_gap_lo": lo,
            "max_gap_hi": hi, "max_gap_b": b, "max_gap_c": c, "spearman_along_path": rho})
    f = pd.DataFrame(rows)
    across = {}
    if len(f) >= 3:
        for what, x, y in (("minimum", "pgd_min", "aa_min"),
                           ("accuracy barrier", "pgd_acc_barrier", "aa_acc_barrier")):
            across[what] = {"spearman": float(stats.spearmanr(f[x], f[y]).statistic),
                            "kendall": float(stats.kendalltau(f[x], f[y]).statistic),
                            "same_order": bool(list(f[x].rank()) == list(f[y].rank()))}
    return f, across


def render(f: pd.DataFrame, across: dict, command: str, seconds: float | None) -> str:
    pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
    md = ["# AutoAttack along the whole path", "", __doc__.split("\n\n", 1)[1].split(
        "\n\nWrites")[0].strip(), "", f"- command: `{command}`"]
    if seconds is not None:
        md.append(f"- wall time: {seconds / 60:.1f} min")
    md += ["", "## Per path (accuracies in %)", "",
           "| path | n | worst t PGD-10 (eval) | worst t PGD-10 (subset, grid) | worst t AA "
           "| same t | PGD-10 min | AA min | AA at PGD's worst t | AA barrier (max over t) "
           "| PGD barrier | largest PGD - AA gap [exact 95%] (b/c) | at t "
           "| Spearman PGD vs AA along t |", "|" + "---|" * 14]
    for r in f.itertuples():
        md.append(f"| {r.path_id} | {r.n} | {r.t_worst_pgd_eval:.4f} | {r.t_worst_pgd_subset:.4f} "
                  f"| {r.t_worst_aa:.4f} | {'yes' if r.same_worst_t else 'no'} "
                  f"| {pct(r.pgd_min)} | {pct(r.aa_min)} | {pct(r.aa_at_pgd_worst)} "
                  f"| {pct(r.aa_acc_barrier)} | {pct(r.pgd_acc_barrier)} "
                  f"| {pct(r.max_gap)} [{pct(r.max_gap_lo)}, {pct(r.max_gap_hi)}] "
                  f"({r.max_gap_b}/{r.max_gap_c}) | {r.max_gap_t:.4f} "
                  f"| {r.spearman_along_path:.2f} |")
    if across:
        md += ["", "## Across paths", "", "| paths ordered by | Spearman rho | Kendall tau "
               "| same order |", "|---|---|---|---|"]
        for what, v in across.items():
            md.append(f"| {what} (PGD-10 vs AA) | {v['spearman']:.2f} | {v['kendall']:.2f} "
                      f"| {'yes' if v['same_order'] else 'no'} |")
    return "\n".join(md) + "\n"


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    seeds = [s for s in args.seeds.split(",") if s.strip()]
    if len(seeds) != 2:
        raise UserError(f"--seeds needs one pair (two seeds), got {args.seeds!r}")
    if args.strong_examples < 1:
        raise UserError(f"--strong-examples must be >= 1, got {args.strong_examples}")
    out = Path(args.out)
    run = out / "run"
    started = time.perf_counter()
    bargv = bench_argv(args, run)
    if not args.analyse_only:
        from robustpath import bench

        rc = bench.main(bargv)
        if rc:
            return rc
    f, across = analyse(run)
    command = "python -m studies.aa_path" + (" " + shlex.join(
        argv if argv is not None else sys.argv[1:])).rstrip()
    atomic_write_text(out / "aa_path.csv", f.to_csv(index=False, float_format="%.6f"))
    text = render(f, across, command,
                  None if args.analyse_only else time.perf_counter() - started)
    atomic_write_text(out / "RESULTS.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
