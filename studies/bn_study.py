"""``python -m studies.bn_study``: how many training batches does BatchNorm
recomputation along a path need?

Every evaluation at an interior t first re-estimates BatchNorm's running statistics
(``robustpath.paths.bn.recompute_bn``, adversarial inputs as in the bench). The cost is
linear in the number of batches, and on the quick preset it was about a third of the
time per t. This study takes the default benchmark's paths (reusing or training them
through the bench's stage cache), and at interior t measures clean and robust
accuracy after recomputing BN on ``n`` batches of 128, for several ``n``, each with
two independent draws of batches. Reported per ``n``:

* the mean and max absolute change in robust / clean accuracy (percentage points)
  against the reference (the largest ``n``, first draw);
* the draw-to-draw difference at that ``n`` (the estimate's own noise);
* seconds per BN recomputation and per whole t.

Writes ``studies/results/bn_study.md`` with the machine and the command.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from benchmarks import machine
from robustpath.attacks.base import build_attack
from robustpath.attacks.metrics import per_example
from robustpath.config import from_preset
from robustpath.data import Batches
from robustpath.engine import stages, stages_align
from robustpath.errors import UserError, cli_main
from robustpath.io.store import atomic_write_text
from robustpath.numbers import parse_int_list
from robustpath.paths.bn import recompute_bn

OUT = Path(__file__).resolve().parent / "results" / "bn_study.md"


def _parser() -> argparse.ArgumentParser:
    from robustpath.cli import ArgumentParser

    p = ArgumentParser(prog="python -m studies.bn_study", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default="results/fashion-mnist-cnn-small-quick",
                   help="bench run folder whose stage cache holds (or will hold) the quick preset's "
                        "endpoints, alignment and curves")
    p.add_argument("--batches", default="1,2,4,6,10,20",
                   help="BN batch counts to compare; the largest is the reference")
    p.add_argument("--ts", default="0.25,0.5,0.75", help="interior t values")
    p.add_argument("--draws", type=int, default=2, help="independent batch draws per count")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: default)")
    p.add_argument("--out", default=str(OUT), help="Markdown file to write")
    return p


def _paths(cfg, run: Path, data):
    """The quick preset's unaligned line, unaligned bezier and aligned bezier."""
    ma, _, ka = stages.endpoint(cfg, cfg.seeds[0], run, data, "cpu", progress=True)
    mb, _, kb = stages.endpoint(cfg, cfg.seeds[1], run, data, "cpu", progress=True)
    out = {}
    for method, kind in (("none", "line"), ("none", "bezier"), ("activation", "bezier")):
        b, _, akey = stages_align.alignment(cfg, method, ma, mb, ka, kb, run, data, "cpu", progress=True)
        c, _, _ = stages.curve(cfg, kind, ma, b, ka, akey, run, data, "cpu", progress=True)
        out[f"{'aligned' if method != 'none' else 'unaligned'} {kind}"] = c
    return out


@cli_main
def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    counts = sorted(set(parse_int_list(args.batches, name="--batches")))
    try:
        ts = [float(t) for t in args.ts.split(",") if t.strip()]
    except ValueError:
        raise UserError(f"--ts must be comma-separated numbers, got {args.ts!r}") from None
    if not counts or counts[0] < 1 or args.draws < 1 or not ts:
        raise UserError("--batches needs counts >= 1, --draws >= 1 and --ts at least one t")
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    load_before = machine.load_average()
    cfg = from_preset("quick")
    cfg.out = args.run
    run = Path(args.run)
    data = stages.RunData.load(cfg)
    paths = _paths(cfg, run, data)
    attack = build_attack(cfg.eval_attack(), data.num_classes)
    bn_attack = build_attack(replace(cfg.train_attack(), seed=1), data.num_classes)
    need = max(counts)
    draws = []  # disjoint draws: batches [d*need, (d+1)*need) of one shuffled epoch
    loader = list(Batches(data.x_train, data.y_train, cfg.batch_size, shuffle=True, seed=0))
    if len(loader) < need * args.draws:
        raise UserError(f"{len(loader)} training batches cannot give {args.draws} draws of {need}")
    for d in range(args.draws):
        draws.append(loader[d * need:(d + 1) * need])

    rob, cln, bn_s, t_s = {}, {}, {}, {}
    total = len(paths) * len(ts) * len(counts) * args.draws
    done = 0
    for pname, c in paths.items():
        for t in ts:
            for n in counts:
                for d in range(args.draws):
                    t0 = time.perf_counter()
                    m = c.model_at(t)
                    recompute_bn(m, draws[d], batches=n, inputs="adv", attack=bn_attack)
                    t1 = time.perf_counter()
                    m.eval()
                    clean = per_example(m, data.x_test, data.y_test, None)
                    robust = per_example(m, data.x_test, data.y_test, attack)
                    t2 = time.perf_counter()
                    cln[pname, t, n, d] = 100 * clean.accuracy
                    rob[pname, t, n, d] = 100 * robust.accuracy
                    bn_s.setdefault(n, []).append(t1 - t0)
                    t_s.setdefault(n, []).append(t2 - t0)
                    done += 1
                    print(f"[{done}/{total}] {pname} t={t:.2f} n={n} draw={d}: robust "
                          f"{rob[pname, t, n, d]:.1f}% clean {cln[pname, t, n, d]:.1f}% "
                          f"({t2 - t0:.1f} s)", file=sys.stderr, flush=True)

    ref = counts[-1]
    rows = []
    for n in counts:
        dr = [abs(rob[p, t, n, d] - rob[p, t, ref, 0]) for p in paths for t in ts
              for d in range(args.draws) if not (n == ref and d == 0)]
        dc = [abs(cln[p, t, n, d] - cln[p, t, ref, 0]) for p in paths for t in ts
              for d in range(args.draws) if not (n == ref and d == 0)]
        noise = [abs(rob[p, t, n, 0] - rob[p, t, n, d]) for p in paths for t in ts
                 for d in range(1, args.draws)]
        rows.append((n, np.mean(dr), np.max(dr), np.mean(dc), np.max(dc),
                     np.mean(noise) if noise else float("nan"), np.median(bn_s[n]),
                     np.median(t_s[n])))
    elapsed = time.perf_counter() - started
    command = "python -m studies.bn_study" + (" " + shlex.join(argv if argv is not None
                                                                   else sys.argv[1:])).rstrip()
    md = ["# BatchNorm recomputation: how many batches?", "",
          __doc__.split("\n\n", 1)[1].strip(), "",
          "## Machine and command", "", f"- command: `{command}`"]
    md += [f"- {k}: {v}" for k, v in machine.info(torch.device("cpu")).items()]
    md += [f"- load average at start: {load_before}; at end: {machine.load_average()}",
           f"- total run time: {elapsed:.0f} s",
           f"- paths: {', '.join(paths)} of the quick preset (cnn-small, Fashion-MNIST, eps "
           f"{cfg.eps:g}); t = {', '.join(f'{t:g}' for t in ts)}; {len(data.y_test)} test images, "
           f"PGD-{cfg.eval_steps}; BN batches of {cfg.batch_size} with PGD-{cfg.train_steps} "
           f"inputs; reference: {ref} batches, draw 0", "",
           "## Results (percentage points)", "",
           "| BN batches | robust acc change: mean | max | clean acc change: mean | max "
           "| robust acc, draw-to-draw | s per BN recompute | s per t (BN + clean + PGD) |",
           "|---|---|---|---|---|---|---|---|"]
    for n, mr, xr, mc, xc, nz, sb, st in rows:
        md.append(f"| {n} | {mr:.2f} | {xr:.1f} | {mc:.2f} | {xc:.1f} | {nz:.2f} | {sb:.2f} | {st:.2f} |")
    md += ["", "## Per point (robust accuracy %, draw 0)", "",
           "| path | t | " + " | ".join(f"n={n}" for n in counts) + " |",
           "|---|---|" + "---|" * len(counts)]
    for p in paths:
        for t in ts:
            md.append(f"| {p} | {t:g} | " + " | ".join(f"{rob[p, t, n, 0]:.1f}" for n in counts) + " |")
    text = "\n".join(md) + "\n"
    atomic_write_text(Path(args.out), text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
