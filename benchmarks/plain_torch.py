"""The quick preset's curve pipeline as a plain PyTorch loop, timed against robustpath.

What a researcher would write without robustpath for the same work (issue 29): the same
``cnn-small`` layers (``robustpath.models.create``, an ordinary ``nn.Sequential``), the
same Fashion-MNIST subsets (``robustpath.data.load_subsets``), the same settings
(``robustpath.config.PRESETS["quick"]``):

* **endpoint training**: per batch of 128, PGD-5 L-inf eps 0.1 step eps/4 with random
  start against the model in eval mode, then an SGD step (Nesterov momentum 0.9, weight
  decay 5e-4, one-cycle lr 0.05 stepped per batch); afterwards clean and PGD-10
  accuracy on the test subset (``robustpath.train.loop.train_model`` does both);
* **curve fitting**: a quadratic Bezier curve (one bend, initialised at the midpoint),
  per batch t ~ U(0, 1), PGD-5 against θ(t) with batch-statistics BatchNorm, SGD
  (Nesterov 0.9, lr 0.02 cosine per batch) on cross-entropy + 5e-4/2 ||θ(t)||²;
* **path evaluation**: at each of 11 evenly spaced t, θ(t) loaded into a copy of the
  network, BatchNorm statistics recomputed on 2 training batches of 128, clean and PGD-10
  (seeded) loss and correctness per test example in batches of 500.

Plain means NCHW, no graph rewrites, no caching, no checkpoints, the usual
``optimizer.zero_grad(); loss.backward(); optimizer.step()``. Its numbers differ from
robustpath's (other RNG streams), the work does not. :func:`compare` times both,
alternating, per stage and end to end (``python -m benchmarks --only plain``).
"""

from __future__ import annotations

import copy
import math
import statistics
import tempfile
import time
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from robustpath import data as data_mod
from robustpath import models

STAGES = ("endpoint training", "curve fitting", "path evaluation")


@dataclass
class Sizes:
    """The quick preset's sizes (defaults); the benchmark may reduce them."""

    train: int = 10000
    test: int = 1000
    epochs: int = 4
    curve_epochs: int = 4
    t_points: int = 11
    batch: int = 128
    eps: float = 0.1
    train_steps: int = 5
    eval_steps: int = 10
    lr: float = 0.05
    curve_lr: float = 0.02
    bn_batches: int = 2


# ------------------------------------------------------------------ the plain loop
def pgd(model: nn.Module, x, y, eps: float, steps: int, g: torch.Generator | None = None):
    """Madry PGD, L-inf, step eps/4, random start; ``model`` as it is (mode untouched)."""
    alpha = eps / 4
    delta = ((torch.rand(x.shape, generator=g) * 2 - 1) * eps + x).clamp(0, 1) - x
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model(x + delta), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, [delta])
        delta = (delta.detach() + alpha * grad.sign()).clamp(-eps, eps)
        delta = (x + delta).clamp(0, 1) - x
    return (x + delta).detach()


def _batches(n: int, batch: int, g: torch.Generator):
    order = torch.randperm(n, generator=g)
    for i in range(n // batch if n > batch else 1):
        yield order[i * batch:(i + 1) * batch]


def train_endpoint(seed: int, x_tr, y_tr, x_te, y_te, s: Sizes) -> nn.Module:
    torch.manual_seed(seed)
    model = models.create("cnn-small", "fashion-mnist")
    opt = torch.optim.SGD(model.parameters(), lr=s.lr, momentum=0.9, nesterov=True,
                          weight_decay=5e-4)
    steps = s.epochs * max(1, len(x_tr) // s.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=s.lr, total_steps=steps,
                                                pct_start=0.3, anneal_strategy="linear")
    g = torch.Generator().manual_seed(seed)
    for _ in range(s.epochs):
        total = 0.0
        for idx in _batches(len(x_tr), s.batch, g):
            xb, yb = x_tr[idx], y_tr[idx]
            model.eval()
            xa = pgd(model, xb, yb, s.eps, s.train_steps)
            model.train()
            loss = F.cross_entropy(model(xa), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
    model.eval()
    evaluate(model, x_te, y_te, s)
    return model


def evaluate(model: nn.Module, x, y, s: Sizes, batch: int = 500) -> dict:
    """Clean and PGD-``eval_steps`` loss / correctness per example (seeded attack)."""
    g = torch.Generator().manual_seed(0)
    out = {"clean_loss": [], "clean_correct": [], "robust_loss": [], "robust_correct": []}
    for i in range(0, len(x), batch):
        xb, yb = x[i:i + batch], y[i:i + batch]
        with torch.no_grad():
            logits = model(xb)
        out["clean_loss"].append(F.cross_entropy(logits, yb, reduction="none"))
        out["clean_correct"].append(logits.argmax(1) == yb)
        xa = pgd(model, xb, yb, s.eps, s.eval_steps, g)
        with torch.no_grad():
            logits = model(xa)
        out["robust_loss"].append(F.cross_entropy(logits, yb, reduction="none"))
        out["robust_correct"].append(logits.argmax(1) == yb)
    return {k: torch.cat(v) for k, v in out.items()}


class PlainBezier:
    """θ(t) = (1-t)² θ0 + 2t(1-t) c + t² θ1 over the flat parameter vector."""

    def __init__(self, a: nn.Module, b: nn.Module):
        self.names = [n for n, _ in a.named_parameters()]
        self.shapes = [p.shape for _, p in a.named_parameters()]
        self.numels = [p.numel() for _, p in a.named_parameters()]
        self.theta_a = torch.cat([p.detach().reshape(-1) for p in a.parameters()])
        self.theta_b = torch.cat([p.detach().reshape(-1) for p in b.parameters()])
        self.control = nn.Parameter((self.theta_a + self.theta_b) / 2)
        self.bufs_a, self.bufs_b = dict(a.named_buffers()), dict(b.named_buffers())
        self.net = copy.deepcopy(a)
        # batch-statistics BatchNorm for training: no running statistics
        self.batch_net = copy.deepcopy(a)
        for m in self.batch_net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.track_running_stats, m.running_mean, m.running_var = False, None, None
                m.num_batches_tracked = None

    def theta(self, t: float) -> torch.Tensor:
        return (1 - t) ** 2 * self.theta_a + 2 * t * (1 - t) * self.control + t ** 2 * self.theta_b

    def params(self, theta: torch.Tensor) -> dict:
        return {n: c.view(sh) for n, sh, c in zip(self.names, self.shapes, theta.split(self.numels))}


def fit_curve(curve: PlainBezier, x_tr, y_tr, s: Sizes, seed: int = 0) -> None:
    opt = torch.optim.SGD([curve.control], lr=s.curve_lr, momentum=0.9, nesterov=True)
    per_epoch = max(1, len(x_tr) // s.batch)
    total = s.curve_epochs * per_epoch
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    step = 0
    for _ in range(s.curve_epochs):
        for idx in _batches(len(x_tr), s.batch, g):
            xb, yb = x_tr[idx], y_tr[idx]
            for group in opt.param_groups:
                group["lr"] = s.curve_lr * 0.5 * (1 + math.cos(math.pi * step / total))
            t = float(torch.rand(()))
            theta = curve.theta(t)
            params = curve.params(theta)
            detached = {k: v.detach() for k, v in params.items()}
            xa = pgd(lambda x, p=detached: functional_call(curve.batch_net, p, (x,)), xb, yb,
                     s.eps, s.train_steps)
            loss = F.cross_entropy(functional_call(curve.batch_net, params, (xa,)), yb)
            loss = loss + 0.5 * 5e-4 * theta.pow(2).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1


def evaluate_path(curve: PlainBezier, x_tr, y_tr, x_te, y_te, s: Sizes) -> list[dict]:
    rows = []
    g = torch.Generator().manual_seed(0)
    bn_idx = list(_batches(len(x_tr), s.batch, g))[:s.bn_batches]
    for t in torch.linspace(0, 1, s.t_points).tolist():
        net = curve.net
        with torch.no_grad():
            for p, v in zip(net.parameters(), curve.params(curve.theta(t)).values()):
                p.copy_(v)
            for name, buf in net.named_buffers():
                if buf.is_floating_point():
                    buf.copy_((1 - t) * curve.bufs_a[name] + t * curve.bufs_b[name])
            # BatchNorm statistics of θ(t): cumulative average over the batches
            for m in net.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.reset_running_stats()
                    m.momentum = None
            net.train()
            for idx in bn_idx:
                net(x_tr[idx])
        net.eval()
        rows.append(evaluate(net, x_te, y_te, s))
    return rows


def plain_pipeline(data, s: Sizes):
    """The plain loop's stages: two endpoints, one Bezier curve, its path; yields the
    seconds of each stage as it ends (so that a caller can interleave stages)."""
    x_tr, y_tr, x_te, y_te = data
    start = time.perf_counter()
    a = train_endpoint(0, x_tr, y_tr, x_te, y_te, s)
    b = train_endpoint(1, x_tr, y_tr, x_te, y_te, s)
    yield time.perf_counter() - start
    start = time.perf_counter()
    curve = PlainBezier(a, b)
    fit_curve(curve, x_tr, y_tr, s)
    yield time.perf_counter() - start
    start = time.perf_counter()
    evaluate_path(curve, x_tr, y_tr, x_te, y_te, s)
    yield time.perf_counter() - start


# ------------------------------------------------------------------ robustpath
def robustpath_pipeline(data, s: Sizes):
    """The same work through robustpath's functions, as its stages call them (endpoint
    checkpoints per epoch and the curve's in a temporary folder; the path on the t grid
    without the point cache or refinement, which the plain loop does not have); yields
    the seconds of each stage as it ends."""
    from robustpath.attacks.base import AttackConfig, build_attack
    from robustpath.paths.curves import build_curve
    from robustpath.paths.evaluate import evaluate_path as rp_evaluate_path
    from robustpath.paths.evaluate import t_grid
    from robustpath.paths.fit import CurveTrainConfig, train_curve
    from robustpath.train.loop import TrainConfig
    from robustpath.train.loop import train_endpoint as rp_train_endpoint

    x_tr, y_tr, x_te, y_te = data
    train_attack = AttackConfig(name="pgd", eps=s.eps, steps=s.train_steps)
    eval_attack = AttackConfig(name="pgd", eps=s.eps, steps=s.eval_steps, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        ends = []
        for seed in (0, 1):
            tc = TrainConfig(seed=seed, epochs=s.epochs, batch_size=s.batch, lr=s.lr,
                             train_subset=s.train, test_subset=s.test, attack=train_attack,
                             eval_attack=eval_attack)
            model, _ = rp_train_endpoint(tc, f"{tmp}/ep{seed}", progress=False,
                                         data=(x_tr, y_tr, x_te, y_te))
            ends.append(model.eval())
        yield time.perf_counter() - start
        start = time.perf_counter()
        curve = build_curve("bezier", ends[0], ends[1], bends=1)
        cc = CurveTrainConfig(epochs=s.curve_epochs, batch_size=s.batch, lr=s.curve_lr, seed=0,
                              attack=train_attack)
        train_curve(curve, x_tr, y_tr, cc, f"{tmp}/curve", progress=False)
        yield time.perf_counter() - start
        start = time.perf_counter()
        rp_evaluate_path(curve, t_grid(s.t_points), x_te, y_te, build_attack(eval_attack),
                         bn_loader=data_mod.Batches(x_tr, y_tr, s.batch, shuffle=True, seed=0),
                         bn_batches=s.bn_batches,
                         bn_attack=build_attack(AttackConfig(name="pgd", eps=s.eps,
                                                             steps=s.train_steps, seed=1)),
                         progress=False)
        yield time.perf_counter() - start


@dataclass
class Comparison:
    sizes: Sizes
    rounds: int
    robustpath: list[dict[str, float]] = field(default_factory=list)
    plain: list[dict[str, float]] = field(default_factory=list)

    def ratios(self, stage: str | None) -> list[float]:
        """Per round: plain seconds / robustpath seconds (> 1: robustpath is faster);
        ``stage=None``: end to end."""
        def total(r, st):
            return sum(r.values()) if st is None else r[st]
        return [total(p, stage) / total(r, stage) for r, p in zip(self.robustpath, self.plain)]

    def median(self, who: str, stage: str | None) -> float:
        rows = getattr(self, who)
        return statistics.median(sum(r.values()) if stage is None else r[stage] for r in rows)


def compare(s: Sizes, rounds: int = 2, root=None, log=None) -> Comparison:
    """Run both pipelines ``rounds`` times, alternating stage by stage (robustpath's
    endpoints, the plain endpoints, robustpath's curve, ...; the order swapped each
    round), so that the load of a shared machine hits both alike."""
    data = data_mod.load_subsets("fashion-mnist", root, s.train, s.test)
    out = Comparison(s, rounds)
    for r in range(rounds):
        order = [("robustpath", robustpath_pipeline), ("plain", plain_pipeline)]
        order = order if r % 2 == 0 else order[::-1]
        runs = {who: fn(data, s) for who, fn in order}
        secs = {who: {} for who, _ in order}
        for stage in STAGES:
            for who, _ in order:
                secs[who][stage] = next(runs[who])
                if log:
                    log(f"round {r + 1}/{rounds} {who}: {stage} {secs[who][stage]:.1f} s")
        for who, _ in order:
            getattr(out, who).append(secs[who])
    return out


def section(c: Comparison, command: str, machine_note: str) -> list[str]:
    """The Markdown section for ``benchmarks/RESULTS.md``."""
    s = c.sizes
    lines = ["## Like-for-like: robustpath against a plain-PyTorch loop of the same work", "",
             (f"`benchmarks/plain_torch.py`: two cnn-small endpoints ({s.train} Fashion-MNIST "
              f"training images, {s.epochs} epochs, batch {s.batch}, PGD-{s.train_steps} eps "
              f"{s.eps:g}), a Bezier curve ({s.curve_epochs} epochs, PGD-{s.train_steps} in the "
              f"loop), its path at {s.t_points} t (BN on {s.bn_batches} batches, clean + "
              f"PGD-{s.eval_steps} on {s.test} test images). Rounds alternate the two "
              f"({c.rounds} rounds); ratio = plain s / robustpath s, median over rounds "
              "(range)."), "",
             f"- command: `{command}`", f"- {machine_note}", "",
             "| stage | robustpath s | plain s | **ratio** (range) |", "|---|---|---|---|"]
    for st in (*STAGES, None):
        rs = c.ratios(st)
        name = st or "**end to end**"
        lines.append(f"| {name} | {c.median('robustpath', st):.1f} | {c.median('plain', st):.1f} "
                     f"| **{statistics.median(rs):.2f}x** ({min(rs):.2f}-{max(rs):.2f}) |")
    lines.append("")
    return lines
