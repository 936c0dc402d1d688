"""``python -m benchmarks``: PGD speed against torchattacks, the cheap optimisations
before/after, one PGD-training epoch against this machine's matmul peak, and the quick
preset's curve pipeline against a plain-PyTorch loop of the same work (section
``plain``, :mod:`benchmarks.plain_torch`; ``--only plain`` runs it alone), what two
cores give a node's work (section ``scaling``, :mod:`benchmarks.scaling`), and, opt-in
(about 45 minutes), the default run's wall time with 1 and 2 workers (section ``run``,
:mod:`benchmarks.default_run`: ``--only run``).

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
from robustpath.io.store import atomic_write_text

from . import (
    default_run,
    efficiency,
    machine,
    optimisations,
    path_cost,
    pgd_speed,
    plain_torch,
    scaling,
    subjects,
)

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
GOAL_ES, GOAL_FULL = 1.3, 1.0
SECTIONS = {"pgd", "opt", "epoch", "path", "compile", "align", "plain", "run", "scaling"}
#: sections that run only when --only names them (the default run takes ~45 min)
OPT_IN = {"run"}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise UserError(f"{message} (see --help)")


def _shell_words(text: str) -> list[str]:
    """``--run-args``: one shell-quoted string -> the bench's argv, split while the flags
    are parsed so an unbalanced quote stops the command before any work."""
    try:
        return shlex.split(text)
    except ValueError as e:  # shlex: "No closing quotation", "No escaped character"
        raise argparse.ArgumentTypeError(f"not a shell-quoted string ({e}): {text!r}") from None


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
    p.add_argument("--skip", default="", help="comma-separated sections to skip: "
                   "pgd,opt,epoch,path,compile,align,plain,scaling,run")
    p.add_argument("--only", default="", help="comma-separated sections to run (the rest "
                   "skipped); `run` (the default run with 1 and 2 workers, ~45 min) runs only "
                   "when named here")
    p.add_argument("--run-args", default=[], type=_shell_words,
                   help="extra bench flags for section run, one shell-quoted string (default: "
                   "none, i.e. the default run; --quick: a tiny mlp run)")
    p.add_argument("--plain-train", type=int, default=10000,
                   help="training images, plain section (default: the quick preset's 10000)")
    p.add_argument("--plain-test", type=int, default=1000, help="test images, plain section")
    p.add_argument("--plain-epochs", type=int, default=4,
                   help="endpoint and curve epochs, plain section (default 4 as quick)")
    p.add_argument("--plain-rounds", type=int, default=2, help="alternated rounds, plain section")
    p.add_argument("--scaling-images", type=int, default=5000,
                   help="training images per work unit, scaling section (default %(default)s)")
    p.add_argument("--t-batch", type=int, default=4, help="t per vmap batch in the path section")
    p.add_argument("--path-images", type=int, default=1000, help="test images per t, path section")
    p.add_argument("--bn-batches", type=int, default=10,
                   help="BN recomputation batches per t, path section (default 10: the quick "
                   "preset's before issue 7; it now uses 2, see studies/results/bn_study.md)")
    p.add_argument("--widths", default="0.5,1,2,4", help="cnn-small widths, align section")
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
           "torchattacks, channels_last model": "peer",
           "after, robustpath.models.fuse off": "no (robustpath.runtime.Runtime(fuse=False))",
           "torchattacks, robustpath.models.fuse view": "peer"}


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
              f"{e.steps} steps | {e.seconds:.2f} s (`robustpath.models.fuse` off: "
              f"{e.seconds_before:.2f} s; {e.seconds_before / e.seconds:.2f}x) |"),
             (f"| counted FLOPs per epoch (FlopCounterMode; attack share) | "
             f"{e.epoch_flops / g:.1f} GFLOP ({100 * e.attack_share:.0f}% attack) |"),
             f"| achieved | {e.achieved / g:.2f} GFLOP/s |",
             f"| **achieved / peak** | **{100 * e.fraction:.1f}%** |"]
    for name, (flops, rate, frac) in attack_eff.items():
        lines.append(f"| PGD attack (ours, full), {name}: FLOPs per image; achieved / peak | "
                     f"{flops / 1e6:.1f} MFLOP; {rate / g:.2f} GFLOP/s = {100 * frac:.1f}% |")
    return lines


# How many units of each stage the default quick benchmark runs (config.PRESETS["quick"]):
# 2 endpoints x 4 epochs, 2 bezier curves x 4 epochs, 4 paths x 11 t less the shared
# endpoints (8 end points, 3 distinct networks), 2 planes x 25 points of 300 images.
QUICK_UNITS = {"endpoint epoch": 8, "curve epoch": 8, "path t": 4 * 11 - 5}


def _path_section(p, c, e, peak) -> list[str]:
    g = 1e9
    total = p.seconds_bn + p.seconds_clean + p.seconds_attack
    lines = ["## Path evaluation per t, vmap-batched t, and the quick benchmark's stages", "",
             (f"One t of the line between cnn-small and a permuted copy of itself, {p.n_test} "
              f"test images, PGD-{p.steps}; BatchNorm recomputed on {p.bn_batches} batches of 128 "
              "adversarial (PGD-5) training images."), "",
             "| part of one t | s | share |", "|---|---|---|",
             f"| BatchNorm recomputation | {p.seconds_bn:.2f} | {100 * p.seconds_bn / total:.0f}% |",
             f"| clean pass | {p.seconds_clean:.2f} | {100 * p.seconds_clean / total:.0f}% |",
             f"| attack (and its final pass) | {p.seconds_attack:.2f} | "
             f"{100 * p.seconds_attack / total:.0f}% |", "",
             (f"`evaluate_path`: {p.seconds_per_t:.2f} s per t one at a time, "
              f"{p.seconds_per_t_batched:.2f} s per t with `t_batch={p.t_batch}` (vmap over "
              f"stacked parameters): **{p.speedup:.2f}x** ({p.spread[0]:.2f}-{p.spread[1]:.2f}). "
              + ("Kept as an option, off by default on this device." if p.speedup < 1.05 else
                 "A win on this device: use `--t-batch`.")), ""]
    units = {"path t": (p.flops_per_t, p.seconds_per_t)}
    if c is not None:
        units["curve epoch"] = (c.flops, c.seconds)
    if e is not None:
        units["endpoint epoch"] = (e.epoch_flops, e.seconds)
    lines += [f"Against the float32 matmul peak ({peak / g:.1f} GFLOP/s), FLOPs counted with "
              "FlopCounterMode:", "",
              "| stage unit | counted GFLOP | s | achieved GFLOP/s | achieved / peak | units in the quick bench |",
              "|---|---|---|---|---|---|"]
    tot_f = tot_s = 0.0
    for name, (f, sec) in units.items():
        n = QUICK_UNITS[name]
        tot_f += n * f
        tot_s += n * sec
        lines.append(f"| {name} | {f / g:.1f} | {sec:.2f} | {f / sec / g:.1f} | "
                     f"{100 * f / sec / peak:.1f}% | {n} |")
    if len(units) == 3:
        lines.append(f"| **quick bench, these stages together** | {tot_f / g:.0f} | {tot_s:.0f} | "
                     f"{tot_f / tot_s / g:.1f} | **{100 * tot_f / tot_s / peak:.1f}%** | - |")
    lines.append("")
    if c is not None:
        lines += [(f"Curve epoch ({c.n_train} images) as shipped: {c.seconds:.2f} s; with "
                   f"`robustpath.models.fuse` off: {c.seconds_before:.2f} s "
                   f"(**{c.seconds_before / c.seconds:.2f}x**)."), ""]
    return lines


def _compile_section(r) -> list[str]:
    if r.error:
        return ["## torch.compile", "", f"Not measured: {r.error}", ""]
    return ["## torch.compile (PGD-training step of cnn-small, batch 128, PGD-5)", "",
            "| variant | s per step |", "|---|---|",
            f"| eager | {r.eager:.3f} |", f"| torch.compile (default mode) | {r.compiled:.3f} |", "",
            (f"Speed-up {r.eager / r.compiled:.2f}x after about {r.compile_seconds:.0f} s of "
             "compilation. " + ("Not used: it does not pay on this device." if
                                r.eager / r.compiled < 1.1 or r.compile_seconds > 60 else
                                "It would pay for long runs on this device.")), ""]


@cli_main
def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.quick:
        args.cnn_images, args.resnet_images, args.cnn_train, args.resnet_train = 100, 20, 300, 100
        args.cnn_batch, args.resnet_batch, args.epoch_images, args.matmul_n = 50, 10, 384, 512
        args.rounds, args.steps = 1, 3
        args.path_images, args.bn_batches, args.t_batch, args.widths = 50, 1, 2, "0.5,1"
        args.plain_train, args.plain_test, args.plain_epochs, args.plain_rounds = 256, 100, 1, 1
        args.scaling_images = 256
    for flag in ("steps", "rounds", "cnn_images", "resnet_images", "cnn_batch", "resnet_batch",
                 "cnn_train", "resnet_train", "epoch_images", "matmul_n"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be >= 1")
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    if (skip | only) - SECTIONS:
        raise UserError(f"--skip and --only take {', '.join(sorted(SECTIONS))}; "
                        f"got {args.skip or args.only!r}")
    if only:
        skip |= SECTIONS - only
    else:
        skip |= OPT_IN
    for flag in ("plain_train", "plain_test", "plain_epochs", "plain_rounds", "scaling_images"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be >= 1")
    from robustpath.numbers import parse_float_list

    widths = parse_float_list(args.widths, name="--widths")
    bench_args = args.run_args or (default_run.TINY if args.quick else [])
    if "run" not in skip:
        default_run.check_args(bench_args)  # a bad bench flag: one line now, not after 45 min
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve(args.device)
    started = time.perf_counter()
    load_before = machine.load_average()
    info = machine.info(device)

    cnn = res = None
    if {"pgd", "opt", "path", "compile"} - skip:
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
    path_res = curve_res = compile_res = None
    align_res = []
    if "path" not in skip:
        _log("path evaluation per t and vmap-batched t ...")
        path_res = path_cost.path_eval(cnn, n_test=min(args.path_images, len(cnn.x)),
                                       bn_batches=args.bn_batches, steps=args.steps,
                                       t_batch=args.t_batch, rounds=args.rounds, device=device,
                                       log=_log, root=args.data_root)
        _log("one curve-training epoch ...")
        curve_res = path_cost.curve_epoch(cnn, n_train=args.epoch_images, steps=5, device=device,
                                          log=_log, root=args.data_root,
                                          rounds=min(2, args.rounds))
    if "compile" not in skip:
        _log("torch.compile vs eager, PGD-training step ...")
        compile_res = path_cost.compile_step(cnn, steps=5, batch=128, reps=max(3, args.rounds),
                                             device=device, log=_log)
    if "align" not in skip:
        _log("alignment time against width ...")
        align_res = path_cost.align_vs_width(widths, n_images=2000 if not args.quick else 250,
                                             device=device, log=_log, root=args.data_root)
    scal = None
    if "scaling" not in skip:
        _log("two cores: concurrent single-thread workers against two threads ...")
        scal = scaling.run(2, args.scaling_images, rounds=args.rounds, log=_log)
    drun = None
    if "run" not in skip:
        _log("the bench from scratch with 1 and 2 workers ...")
        drun = default_run.run((1, 2), bench_args, log=_log)
    plain = None
    if "plain" not in skip:
        _log("the quick pipeline: robustpath against a plain-PyTorch loop ...")
        sizes = plain_torch.Sizes(train=args.plain_train, test=args.plain_test,
                                  epochs=args.plain_epochs, curve_epochs=args.plain_epochs)
        plain = plain_torch.compare(sizes, rounds=args.plain_rounds, root=args.data_root, log=_log)
    if peak is None and path_res is not None:
        peak = efficiency.matmul_peak(args.matmul_n, device)
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
    md += ["## Subjects", ""] if cnn is not None else []
    for s in (cnn, res) if cnn is not None else ():
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
    if path_res is not None:
        sec = _path_section(path_res, curve_res, epoch_result, peak)
        md += sec
        out_lines += sec
    if compile_res is not None:
        sec = _compile_section(compile_res)
        md += sec
        out_lines += sec
    if align_res:
        sec = ["## Alignment time against width (cnn-small, 2,000 images)", "",
               "| width | units permuted | activation matching, s | weight matching, s |",
               "|---|---|---|---|"]
        sec += [f"| {a.width:g} | {a.units} | {a.activation_s:.2f} | {a.weight_s:.2f} |"
                for a in align_res]
        sec += ["", ("Activation matching is dominated by the forward passes that collect "
                     "statistics (linear in width for these layers) and one assignment per "
                     "group (cubic in the group's units); weight matching needs no data."), ""]
        md += sec
        out_lines += sec
    if plain is not None:
        sec = plain_torch.section(plain, command, f"torch threads: {torch.get_num_threads()}; "
                                  f"load average at start: {load_before}")
        md += sec
        out_lines += sec
    if scal is not None:
        sec = scaling.section(scal, command, f"cpu: {info['cpu']}; load average at start: "
                              f"{load_before}")
        md += sec
        out_lines += sec
    if drun is not None:
        sec = default_run.section(drun, command, f"cpu: {info['cpu']}"
                                  f"; load average at start: {load_before}")
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
