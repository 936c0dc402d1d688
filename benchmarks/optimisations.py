"""Before/after for the cheap CPU optimisations of our PGD (full mode, L-inf).

Variants, timed interleaved against ``before`` (the loop of commit 4cb2237, see
:mod:`benchmarks.baseline`), each switching one candidate on:

* ``frozen params``: parameters' ``requires_grad`` off while attacking.
* ``no final forward``: no evaluation pass after the last step with one restart.
* ``+ channels_last input``: the above, inputs in channels-last format.
* ``+ channels_last weights``: the above, the model run with channels-last copies of
  its conv weights, swapped in for the attack and put back afterwards.
* ``after (robustpath PGD)``: the shipped attack.
* ``after, robustpath.models.fuse off``: the shipped attack on the plain model (no folded
  BatchNorm, ReLU before pooling, activations in the model's own layout).
* ``after, 1 thread``: ``torch.set_num_threads(1)`` while attacking (only when
  more than one thread is in use).
* ``torchattacks``, ``torchattacks, channels_last model`` and ``torchattacks,
  robustpath.models.fuse view``: the peer, on the model as given, on a channels-last copy
  (what a user could do by hand) and on our fused view of the model.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from robustpath import runtime
from robustpath.attacks.base import PGD, AttackConfig
from robustpath.models import fuse

from .baseline import pgd_before
from .subjects import Subject
from .timing import interleaved


@dataclass
class OptResult:
    subject: str
    n: int
    steps: int
    seconds: dict[str, float]      # median seconds per variant
    speedup: dict[str, float]      # median per-round speed-up against "before"
    spread: dict[str, tuple[float, float]]
    rounds: int


def _one_thread(fn):
    def run():
        n = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn()
        finally:
            torch.set_num_threads(n)
    return run


def _fuse_off(fn):
    def run():
        with runtime.use(runtime.Runtime(fuse=False)):
            return fn()
    return run


def run(subject: Subject, *, n: int, steps: int, batch: int, rounds: int, device, log) -> OptResult:
    model, eps = subject.model, subject.eps
    x, y = subject.x[:n].to(device), subject.y[:n].to(device)
    step = eps / 4
    after = PGD(AttackConfig(eps=eps, steps=steps, step_size=step, seed=0))
    model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)

    def batched(fn, xx):
        return [fn(xx[i:i + batch], y[i:i + batch]) for i in range(0, len(xx), batch)]

    def before(**kw):
        return lambda: batched(lambda a, b: pgd_before(model, a, b, eps=eps, steps=steps,
                                                       step_size=step, **kw), x)

    import torchattacks

    ta = torchattacks.PGD(model, eps=eps, alpha=step, steps=steps, random_start=True)
    ta_cl = torchattacks.PGD(model_cl, eps=eps, alpha=step, steps=steps, random_start=True)
    model.eval()
    ta_view = torchattacks.PGD(fuse.fast_view(model), eps=eps, alpha=step, steps=steps,
                               random_start=True)
    variants = {
        "before": before(),
        "frozen params": before(freeze=True),
        "no final forward": before(final_forward=False),
        "+ channels_last input": before(final_forward=False, channels_last="input"),
        "+ channels_last weights": before(final_forward=False, channels_last="weights"),
        "after (robustpath PGD)": lambda: batched(lambda a, b: after(model, a, b), x),
    }
    variants["after, robustpath.models.fuse off"] = _fuse_off(variants["after (robustpath PGD)"])
    if torch.get_num_threads() > 1 and device.type == "cpu":
        variants["after, 1 thread"] = _one_thread(variants["after (robustpath PGD)"])
    variants["torchattacks"] = lambda: batched(ta, x)
    variants["torchattacks, channels_last model"] = lambda: batched(ta_cl, x_cl)
    variants["torchattacks, robustpath.models.fuse view"] = lambda: batched(ta_view, x)
    t = interleaved(variants, rounds, warmup=1, device=device,
                    progress=lambda s: log(f"  optimisations, {subject.name}: {s}"))
    return OptResult(subject=subject.name, n=n, steps=steps,
                     seconds={k: t.median(k) for k in variants},
                     speedup={k: t.speedup(k, "before") for k in variants},
                     spread={k: t.spread(k, "before") for k in variants}, rounds=rounds)
