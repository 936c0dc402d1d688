"""``python -m benchmarks``: PGD speed against torchattacks, the cheap optimisations
before/after, and one PGD-training epoch against this machine's matmul peak.

Prints the tables and writes them, with the machine and the command, to
``benchmarks/RESULTS.md``. Every figure is a ratio of quantities measured in this
run. About 3-4 minutes on 2 idle CPU cores with the defaults; ``--quick`` is a smoke
test of a few seconds' work.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch

from robustpath.device import resolve
from robustpath.errors import UserError, cli_main
from robustpath.store import atomic_write_text

from . import efficiency, machine, optimisations, pgd_speed, subjects

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
GOAL_ES, GOAL_FULL = 1.3, 1.0


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise UserError(f"{message} (see --help)")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test, not a measurement")
    p.add_argument("--steps", type=int, default=10, help="PGD steps (default 10, step eps/4)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (default 3)")
    p.add_argument("--cnn-images", type=int, default=1000, help="images attacked, cnn-small")
    p.add_argument("--resnet-images", type=int, default=200, help="images attacked, resnet20")
    p.add_argument("--cnn-batch", type=int, default=500, help="attack batch, cnn-small")
    p.add_argument("--resnet-batch", type=int, default=100, help="attack batch, resnet20")
    p.add_argument("--cnn-train", type=int, default=4000, help="training images, cnn-small")
    p.add_argument("--resnet-train", type=int, default=4000, help="training images, resnet20")
    p.add_argument("--epoch-images", type=int, default=10000,
                   help="images in the timed PGD-training epoch (default 10000)")
    p.add_argument("--matmul-n", type=int, default=2048, help="matrix size for the peak (default 2048)")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto (default cpu)")
    p.add_argument("--data-root", default=None, help="folder with dataset files (default ./data)")
    p.add_argument("--skip", default="", help="comma-separated sections to skip: pgd,opt,epoch")
    p.add_argument("--out", default=str(RESULTS), help="Markdown file to write (default %(default)s)")
    return p


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _fmt_acc(a: float) -> str:
    return f"{100 * a:.1f}%"


def _pgd_table(results) -> list[str]:
    lines = [("| model / input | eps, steps, step | images (batch) | clean acc | torchattacks PGD "
             "| ours, full | ours, early stop | **full: ours / torchattacks** "
             "| **early stop: ours / torchattacks** |"),
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        cells = [f"{r.img_per_s[k]:.1f} img/s (robust {_fmt_acc(r.robust_acc[k])})"
                 for k in ("torchattacks", "ours (full)", "ours (early stop)")]
        lines.append(
            f"| {r.subject} | {r.eps:.4g}, {r.steps}, eps/4 | {r.n} ({r.batch}) | {_fmt_acc(r.clean_acc)} | "
            + " | ".join(cells)
            + f" | **{r.speedup_full:.2f}x** ({r.speedup_full_range[0]:.2f}-{r.speedup_full_range[1]:.2f}) "
            f"| **{r.speedup_es:.2f}x** ({r.speedup_es_range[0]:.2f}-{r.speedup_es_range[1]:.2f}) |")
    return lines


SHIPPED = {"before": "-", "frozen params": "no", "no final forward": "yes",
           "+ channels_last input": "no (no-op for 1 channel)", "+ channels_last weights": "yes",
           "after (robustpath PGD)": "yes", "after, 1 thread": "no", "torchattacks": "peer",
           "torchattacks, channels_last model": "peer"}


def _opt_table(results) -> list[str]:
    names = list(dict.fromkeys(k for r in results for k in r.speedup))
    head = "| variant | " + " | ".join(f"{r.subject}: s (speed-up vs before)" for r in results)
    lines = [head + " | in robustpath? |", "|---|" + "---|" * len(results) + "---|"]
    for k in names:
        cells = []
        for r in results:
            if k in r.speedup:
                lo, hi = r.spread[k]
                cells.append(f"{r.seconds[k]:.2f} ({r.speedup[k]:.2f}x, {lo:.2f}-{hi:.2f})")
            else:
                cells.append("-")
        lines.append(f"| {k} | " + " | ".join(cells) + f" | {SHIPPED.get(k, '?')} |")
    return lines


def _epoch_table(e, attack_eff) -> list[str]:
    g = 1e9
    lines = ["| quantity | value |", "|---|---|",
             f"| float32 matmul peak ({e.peak_n}x{e.peak_n}, torch.mm) | {e.peak / g:.1f} GFLOP/s |",
             (f"| PGD-training epoch, cnn-small, {e.n_train} images, batch {e.batch}, "
              f"{e.steps} steps | {e.seconds:.2f} s (channels-last off, as before: "
              f"{e.seconds_before:.2f} s; {e.seconds_before / e.seconds:.2f}x) |"),
             (f"| counted FLOPs per epoch (FlopCounterMode; attack share) | "
             f"{e.epoch_flops / g:.1f} GFLOP ({100 * e.attack_share:.0f}% attack) |"),
             f"| achieved | {e.achieved / g:.2f} GFLOP/s |",
             f"| **achieved / peak** | **{100 * e.fraction:.1f}%** |"]
    for name, (flops, rate, frac) in attack_eff.items():
        lines.append(f"| PGD attack (ours, full), {name}: FLOPs per image; achieved / peak | "
                     f"{flops / 1e6:.1f} MFLOP; {rate / g:.2f} GFLOP/s = {100 * frac:.1f}% |")
    return lines


@cli_main
def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.quick:
        args.cnn_images, args.resnet_images, args.cnn_train, args.resnet_train = 100, 20, 300, 100
        args.cnn_batch, args.resnet_batch, args.epoch_images, args.matmul_n = 50, 10, 384, 512
        args.rounds, args.steps = 1, 3
    for flag in ("steps", "rounds", "cnn_images", "resnet_images", "cnn_batch", "resnet_batch",
                 "cnn_train", "resnet_train", "epoch_images", "matmul_n"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be >= 1")
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if skip - {"pgd", "opt", "epoch"}:
        raise UserError(f"--skip takes pgd, opt, epoch; got {args.skip!r}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve(args.device)
    started = time.perf_counter()
    load_before = machine.load_average()
    info = machine.info(device)

    _log("training the benchmark subjects ...")
    cnn = subjects.cnn_small(args.cnn_train, args.cnn_images, device, args.data_root)
    res = subjects.resnet20(args.resnet_train, args.resnet_images, device, args.data_root)

    pgd_results, opt_results, epoch_result, attack_eff = [], [], None, {}
    if "pgd" not in skip:
        for subj, batch in ((cnn, args.cnn_batch), (res, args.resnet_batch)):
            _log(f"PGD vs torchattacks: {subj.name}")
            pgd_results.append(pgd_speed.run(subj, steps=args.steps, batch=batch, rounds=args.rounds,
                                             device=device, log=_log))
    if "opt" not in skip:
        for subj, n, batch in ((cnn, min(500, args.cnn_images), args.cnn_batch),
                               (res, min(100, args.resnet_images), args.resnet_batch)):
            _log(f"optimisations: {subj.name}")
            opt_results.append(optimisations.run(subj, n=n, steps=args.steps, batch=batch,
                                                 rounds=args.rounds, device=device, log=_log))
    peak = None
    if "epoch" not in skip or pgd_results:
        _log("matmul peak ...")
        peak = efficiency.matmul_peak(args.matmul_n, device)
    if "epoch" not in skip:
        _log(f"one PGD-training epoch of cnn-small on {args.epoch_images} images ...")
        epoch_result = efficiency.training_epoch(args.epoch_images, peak, args.matmul_n, device,
                                                 rounds=min(2, args.rounds), root=args.data_root)
    for r, subj in zip(pgd_results, (cnn, res)):
        xb, yb = subj.x[:r.batch].to(device), subj.y[:r.batch].to(device)
        flops = efficiency.attack_flops_per_image(subj.model, xb, yb, subj.eps, r.steps)
        rate = flops * r.img_per_s["ours (full)"]
        attack_eff[subj.name.split(" /")[0]] = (flops, rate, rate / peak)
    elapsed = time.perf_counter() - started

    command = "python -m benchmarks" + ("" if argv is None and len(sys.argv) <= 1 else
                                        " " + shlex.join(sys.argv[1:] if argv is None else argv))
    md = ["# robustpath benchmarks", "",
          ("Generated by `python -m benchmarks` (see `benchmarks/__main__.py`); every figure is "
          "measured in the same run. Timings are interleaved (each round runs every variant once, "
          "in rotated order); a speed-up is the median over rounds of the per-round time ratio, "
          "with the range over rounds in brackets."), "",
          "## Machine and command", "",
          f"- command: `{command}`"]
    md += [f"- {k}: {v}" for k, v in info.items()]
    md += [f"- load average (1, 5, 15 min) at start: {load_before}; at end: {machine.load_average()}",
           f"- total run time: {elapsed:.0f} s", ""]
    md += ["## Subjects", ""]
    for s in (cnn, res):
        md.append(f"- {s.name}: {s.train_note}; attacked: {s.data_note}; clean acc {_fmt_acc(s.clean_acc)}")
    md.append("")
    out_lines = []
    if pgd_results:
        goal_es = all(r.speedup_es >= GOAL_ES for r in pgd_results)
        goal_full = all(r.speedup_full >= GOAL_FULL for r in pgd_results)
        sec = ["## PGD: ours vs torchattacks (same model, data, eps, steps, step size, random start)", "",
               *_pgd_table(pgd_results), "",
               (f"Goal: early stop >= {GOAL_ES}x torchattacks: **{'met' if goal_es else 'not met'}**; "
               f"full >= {GOAL_FULL}x: **{'met' if goal_full else 'not met'}**. "
               "Early stop (accuracy-only mode, `AttackConfig(early_stop=True)`) freezes each example "
               "at its first misclassified iterate and forwards only the rest; its robust accuracy "
               "can only be equal or lower (an example broken at some step stays broken)."), ""]
        md += sec
        out_lines += sec
    if opt_results:
        sec = ["## Cheap optimisations of our PGD (full mode): before / after", "",
               *_opt_table(opt_results), "",
               ("`before` is the PGD loop of commit 4cb2237 (`benchmarks/baseline.py`). Kept in "
               "robustpath only what wins on both models; see the notes."), ""]
        md += sec
        out_lines += sec
    if epoch_result is not None:
        sec = ["## Efficiency against this machine's limit", "", *_epoch_table(epoch_result, attack_eff),
               "", ("FlopCounterMode counts matrix products and convolutions (forward and backward); "
               "element-wise work (BatchNorm, ReLU, pooling, the PGD update) is not counted, so the "
               "fraction is a lower bound on how busy the cores are."), ""]
        md += sec
        out_lines += sec
    notes = Path(__file__).resolve().parent / "NOTES.md"
    if notes.is_file():
        md += ["## Notes", "", notes.read_text().strip(), ""]
    print("\n".join(out_lines))
    atomic_write_text(args.out, "\n".join(md) + "\n")
    print(f"wrote {args.out} ({elapsed:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
