"""How close the 50%-of-peak goal can get: the convolution and matmul kernels alone.

``python -m benchmarks.kernel_bound [--threads 2] [--images 500] [--steps 10]``
profiles one full-mode PGD attack of ``cnn-small`` (as shipped: on the
:mod:`robustpath.models.fuse` view) and divides the counted FLOPs (FlopCounterMode: matrix
products and convolutions, forward and backward) by

* the attack's wall time: the fraction of the matmul peak the attack reaches, and
* the self time of the kernels that perform those FLOPs (``mkldnn_convolution``,
  ``convolution_backward``, ``mm``, ``addmm``): the fraction it would reach if every
  other operation (BatchNorm, ReLU, pooling, layout copies, the PGD update) took no
  time at all - an upper bound for any fusion of the element-wise work.

The peak is the best of five 2048x2048 float32 ``torch.mm`` products, measured in the
same run. CPU only (the profiler's CPU self times).
"""

from __future__ import annotations

import time

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from robustpath import models
from robustpath.attacks.base import PGD, AttackConfig
from robustpath.cli import ArgumentParser
from robustpath.errors import UserError, cli_main

from .efficiency import matmul_peak

KERNELS = ("aten::mkldnn_convolution", "aten::convolution_backward", "aten::mm", "aten::addmm")


def measure(images: int, steps: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = models.create("cnn-small").eval()
    x, y = torch.rand(images, 1, 28, 28), torch.randint(0, 10, (images,))
    attack = PGD(AttackConfig(eps=0.1, steps=steps, seed=0))
    attack(model, x, y)                      # warm-up: traces the view, oneDNN primitives
    with FlopCounterMode(display=False) as fc:
        attack(model, x, y)
    flops = float(fc.get_total_flops())
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        attack(model, x, y)
        wall = time.perf_counter() - start
    events = prof.key_averages()
    kernels = sum(e.self_cpu_time_total for e in events if e.key in KERNELS) / 1e6
    profiled = sum(e.self_cpu_time_total for e in events) / 1e6
    peak = matmul_peak(2048, torch.device("cpu"))
    return {"peak": peak, "flops": flops, "wall": wall, "kernels": kernels, "profiled": profiled}


@cli_main
def main(argv=None) -> int:
    p = ArgumentParser(prog="python -m benchmarks.kernel_bound",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--images", type=int, default=500, help="attacked images, one batch (500)")
    p.add_argument("--steps", type=int, default=10, help="PGD steps (10)")
    args = p.parse_args(argv)
    if args.threads < 0 or args.images < 1 or args.steps < 1:
        raise UserError("kernel_bound needs --threads >= 0, --images >= 1 and --steps >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    r = measure(args.images, args.steps)
    g = 1e9
    print(f"matmul peak: {r['peak'] / g:.1f} GFLOP/s ({torch.get_num_threads()} threads)")
    print(f"PGD-{args.steps}, cnn-small, {args.images} images: {r['flops'] / g:.1f} GFLOP in "
          f"{r['wall']:.3f} s = {100 * r['flops'] / r['wall'] / r['peak']:.1f}% of peak")
    print(f"conv + matmul kernels: {r['kernels']:.3f} s of {r['profiled']:.3f} s profiled "
          f"({100 * r['kernels'] / r['profiled']:.0f}%); FLOPs / kernel time = "
          f"{100 * r['flops'] / r['kernels'] / r['peak']:.1f}% of peak (the bound)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
