"""Efficiency against this machine's limit.

* Peak: the best FLOP/s of a large dense float32 matrix product (``torch.mm``,
  ``2 n^3`` FLOPs), measured in the same run with the same thread settings.
* Work: FLOPs of PGD training counted by ``torch.utils.flop_counter.FlopCounterMode``
  on one batch (attack + training forward/backward; the counter counts matrix
  products and convolutions, forward and backward, not element-wise ops such as
  BatchNorm, ReLU or pooling), times the batches in an epoch (every batch has the
  same shape: ``drop_last``).
* Time: one real epoch of ``robustpath.train.loop.train_model`` (``seconds_per_epoch``),
  with :mod:`robustpath.models.fuse` on (as shipped) and off, interleaved.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from robustpath import data, models, runtime
from robustpath.attacks.base import PGD, AttackConfig, build_attack
from robustpath.train.loop import TrainConfig, train_model

from .timing import sync


def matmul_peak(n: int, device, reps: int = 5) -> float:
    """Best FLOP/s of an ``n x n @ n x n`` float32 product over ``reps`` tries."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        sync(device)
        start = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def attack_flops_per_image(model, x, y, eps: float, steps: int) -> float:
    """FLOPs (matmul/conv) of one full-mode PGD attack, per image."""
    atk = PGD(AttackConfig(eps=eps, steps=steps, step_size=eps / 4, seed=0))
    with FlopCounterMode(display=False) as fc:
        atk(model, x, y)
    return fc.get_total_flops() / len(x)


@dataclass
class EpochResult:
    n_train: int
    batch: int
    steps: int
    flops_per_batch: float
    attack_share: float   # fraction of the FLOPs spent generating the attack
    epoch_flops: float
    seconds: float        # median epoch time, as shipped
    seconds_before: float  # median epoch time, robustpath.models.fuse off
    achieved: float       # FLOP/s
    peak: float
    peak_n: int

    @property
    def fraction(self) -> float:
        return self.achieved / self.peak


def training_epoch(n_train: int, peak: float, peak_n: int, device, *, steps: int = 5,
                   batch: int = 128, rounds: int = 2, root=None) -> EpochResult:
    """Count and time one PGD-training epoch of cnn-small (defaults of TrainConfig)."""
    cfg = TrainConfig(arch="cnn-small", dataset="fashion-mnist", epochs=1, batch_size=batch,
                      train_subset=n_train, test_subset=16,
                      attack=AttackConfig(eps=0.1, steps=steps),
                      eval_attack=AttackConfig(eps=0.1, steps=1, seed=0))
    x_tr, y_tr = data.load("fashion-mnist", train=True, subset=n_train, seed=1234, root=root,
                           download=False)
    x_te, y_te = data.load("fashion-mnist", train=False, subset=16, seed=4321, root=root,
                           download=False)

    # FLOPs of one batch, exactly as train_model runs it
    torch.manual_seed(0)
    model = models.create("cnn-small", "fashion-mnist").to(device).train()
    attack = build_attack(cfg.attack)
    xb, yb = x_tr[:batch].to(device), y_tr[:batch].to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    with FlopCounterMode(display=False) as fc:
        xa = attack(model, xb, yb)
        attack_flops = fc.get_total_flops()
        loss = F.cross_entropy(model(xa), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    per_batch = fc.get_total_flops()
    n_batches = n_train // batch if n_train > batch else 1

    def epoch(fused: bool) -> float:
        with runtime.use(runtime.Runtime(fuse=fused)):
            _, metrics = train_model(cfg, device=device, progress=False,
                                     data=(x_tr, y_tr, x_te, y_te))
        return metrics["seconds_per_epoch"]

    times: dict[bool, list[float]] = {True: [], False: []}
    for r in range(rounds):
        for cl in ((True, False) if r % 2 == 0 else (False, True)):
            times[cl].append(epoch(cl))
    seconds, seconds_before = statistics.median(times[True]), statistics.median(times[False])
    epoch_flops = per_batch * n_batches
    return EpochResult(n_train=n_train, batch=batch, steps=steps, flops_per_batch=per_batch,
                       attack_share=attack_flops / per_batch, epoch_flops=epoch_flops,
                       seconds=seconds, seconds_before=seconds_before, achieved=epoch_flops / seconds, peak=peak, peak_n=peak_n)
