"""Study: the ablations a reviewer asks for (issue 16, part 4), on the embedded default.

Setting: the committed default run (Fashion-MNIST, ``cnn-small``, ``--preset quick``),
seed pair (0, 1), strong stage and loss plane off. Every arm is one
``robustpath.bench`` run (in process, :func:`robustpath.bench.run`) on a *copy* of the
committed run folder (``--base``, with its git-ignored ``ckpt/``), so cached endpoints,
alignments, curves and evaluated points are reused and only what an arm changes is
recomputed. Ablations (``--which``):

* ``t-points`` - 11 t + 2 refinement rounds (the default) vs 65 t without refinement
  (Tatro et al.'s grid): does the finer grid find a lower minimum robust accuracy?
  The difference of the minima has a paired bootstrap CI over test examples.
* ``bn`` - BatchNorm statistics recomputed at each t on clean vs adversarial (PGD-5)
  inputs, from 1, 2, 10, 40 training batches of 128 (``cnn-small`` has BatchNorm
  after both convolutions). Per path: minimum robust / clean accuracy.
* ``align`` - no alignment, activation matching, weight matching: minimum robust /
  clean accuracy of line and Bezier curve, and the alignment's own time.
* ``curve-epochs`` - the Bezier curves (unaligned and aligned) fitted for 4, 8, 16,
  32 epochs; a budget is extended while the final-epoch training robust loss still
  falls by >= ``--tol`` (2 %) relative to the previous budget. Is the unaligned
  curve's dip a budget artefact?

Outputs per ablation in ``<out>/<name>/``: ``table.csv``, ``table.md``, ``figure.png``
(where useful) and ``command.txt`` (this study's command and the bench command of
every arm). Run with ``OMP_NUM_THREADS=1``; e.g.
``OMP_NUM_THREADS=1 python -m studies.ablations --which t-points``.
"""

from __future__ import annotations

import argparse
import io
import json
import shlex
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from robustpath import bench
from robustpath.errors import UserError, cli_main
from robustpath.io import records as records_mod
from robustpath.io.store import atomic_write_bytes, atomic_write_text
from robustpath.stats.barrier import path_metrics

#: flags of every arm: one seed pair, no strong stage, no plane (CPU minutes)
BASE_ARGV = ["--seeds", "0,1", "--no-strong", "--plane-grid", "0"]
WHICH = ("t-points", "bn", "align", "curve-epochs")
BN_BATCHES = (1, 2, 10, 40)
EPOCHS = (4, 8, 16, 32)


@dataclass
class Arm:
    """One bench run of an ablation: ``name`` (its folder suffix), the bench flags it
    adds to :data:`BASE_ARGV`, and the columns that describe it in the table."""

    name: str
    argv: list[str]
    meta: dict = field(default_factory=dict)


# ---------------------------------------------------------------- running arms
def arm_folder(work: Path, ablation: str, arm: Arm) -> Path:
    return work / f"abl-{ablation}-{arm.name}"


def bench_argv(arm: Arm, folder: Path) -> list[str]:
    return [*BASE_ARGV, *arm.argv, "--out", str(folder)]


def run_arm(ablation: str, arm: Arm, base: Path, work: Path, progress: bool) -> Path:
    """Run ``arm`` on a copy of ``base`` (made once, atomically); returns the run folder."""
    folder = arm_folder(work, ablation, arm)
    if not folder.exists():
        if not (base / "ckpt").is_dir():
            raise UserError(f"{base}/ckpt not found: the base run's caches are needed "
                            "(run the default benchmark first)")
        part = folder.with_name(folder.name + ".part")
        shutil.rmtree(part, ignore_errors=True)
        shutil.copytree(base, part)
        part.rename(folder)
    argv = bench_argv(arm, folder)
    cfg = bench.config_from_args(bench.parser().parse_args(argv))
    t0 = time.perf_counter()
    bench.run(cfg, progress=progress, overwrite=True,
              command="python -m robustpath.bench " + shlex.join(argv))
    print(f"[{ablation}] arm {arm.name}: {time.perf_counter() - t0:.0f} s", flush=True)
    return folder


# ---------------------------------------------------------------- tables
def path_rows(run_dir: Path, bootstrap: int = 1000) -> dict[str, dict]:
    """Barrier metrics of every path of a run, keyed ``"<align>/<curve>"`` (first seed
    pair only), accuracies in %: ``robust_ends`` (mean of t = 0 and 1), ``clean_min``, ``clean_avg``, ``robust_min`` (grid),
    ``robust_min_all`` (grid + refinement points) with ``_lo``/``_hi`` CIs,
    ``t_min_all``, ``robust_avg``, ``robust_loss_barrier``, ``points``."""
    out = {}
    for rec in records_mod.read(run_dir):
        key = f"{rec.align}/{rec.curve}"
        if key in out:
            continue
        m = path_metrics(rec.result, bootstrap=bootstrap)
        row = {"align": rec.align, "curve": rec.curve, "points": len(rec.result.ts)}
        for name, src, scale in (("robust_ends", "robust_acc_ends", 100),
                                 ("clean_min", "clean_acc_min", 100),
                                 ("clean_avg", "clean_acc_avg", 100),
                                 ("robust_min", "robust_acc_min", 100),
                                 ("robust_min_all", "robust_acc_min_refined", 100),
                                 ("robust_avg", "robust_acc_avg", 100),
                                 ("robust_loss_barrier", "robust_loss_barrier", 1)):
            row[name] = scale * m[src]["value"]
            if name in ("robust_min_all", "robust_loss_barrier"):
                row[f"{name}_lo"] = scale * m[src]["lo"]
                row[f"{name}_hi"] = scale * m[src]["hi"]
        row["t_min_all"] = m["robust_t_min_refined"]["value"]
        out[key] = row | {"result": rec.result}
    return out


def paired_min_diff(a, b, bootstrap: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """min_t robust accuracy of ``b`` minus that of ``a`` (all points of each, %), with a
    95 % bootstrap CI over test examples resampled jointly (both paths are evaluated
    on the same examples)."""
    ca, cb = a.robust_correct.astype(np.float64), b.robust_correct.astype(np.float64)
    if ca.shape[1] != cb.shape[1]:
        raise UserError("paired difference needs the same test examples in both results")
    n = ca.shape[1]
    w = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=bootstrap) / n
    diff = (w @ cb.T).min(1) - (w @ ca.T).min(1)
    lo, hi = np.quantile(diff, [0.025, 0.975])
    return 100 * (cb.mean(1).min() - ca.mean(1).min()), 100 * lo, 100 * hi


def _strip(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "result"}


def table_t_points(runs: list[tuple[Arm, Path]], bootstrap: int = 1000) -> pd.DataFrame:
    """One row per path: 11-t grid minimum, 11-t + refinement minimum, 65-t minimum and
    the paired difference (65 t) - (11 t + refinement). ``runs``: arms ``t11``, ``t65``."""
    by = {arm.name: path_rows(folder, bootstrap) for arm, folder in runs}
    rows = []
    for key, r11 in by["t11"].items():
        r65 = by["t65"][key]
        d, lo, hi = paired_min_diff(r11["result"], r65["result"], bootstrap)
        rows.append({"align": r11["align"], "curve": r11["curve"],
                     "min_11": r11["robust_min"], "min_11_refined": r11["robust_min_all"],
                     "t_11_refined": r11["t_min_all"], "points_11": r11["points"],
                     "min_65": r65["robust_min_all"], "t_65": r65["t_min_all"],
                     "points_65": r65["points"], "diff_65_minus_11r": d,
                     "diff_lo": lo, "diff_hi": hi})
    return pd.DataFrame(rows)


def table_arms(runs: list[tuple[Arm, Path]], bootstrap: int = 1000) -> pd.DataFrame:
    """One row per arm x path: the arm's columns, then the path's metrics."""
    rows = []
    for arm, folder in runs:
        for row in path_rows(folder, bootstrap).values():
            rows.append({**arm.meta, **_strip(row)})
    return pd.DataFrame(rows)


def table_align(runs: list[tuple[Arm, Path]], bootstrap: int = 1000) -> pd.DataFrame:
    """:func:`table_arms` plus each alignment's own time (``alignment.json``)."""
    frame = table_arms(runs, bootstrap)
    secs = {}
    for _, folder in runs:
        rep = json.loads((folder / "alignment.json").read_text())
        for k, v in rep.items():
            secs.setdefault(k.split("-s")[0], v.get("seconds", 0.0))
    frame["align_seconds"] = [secs.get(a, float("nan")) for a in frame["align"]]
    return frame


def curve_train_loss(folder: Path, align: str, kind: str = "bezier") -> tuple[float, float]:
    """(final-epoch training robust loss, seconds per epoch) of a run's fitted curve."""
    rep = json.loads((folder / "curves.json").read_text())
    hits = [v for k, v in rep.items() if k.startswith(f"{align}-{kind}-s")]
    if not hits:
        raise UserError(f"{folder}/curves.json has no {align} {kind} curve")
    return float(hits[0]["train_loss"]), float(hits[0].get("seconds_per_epoch", float("nan")))


def table_curve_epochs(runs: list[tuple[Arm, Path]], bootstrap: int = 1000) -> pd.DataFrame:
    """:func:`table_arms` plus the curve's final training loss, its relative change
    against the previous budget of the same alignment, and seconds per epoch."""
    frame = table_arms(runs, bootstrap)
    frame = frame[frame["curve"] != "line"].reset_index(drop=True)  # lines are not fitted
    folders = {arm.meta["curve_epochs"]: folder for arm, folder in runs}
    loss, spe = [], []
    for e, a, c in zip(frame["curve_epochs"], frame["align"], frame["curve"]):
        lo, s = curve_train_loss(folders[e], a, c)
        loss.append(lo)
        spe.append(s)
    frame["train_loss"], frame["seconds_per_epoch"] = loss, spe
    frame = frame.sort_values(["align", "curve_epochs"], kind="stable").reset_index(drop=True)
    prev = frame.groupby(["align", "curve"])["train_loss"].shift(1)
    frame["train_loss_rel_change"] = (frame["train_loss"] - prev) / prev
    return frame


# ---------------------------------------------------------------- arms per ablation
def t_points_arms() -> list[Arm]:
    return [Arm("t11", [], {"grid": "11 t + 2 refinement rounds"}),
            Arm("t65", ["--t-points", "65", "--refine-rounds", "0"], {"grid": "65 t"})]


def bn_arms() -> list[Arm]:
    # grid only (no refinement): the default (adv, 2) arm is then fully cached, and the
    # arms compare the same 11 t
    # cheapest first (adversarial BN inputs cost a PGD-5 per batch), so that an
    # interrupted study has its most informative arms
    order = [("adv", 2), ("adv", 1), ("clean", 2), ("clean", 1), ("clean", 10), ("adv", 10),
             ("clean", 40), ("adv", 40)]
    return [Arm(f"{i}-{n}", ["--bn-inputs", i, "--bn-batches", str(n), "--refine-rounds", "0"],
                {"bn_inputs": i, "bn_batches": n}) for i, n in order]


def align_arms() -> list[Arm]:
    return [Arm("all", ["--align", "none,activation,weight"], {})]


def epochs_arm(e: int, aligns: list[str]) -> Arm:
    argv = ["--paths", "bezier", "--curve-epochs", str(e)]
    if aligns != ["none", "activation"]:
        argv += ["--align", ",".join(aligns)]
    return Arm(str(e), argv, {"curve_epochs": e})


def still_falling(active: list[str], last: dict, losses: dict, tol: float) -> list[str]:
    """The alignments of ``active`` to fit at the next budget: those without a previous
    budget, or whose training loss changed by >= ``tol`` relative to it."""
    return [a for a in active if a not in last or abs(losses[a] - last[a]) / last[a] >= tol]


def run_curve_epochs(base, work, progress, tol: float, budgets, done=lambda runs: None,
                     caps: dict[str, int] | None = None) -> list[tuple[Arm, Path]]:
    """Fit the budgets in order; an alignment drops out once its final training loss
    changed < ``tol`` (relative) from the previous budget, or past its cap in ``caps``
    (alignment -> most epochs: CPU time). ``done(runs)`` after each budget."""
    active, last, runs, caps = ["none", "activation"], {}, [], caps or {}
    for e in budgets:
        active = [a for a in active if e <= caps.get(a, e)]
        if not active:
            break
        arm = epochs_arm(e, list(active))
        folder = run_arm("curve-epochs", arm, base, work, progress)
        runs.append((arm, folder))
        losses = {a: curve_train_loss(folder, a)[0] for a in active}
        active = still_falling(active, last, losses, tol)
        last.update(losses)
        done(runs)
        print(f"[curve-epochs] {e} epochs: train loss {last}; still extending {active}",
              flush=True)
    return runs


# ---------------------------------------------------------------- outputs
def _pct(v, lo=None, hi=None) -> str:
    return f"{v:.1f}" if lo is None else f"{v:.1f} [{lo:.1f}, {hi:.1f}]"


def _num(col: str, v: float) -> str:
    if np.isnan(v):
        return ""
    if col.endswith("rel_change"):
        return f"{v:+.1%}"
    if "loss" in col:
        return f"{v:.4f}"
    if col.startswith("t_"):
        return f"{v:.3f}"
    if "seconds" in col:
        return f"{v:.2f}"
    return f"{v:.1f}"


def markdown(frame: pd.DataFrame, caption: str) -> str:
    """``frame`` as a Markdown table (CI columns folded into ``value [lo, hi]``)."""
    cols = [c for c in frame.columns if not c.endswith(("_lo", "_hi"))]
    lines = [caption, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in frame.iterrows():
        cells = []
        for c in cols:
            v = r[c]
            lo_key = "diff_lo" if c == "diff_65_minus_11r" else f"{c}_lo"
            hi_key = "diff_hi" if c == "diff_65_minus_11r" else f"{c}_hi"
            if lo_key in frame.columns:
                cells.append(_pct(v, r[lo_key], r[hi_key]) if "barrier" not in c
                             else f"{v:.3f} [{r[lo_key]:.3f}, {r[hi_key]:.3f}]")
            elif isinstance(v, float):
                cells.append(_num(c, v))
            else:
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def save_figure(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=200, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def figure(name: str, frame: pd.DataFrame, path: Path) -> None:
    """bn: min robust accuracy against BN batches; curve-epochs: min robust accuracy
    and training loss against epochs; t-points: none (the table says it)."""
    from robustpath.report.style import COLUMN, CURVE_STYLES, OKABE_ITO, paper_style

    ALIGN_COLORS = {"none": OKABE_ITO["vermillion"], "activation": OKABE_ITO["blue"],  # noqa: N806
                    "weight": OKABE_ITO["green"]}

    with paper_style() as plt:
        if name == "bn":
            fig, ax = plt.subplots(figsize=(COLUMN, 2.4))
            for (a, c, i), g in frame.groupby(["align", "curve", "bn_inputs"]):
                ax.plot(g["bn_batches"], g["robust_min_all"], color=ALIGN_COLORS.get(a),
                        ls=CURVE_STYLES.get(c, "-"), marker="o" if i == "adv" else "x",
                        label=f"{a}/{c}, {i}")
            ax.set_xscale("log")
            ax.set_xlabel("BN batches (of 128)")
            ax.set_ylabel("min robust acc. (%)")
            ax.legend(fontsize=5, ncol=2)
        elif name == "curve-epochs":
            fig, axes = plt.subplots(1, 2, figsize=(COLUMN * 2, 2.2))
            for a, g in frame.groupby("align"):
                axes[0].plot(g["curve_epochs"], g["robust_min_all"], marker="o",
                             color=ALIGN_COLORS.get(a), label=a)
                axes[0].fill_between(g["curve_epochs"], g["robust_min_all_lo"],
                                     g["robust_min_all_hi"], color=ALIGN_COLORS.get(a), alpha=0.2)
                axes[1].plot(g["curve_epochs"], g["train_loss"], marker="o",
                             color=ALIGN_COLORS.get(a), label=a)
            axes[0].axhline(frame["robust_ends"].mean(), color="#666666", ls=":", lw=0.8,
                            label="endpoints")
            for ax, lab in zip(axes, ("min robust acc. (%)", "final train robust loss")):
                ax.set_xscale("log", base=2)
                ax.set_xlabel("curve epochs")
                ax.set_ylabel(lab)
            axes[0].legend()
        else:
            return
        save_figure(fig, path)
        plt.close(fig)


CAPTIONS = {
    "t-points": "Minimum robust accuracy (%) along each path: 11-t grid, 11 t + 2 refinement "
                "rounds (4 extra t around the worst one), 65-t grid; difference 65 t minus "
                "11 t + refinement with a paired 95 % bootstrap CI over the 1,000 test examples.",
    "bn": "BatchNorm statistics recomputed at every t on clean or adversarial (PGD-5) "
          "inputs from n batches of 128 training images (the default: adv, 2), on the 11-t "
          "grid without refinement. Accuracies in %; robust_min_all: the grid minimum "
          "[95 % CI over test examples].",
    "align": "Alignment method vs path. Accuracies in %; align_seconds: the alignment's "
             "own wall time, measured when it was computed (activation matching in the "
             "base run, weight matching in this one; both on the shared, loaded CPU).",
    "curve-epochs": "Bezier curves fitted for more epochs (cosine schedule over each "
                    "budget). train_loss: final-epoch training robust loss (PGD-5); "
                    "rel_change against the previous budget; a budget is extended while "
                    "it changes >= 2 %.",
}
BUILDERS = {"t-points": table_t_points, "bn": table_arms, "align": table_align,
            "curve-epochs": table_curve_epochs}


def write_outputs(name: str, frame: pd.DataFrame, runs, out: Path, study_cmd: str,
                  seconds: float) -> None:
    d = out / name
    d.mkdir(parents=True, exist_ok=True)
    atomic_write_text(d / "table.csv", frame.to_csv(index=False, float_format="%.4f"))
    setup = (f"Setting: Fashion-MNIST, cnn-small, --preset quick, seeds (0, 1), PGD-10 "
             f"eps 0.1 on 1,000 test images, strong stage and plane off. This invocation: "
             f"{seconds / 60:.1f} min on a shared 2-core CPU, OMP_NUM_THREADS=1 (arms already "
             "in the caches take seconds; compute costs in studies/README.md).")
    atomic_write_text(d / "table.md", markdown(frame, f"# Ablation: {name}\n\n"
                                               f"{CAPTIONS[name]}\n\n{setup}\n\n"
                                               f"Command: `{study_cmd}`"))
    cmds = [study_cmd, "", "# bench run of each arm (on a copy of the base run folder):"]
    cmds += ["python -m robustpath.bench " + shlex.join(bench_argv(a, f)) for a, f in runs]
    atomic_write_text(d / "command.txt", "\n".join(cmds) + "\n")
    figure(name, frame, d / "figure.png")
    print(f"[{name}] wrote {d}/table.md\n{markdown(frame, '')}", flush=True)


# ---------------------------------------------------------------- CLI
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m studies.ablations",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--which", default="all", help=f"{', '.join(WHICH)} or all "
                   "(comma-separated; all runs the cheapest first)")
    p.add_argument("--out", default="studies/results/ablations")
    p.add_argument("--base", default="results/fashion-mnist-cnn-small-quick",
                   help="run folder whose ckpt/ caches every arm starts from")
    p.add_argument("--work", default="/tmp", help="where the arms' run-folder copies go")
    p.add_argument("--epochs", default=",".join(map(str, EPOCHS)),
                   help="curve-epochs budgets, increasing")
    p.add_argument("--tol", type=float, default=0.02,
                   help="curve-epochs: stop extending an alignment once its final training "
                   "loss changes less than this, relative")
    p.add_argument("--cap", default="", help="curve-epochs: ALIGN=E,... fits ALIGN for at "
                   "most E epochs whatever its loss does (CPU time), e.g. activation=16")
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--no-progress", action="store_true")
    return p


@cli_main
def main(argv: list[str] | None = None) -> int:
    import sys

    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    which = list(WHICH) if args.which == "all" else args.which.split(",")
    for w in which:
        if w not in WHICH:
            raise UserError(f"unknown ablation {w!r} (known: {', '.join(WHICH)}, all)")
    base, work, out = Path(args.base), Path(args.work), Path(args.out)
    progress = not args.no_progress
    arms = {"t-points": t_points_arms, "bn": bn_arms, "align": align_arms}
    for name in which:
        t0 = time.perf_counter()
        cmd = f"OMP_NUM_THREADS=1 python -m studies.ablations --which {name} --out {out}"
        if name == "curve-epochs" and args.cap:
            cmd += f" --cap {args.cap}"

        def done(runs, name=name, cmd=cmd, t0=t0):  # tables after every arm: a killed
            if name == "t-points" and len(runs) < 2:  # study keeps what it finished
                return
            write_outputs(name, BUILDERS[name](runs, args.bootstrap), runs, out, cmd,
                          time.perf_counter() - t0)

        if name == "curve-epochs":
            budgets = [int(e) for e in args.epochs.split(",")]
            caps = {k: int(v) for k, v in (c.split("=") for c in args.cap.split(",") if c)}
            run_curve_epochs(base, work, progress, args.tol, budgets, done, caps)
        else:
            runs = []
            for a in arms[name]():
                runs.append((a, run_arm(name, a, base, work, progress)))
                done(runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
