"""Cost of REPAIR and REPAIR under attack per point of a path, as a share of one path
point's evaluation (issue 19).

``python -m benchmarks.repair_cost [--run results/fashion-mnist-cnn-small-quick]
[--out benchmarks/REPAIR_COST.md]`` loads the run's endpoints (seeds 0, 1) and its
activation alignment from a temporary copy of its ``ckpt/`` (through
:mod:`robustpath.engine.stages`, cache hits, nothing is trained), builds the line A -> aligned B
and times at interior t, with the run's settings (``bn_batches`` measuring batches of
``batch_size``, the training PGD with seed 1, the test subset, the evaluation PGD):

* ``eval``: one point's evaluation, clean + evaluation attack over the test subset
  (``robustpath.paths.evaluate._evaluate_point``, what every renormalisation is followed by);
* ``bn-reset``: BatchNorm recomputation as configured (``--bn-inputs``);
* ``repair`` / ``repair-adv``: :class:`robustpath.paths.repair.PathRenorm` at t, with the
  endpoints' statistics already measured (once per path: reported separately as
  ``ends``, amortised over the path's points).

Each is the median of ``--repeats`` runs on one thread (``torch.set_num_threads(1)``),
so the ratios, not the seconds, carry to other machines.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import statistics
import tempfile
import time
from dataclasses import replace
from itertools import islice
from pathlib import Path

import torch

from robustpath.attacks.base import build_attack
from robustpath.config import BenchConfig
from robustpath.engine import stages, stages_align
from robustpath.io.store import atomic_write_text
from robustpath.paths import curves
from robustpath.paths.bn import recompute_bn
from robustpath.paths.evaluate import _evaluate_point
from robustpath.paths.repair import PathRenorm


def _median_time(fn, repeats: int) -> float:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return statistics.median(out)


def measure(run: Path, repeats: int, ts=(0.3, 0.5)) -> dict:
    raw = json.loads((run / "config.json").read_text())
    known = set(BenchConfig.__dataclass_fields__)
    cfg = BenchConfig(**{k: v for k, v in raw.items() if k in known})
    cfg.seeds = [0, 1]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        shutil.copytree(run / "ckpt", work / "ckpt")  # locks and caches stay out of the run
        data = stages.RunData.load(cfg)
        ma, _, ka = stages.endpoint(cfg, 0, work, data, "cpu", progress=False)
        mb, _, kb = stages.endpoint(cfg, 1, work, data, "cpu", progress=False)
        aligned, _, _ = stages_align.alignment(cfg, "activation", ma, mb, ka, kb, work, data, "cpu",
                                         progress=False)
    c = curves.build_curve("line", ma, aligned)
    batches = list(islice(iter(data.train_batches(cfg, seed=0)), cfg.bn_batches))
    bn_attack = build_attack(replace(cfg.train_attack(), seed=1), data.num_classes)
    attack = build_attack(cfg.eval_attack(), data.num_classes)
    rows = {k: [] for k in ("eval", "bn-reset", "repair", "repair-adv")}
    ends = {}
    for method in ("repair", "repair-adv"):
        r = PathRenorm(method, c.model_at, batches, bn_attack)
        start = time.perf_counter()
        r._endpoints()  # once per path
        ends[method] = time.perf_counter() - start
        for t in ts:
            rows[method].append(_median_time(lambda r=r, t=t: r(c.model_at(t), t), repeats))
    for t in ts:
        rows["bn-reset"].append(_median_time(lambda t=t: recompute_bn(
            c.model_at(t), batches, batches=cfg.bn_batches, inputs=cfg.bn_inputs,
            attack=bn_attack), repeats))
        m = recompute_bn(c.model_at(t), batches, batches=cfg.bn_batches, inputs=cfg.bn_inputs,
                         attack=bn_attack).eval()
        rows["eval"].append(_median_time(lambda m=m: _evaluate_point(
            copy.deepcopy(m), data.x_test, data.y_test, attack, 500, "cpu"), repeats))
    sec = {k: statistics.mean(v) for k, v in rows.items()}
    return {"cfg": cfg, "seconds": sec, "ends": ends, "ts": ts, "repeats": repeats,
            "points": cfg.t_points + 2 * cfg.refine_rounds}


def report(res: dict, run: Path) -> str:
    cfg, sec, ends = res["cfg"], res["seconds"], res["ends"]
    ev = sec["eval"]
    lines = [
        "# Cost of REPAIR per point of a path", "",
        f"Command: `OMP_NUM_THREADS=1 python -m benchmarks.repair_cost --run {run}` "
        "(one thread; medians of "
        f"{res['repeats']} runs, mean over t in {', '.join(map(str, res['ts']))}).", "",
        f"Setting: {cfg.arch} on {cfg.dataset}, line from seed 0 to activation-aligned seed 1 "
        f"(the run's cached models); measuring data {cfg.bn_batches} training batches of "
        f"{cfg.batch_size}; one point's evaluation = clean + PGD-{cfg.eval_steps} on "
        f"{len_test(cfg)} test examples; adversarial statistics from PGD-{cfg.train_steps} "
        f"(seed 1); BN reset on {cfg.bn_inputs} inputs.", "",
        "| per point | seconds | share of one point's evaluation |", "|---|---|---|",
        f"| evaluation (clean + PGD) | {ev:.3f} | 100 % |",
    ]
    for k in ("bn-reset", "repair", "repair-adv"):
        lines.append(f"| {k} | {sec[k]:.3f} | {100 * sec[k] / ev:.1f} % |")
    lines += ["", "Once per path (the endpoints' statistics), amortised over the path's "
              f"{res['points']} points (grid + refinement):", ""]
    for k, v in ends.items():
        lines.append(f"- {k}: {v:.3f} s once = {100 * v / res['points'] / ev:.2f} % of a point's "
                     "evaluation per point")
    return "\n".join(lines) + "\n"


def len_test(cfg: BenchConfig) -> str:
    return f"{cfg.test_subset:,}" if cfg.test_subset else "all"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.repair_cost",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default="results/fashion-mnist-cnn-small-quick",
                   help="a bench run folder with cached endpoints seeds 0, 1 and activation alignment")
    p.add_argument("--out", default="benchmarks/REPAIR_COST.md")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    run = Path(args.run)
    text = report(measure(run, args.repeats), run)
    atomic_write_text(Path(args.out), text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
