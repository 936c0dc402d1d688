"""Our PGD against torchattacks' PGD: same model, data, eps, steps, step size.

Three variants per subject, timed interleaved (see :mod:`benchmarks.timing`):

* ``torchattacks``: ``torchattacks.PGD(model, eps, alpha, steps, random_start=True)``,
  built once, called per batch.
* ``ours (full)``: ``robustpath.attacks.base.PGD`` - every example attacked for all steps
  (the robust-loss mode).
* ``ours (early stop)``: ``AttackConfig.early_stop=True`` - accuracy-only mode,
  examples frozen once misclassified.

Robust accuracy of each is measured on its own output, outside the timed region.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from robustpath.attacks.base import PGD, AttackConfig

from .subjects import Subject
from .timing import interleaved


@dataclass
class PGDResult:
    subject: str
    eps: float
    steps: int
    step_size: float
    batch: int
    n: int
    clean_acc: float
    img_per_s: dict[str, float]
    robust_acc: dict[str, float]
    speedup_full: float            # torchattacks time / ours (full) time
    speedup_full_range: tuple[float, float]
    speedup_es: float              # torchattacks time / ours (early stop) time
    speedup_es_range: tuple[float, float]
    rounds: int


def _batched(attack, x, y, batch, device):
    outs = []
    for i in range(0, len(x), batch):
        outs.append(attack(x[i:i + batch].to(device), y[i:i + batch].to(device)))
    return outs


def _robust_acc(model, outs, y, batch, device) -> float:
    hits = 0
    with torch.no_grad():
        for k, xa in enumerate(outs):
            yb = y[k * batch:(k + 1) * batch].to(device)
            hits += int((model(xa).argmax(1) == yb).sum())
    return hits / len(y)


def run(subject: Subject, *, steps: int, batch: int, rounds: int, device, log) -> PGDResult:
    import torchattacks

    model, x, y, eps = subject.model, subject.x, subject.y, subject.eps
    step_size = eps / 4
    ours_full = PGD(AttackConfig(eps=eps, steps=steps, step_size=step_size, seed=0))
    ours_es = PGD(AttackConfig(eps=eps, steps=steps, step_size=step_size, seed=0, early_stop=True))
    ta = torchattacks.PGD(model, eps=eps, alpha=step_size, steps=steps, random_start=True)
    fns = {
        "torchattacks": lambda: _batched(ta, x, y, batch, device),
        "ours (full)": lambda: _batched(lambda a, b: ours_full(model, a, b), x, y, batch, device),
        "ours (early stop)": lambda: _batched(lambda a, b: ours_es(model, a, b), x, y, batch, device),
    }
    torch.manual_seed(0)
    acc = {name: _robust_acc(model, fn(), y, batch, device) for name, fn in fns.items()}
    t = interleaved(fns, rounds, warmup=0, device=device,
                    progress=lambda s: log(f"  {subject.name}: {s}"))
    return PGDResult(
        subject=subject.name, eps=eps, steps=steps, step_size=step_size, batch=batch, n=len(x),
        clean_acc=subject.clean_acc,
        img_per_s={name: len(x) / t.median(name) for name in fns},
        robust_acc=acc,
        speedup_full=t.speedup("ours (full)", "torchattacks"),
        speedup_full_range=t.spread("ours (full)", "torchattacks"),
        speedup_es=t.speedup("ours (early stop)", "torchattacks"),
        speedup_es_range=t.spread("ours (early stop)", "torchattacks"),
        rounds=rounds)
