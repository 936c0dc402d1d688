"""What ``--preset paper`` (Tatro et al.'s protocol) costs, measured on CIFAR-shaped data.

Times the real code paths on random 3x32x32 inputs (10 classes) with the paper preset's
settings - TinyTen, batch 128, PGD-5 in train mode with rotation for endpoint training,
PGD-5 in the loop for curve training, BN on adversarial inputs and PGD-5 evaluation at
one t - on a few batches each, then scales to the preset: 390 batches per epoch, 200
endpoint epochs x 6 seeds, 200 curve epochs x 3 pairs x 2 alignments (the line needs no
fitting), 65 t x 4 paths x 3 pairs with BN on 391 training batches and 10,000 test
images per t. ``python -m benchmarks.paper_cost [--batches 4] [--out FILE]``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from robustpath.attacks.base import AttackConfig, build_attack
from robustpath.config import from_preset
from robustpath.data import Batches
from robustpath.engine.stages import endpoint_config
from robustpath.paths.curves import build_curve
from robustpath.paths.evaluate import evaluate_path
from robustpath.paths.fit import CurveTrainConfig, train_curve
from robustpath.train.loop import train_model


def measure(batches: int, device: str = "cpu") -> dict:
    cfg = from_preset("paper")
    g = torch.Generator().manual_seed(0)
    n = 128 * batches
    x = torch.rand(n, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    xt, yt = x[:512], y[:512]
    out = {}
    tc = endpoint_config(cfg, 0)
    tc.epochs, tc.train_subset, tc.test_subset = 2, n, 512
    a, m = train_model(tc, device=device, progress=False, data=(x, y, xt, yt))
    out["endpoint_batch_s"] = m["seconds_per_epoch"] / batches
    curve = build_curve("bezier", a, a, bends=1)
    ccfg = CurveTrainConfig(epochs=1, batch_size=128, lr=cfg.curve_lr, schedule=cfg.curve_schedule,
                            attack=cfg.train_attack(), augment=True)
    with tempfile.TemporaryDirectory() as d:
        cm = train_curve(curve, x, y, ccfg, Path(d), device=device, progress=False)
    out["curve_batch_s"] = cm["seconds_per_epoch"] / batches
    atk = build_attack(cfg.eval_attack(), 10)
    bn_atk = build_attack(AttackConfig(eps=cfg.eps, steps=5, seed=1), 10)
    times = {}
    for k in (2, 4):
        start = time.perf_counter()
        evaluate_path(curve.model_at, [0.5], xt, yt, atk, bn_loader=Batches(x, y, 128),
                      bn_batches=k, bn_inputs="adv", bn_attack=bn_atk, progress=False,
                      recompute_ends=False)
        times[k] = time.perf_counter() - start
    out["bn_batch_s"] = max(times[4] - times[2], 0.0) / 2
    out["test_512_s"] = max(times[2] - 2 * out["bn_batch_s"], 0.0)
    return out


def report(r: dict, batches: int) -> str:
    ep_epoch = 390 * r["endpoint_batch_s"]
    cv_epoch = 390 * r["curve_batch_s"]
    per_t = 391 * r["bn_batch_s"] + 10000 / 512 * r["test_512_s"]
    total = {"endpoints (6 x 200 epochs)": 6 * 200 * ep_epoch,
             "curves (3 pairs x 2 alignments x 200 epochs)": 6 * 200 * cv_epoch,
             "evaluation (3 pairs x 4 paths x 65 t)": 12 * 65 * per_t}
    load = os.getloadavg()
    lines = ["# Cost of `--preset paper` (Tatro et al.'s protocol) on this CPU", "",
             f"Command: `python -m benchmarks.paper_cost --batches {batches}`. Random "
             "CIFAR-shaped inputs, TinyTen, the preset's settings; torch threads "
             f"{torch.get_num_threads()}; load average {load[0]:.1f} (a shared machine: "
             "other jobs ran at the same time, so these are upper bounds).", "",
             "| unit | seconds |", "|---|---|",
             f"| endpoint training batch (128, PGD-5 train mode, rotation) | {r['endpoint_batch_s']:.2f} |",
             f"| endpoint epoch (390 batches) | {ep_epoch:.0f} |",
             f"| curve training batch (128, PGD-5 at theta(t)) | {r['curve_batch_s']:.2f} |",
             f"| curve epoch (390 batches) | {cv_epoch:.0f} |",
             f"| BN recomputation batch (PGD-5 + forward) | {r['bn_batch_s']:.2f} |",
             f"| clean + PGD-5 evaluation of 512 test images | {r['test_512_s']:.2f} |",
             f"| one t (BN on 391 batches + 10,000 test images) | {per_t:.0f} |", "",
             "| stage of the full preset | hours |", "|---|---|"]
    for k, v in total.items():
        lines.append(f"| {k} | {v / 3600:.0f} |")
    lines.append(f"| **total** | **{sum(total.values()) / 3600:.0f}** ({sum(total.values()) / 86400:.0f} days) |")
    lines += ["", "No GPU was lent to this task, so the per-epoch cost on one GPU is not "
              "measured here; `python -m benchmarks.paper_cost --device cuda` measures it "
              "where one is present."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.paper_cost")
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="benchmarks/PAPER_COST.md")
    args = p.parse_args(argv)
    text = report(measure(args.batches, args.device), args.batches)
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
