"""Cost of the input curvature per t, as a multiple of one path point's evaluation.

``python -m benchmarks.curvature_cost [--run RUN] [--examples 100] [--iters 20]
[--repeats 3] [--out benchmarks/CURVATURE_COST.md]`` loads the two endpoints of a
finished bench run (default ``results/fashion-mnist-cnn-small-quick``; the line
between them, unaligned, at t = 0.5) and times, on the run's own data and settings:

* one path point's evaluation as ``bench`` does it
  (:func:`robustpath.paths.evaluate.evaluate_path` at one t, no point cache): BatchNorm
  re-estimated on ``bn_batches`` batches (adversarial inputs in the quick preset),
  clean and PGD pass over every test example;
* the curvature at the same t (:func:`robustpath.paths.curvature.path_curvature`): the same
  BatchNorm re-estimation, then power iteration on the first ``--examples`` test
  examples with ``--iters`` iterations at most;
* the power iteration alone (:func:`robustpath.paths.curvature.input_hessian_top_eig` on
  the prepared network).

Each is the median of ``--repeats`` runs; the ratio is what ``--curvature N`` adds to
each t of a path. Both are timed in the same process, one after the other, so the
ratio depends less on the machine's load than the seconds do.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from robustpath.attacks.base import build_attack
from robustpath.config import BenchConfig
from robustpath.engine import stages
from robustpath.io.store import atomic_write_text, load_model
from robustpath.paths.curvature import input_hessian_top_eig, path_curvature
from robustpath.paths.curves import build_curve
from robustpath.paths.evaluate import evaluate_path

from . import machine

OUT = Path(__file__).resolve().parent / "CURVATURE_COST.md"
RUN = Path("results/fashion-mnist-cnn-small-quick")


def _median_s(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(run: Path, examples: int, iters: int, repeats: int, t: float = 0.5) -> dict:
    import json

    raw = json.loads((run / "config.json").read_text())
    cfg = BenchConfig(**{k: v for k, v in raw.items() if k in BenchConfig.__dataclass_fields__})
    cfg.seeds = cfg.seeds[:2]
    device = torch.device("cpu")
    data = stages.RunData.load(cfg)
    # read the checkpoints directly: no lock or cache file is written into the run
    ma, mb = (load_model(next((run / "ckpt" / "endpoints").glob(
        f"{cfg.arch}-seed{s}-*.safetensors")).with_suffix(""), device)[0].eval()
        for s in cfg.seeds)
    curve = build_curve("line", ma, mb)
    attack = build_attack(cfg.eval_attack(), data.num_classes)
    bn_attack = build_attack(replace(cfg.train_attack(), seed=1), data.num_classes)
    setup = stages.point_setup(cfg, data, device)
    x, y = data.x_test[:examples], data.y_test[:examples]

    def point():
        evaluate_path(curve.model_at, [t], data.x_test, data.y_test, attack,
                      bn_loader=data.train_batches(cfg, seed=0, device=device),
                      bn_batches=cfg.bn_batches, bn_inputs=cfg.bn_inputs, bn_attack=bn_attack,
                      speed=[1.0], device=device, progress=False)

    def curv():
        path_curvature(curve.model_at, [t], x, y, setup, iters=iters)

    prepared = setup.prepare(curve.model_at, t)
    used = {}

    def power():
        used["iters"] = input_hessian_top_eig(prepared, x, y, iters, return_iters=True)[1]

    # accuracy of the capped iteration: against 10x the iterations at a 1e-6 tolerance
    lam, k = input_hessian_top_eig(prepared, x, y, iters, return_iters=True)
    ref = input_hessian_top_eig(prepared, x, y, 10 * iters, tol=1e-6)
    rel = abs(lam - ref) / abs(ref).clip(1e-12)
    point_s = _median_s(point, repeats)
    curv_s = _median_s(curv, repeats)
    power_s = _median_s(power, repeats)
    return {"point_s": point_s, "curvature_s": curv_s, "power_s": power_s,
            "ratio": curv_s / point_s, "power_ratio": power_s / point_s,
            "test_examples": len(data.x_test), "examples": examples, "iters": iters,
            "mean_iters": float(used["iters"].mean()), "at_cap": float((k == iters).mean()),
            "rel_median": float(np.median(rel)), "rel_mean_of_means": float(
                abs(lam.mean() - ref.mean()) / abs(ref.mean())), "bn_batches": cfg.bn_batches,
            "bn_inputs": cfg.bn_inputs, "eval_steps": cfg.eval_steps, "arch": cfg.arch,
            "dataset": cfg.dataset, "t": t, "repeats": repeats}


def report(m: dict, command: str) -> str:
    info = machine.info(torch.device("cpu"))
    lines = [
        "# Cost of the input curvature per t", "",
        f"Command: `{command}` (load average before: {m['load']}).", "",
        f"{m['dataset']} / {m['arch']}, the line between the run's endpoints at t = {m['t']}, "
        f"median of {m['repeats']} runs each:", "",
        "| what | seconds | x one path point |", "|---|---|---|",
        f"| one path point's evaluation (BN re-estimated on {m['bn_batches']} batches of "
        f"{m['bn_inputs']} inputs, clean + PGD-{m['eval_steps']} on {m['test_examples']} test "
        f"examples) | {m['point_s']:.2f} | 1 |",
        f"| curvature at one t (same BN re-estimation + power iteration on {m['examples']} "
        f"examples, at most {m['iters']} iterations) | {m['curvature_s']:.2f} | "
        f"{m['ratio']:.2f} |",
        f"| power iteration alone | {m['power_s']:.2f} | {m['power_ratio']:.2f} |", "",
        f"Power iterations used per example (early stop at relative change 1e-3): "
        f"{m['mean_iters']:.1f} on average, {100 * m['at_cap']:.0f}% of examples stopped at "
        f"the cap of {m['iters']}. Against {10 * m['iters']} iterations at tolerance 1e-6 on "
        f"the same examples: median relative difference per example "
        f"{m['rel_median']:.1e}, relative difference of the mean over the examples "
        f"{m['rel_mean_of_means']:.1e}.", "",
        "So `--curvature N` adds about that ratio of the path evaluation's time per t (the "
        "power iteration scales with N and the iterations; BN re-estimation is paid once "
        "more per t). Each iteration is one double-backward Hessian-vector product for all "
        "examples of a batch.", "",
        "Machine: " + "; ".join(f"{k}: {v}" for k, v in info.items()), ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default=str(RUN), help="a finished bench run (its endpoints)")
    p.add_argument("--examples", type=int, default=100)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args(argv)
    load = machine.load_average()
    m = measure(Path(args.run), args.examples, args.iters, args.repeats)
    m["load"] = load
    argv = sys.argv[1:] if argv is None else argv
    command = "python -m benchmarks.curvature_cost " + " ".join(shlex.quote(a) for a in argv)
    text = report(m, command.strip())
    atomic_write_text(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
