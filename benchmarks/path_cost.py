"""Path evaluation per t, vmap-batched t, torch.compile, and alignment time vs width.

* :func:`path_eval` - one t of a path on the cnn-small subject: the line between the
  subject and a randomly permuted copy of itself (the same function, far away in
  weight space, so interior points are real interpolations). Splits the time per t
  into BatchNorm recomputation (adversarial inputs, ``bn_batches`` x 128, PGD-5),
  the clean pass and the attack, and times ``evaluate_path(t_batch=1)`` against
  ``t_batch=K`` (vmap over stacked parameters), interleaved.
* :func:`compile_step` - one PGD-training step of cnn-small, eager against
  ``torch.compile``d (median step time after warm-up), plus the compile time.
* :func:`align_vs_width` - activation matching (2,000 images) and weight matching
  between two cnn-small networks at several width multipliers.
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from robustpath import data, models
from robustpath.align import align, apply, random_permutation
from robustpath.attacks.base import AttackConfig, build_attack
from robustpath.attacks.metrics import per_example
from robustpath.paths.bn import recompute_bn
from robustpath.paths.curves import build_curve
from robustpath.paths.evaluate import evaluate_path

from .subjects import Subject
from .timing import interleaved, sync


@dataclass
class PathCost:
    n_test: int
    bn_batches: int
    steps: int
    seconds_bn: float
    seconds_clean: float
    seconds_attack: float
    t_batch: int
    seconds_per_t: float          # evaluate_path, t_batch=1
    seconds_per_t_batched: float  # evaluate_path, t_batch=K
    speedup: float                # median per-round (t_batch=1) / (t_batch=K)
    spread: tuple[float, float]
    flops_per_t: float            # FlopCounterMode: BN recomputation + clean + attack


def path_eval(subject: Subject, *, n_test: int, bn_batches: int, steps: int, t_batch: int,
              rounds: int, device, log, root=None) -> PathCost:
    model = subject.model.eval()
    perm = random_permutation(model, subject.x[:2], seed=0)
    curve = build_curve("line", model, apply(model, perm)).to(device)
    x, y = subject.x[:n_test].to(device), subject.y[:n_test].to(device)
    x_tr, y_tr = data.load("fashion-mnist", train=True, subset=bn_batches * 128, seed=7,
                           root=root, download=False)
    bn_data = [(x_tr[i:i + 128].to(device), y_tr[i:i + 128].to(device))
               for i in range(0, len(x_tr), 128)]
    attack = build_attack(AttackConfig(eps=subject.eps, steps=steps, seed=0))
    bn_attack = build_attack(AttackConfig(eps=subject.eps, steps=5, seed=1))

    def one_t():
        m = curve.model_at(0.5)
        recompute_bn(m, bn_data, batches=bn_batches, inputs="adv", attack=bn_attack)
        per_example(m.eval(), x, y, None, device=device)
        per_example(m, x, y, attack, device=device)

    flops_per_t = count_flops(one_t)
    parts = {"bn": [], "clean": [], "attack": []}
    for _ in range(max(1, rounds)):
        m = curve.model_at(0.5)
        sync(device)
        t0 = time.perf_counter()
        recompute_bn(m, bn_data, batches=bn_batches, inputs="adv", attack=bn_attack)
        sync(device)
        t1 = time.perf_counter()
        per_example(m.eval(), x, y, None, device=device)
        sync(device)
        t2 = time.perf_counter()
        per_example(m, x, y, attack, device=device)
        sync(device)
        t3 = time.perf_counter()
        for k, v in zip(parts, (t1 - t0, t2 - t1, t3 - t2)):
            parts[k].append(v)

    ts = [(i + 1) / (t_batch + 1) for i in range(t_batch)]  # interior points only

    def run(k):
        return lambda: evaluate_path(curve.model_at, ts, x, y, attack, bn_loader=bn_data,
                                     bn_batches=bn_batches, bn_inputs="adv", bn_attack=bn_attack,
                                     device=device, progress=False, t_batch=k)

    log(f"  evaluate_path t_batch=1 vs {t_batch} ({len(ts)} t, {rounds} rounds)")
    tm = interleaved({"per t": run(1), "vmap": run(t_batch)}, rounds, device=device)
    return PathCost(n_test=n_test, bn_batches=bn_batches, steps=steps,
                    seconds_bn=statistics.median(parts["bn"]),
                    seconds_clean=statistics.median(parts["clean"]),
                    seconds_attack=statistics.median(parts["attack"]), t_batch=t_batch,
                    seconds_per_t=tm.median("per t") / len(ts),
                    seconds_per_t_batched=tm.median("vmap") / len(ts),
                    speedup=tm.speedup("vmap", "per t"), spread=tm.spread("vmap", "per t"),
                    flops_per_t=flops_per_t)


def count_flops(fn) -> float:
    """Matrix-product and convolution FLOPs (forward and backward) of ``fn()``."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return float(fc.get_total_flops())


@dataclass
class CurveEpoch:
    n_train: int
    seconds: float          # median epoch time, as shipped
    flops: float
    seconds_before: float   # median epoch time with robustpath.models.fuse off


def curve_epoch(subject: Subject, *, n_train: int, steps: int, device, log, root=None,
                rounds: int = 2) -> CurveEpoch:
    """One epoch of fitting a quadratic Bezier (PGD-``steps`` in the loop, batch 128)
    between the subject and a permuted copy, on ``n_train`` Fashion-MNIST images;
    FLOPs counted on one batch and scaled by the number of batches. Timed with
    :mod:`robustpath.models.fuse` on (as shipped) and off, interleaved."""
    import tempfile

    from robustpath.paths.fit import CurveTrainConfig, train_curve

    model = subject.model.eval()
    perm = random_permutation(model, subject.x[:2], seed=0)
    x, y = data.load("fashion-mnist", train=True, subset=n_train, seed=11, root=root,
                     download=False)
    cfg = CurveTrainConfig(epochs=1, batch_size=128, lr=0.02,
                           attack=AttackConfig(eps=subject.eps, steps=steps),
                           checkpoint_every_epoch=False)
    per_batch = count_flops(lambda: _curve_batches(model, perm, x[:128], y[:128], cfg, device))
    from robustpath import runtime

    times: dict[bool, list[float]] = {True: [], False: []}
    for r in range(rounds):
        for cl in ((True, False) if r % 2 == 0 else (False, True)):
            with runtime.use(runtime.Runtime(fuse=cl)), tempfile.TemporaryDirectory() as tmp:
                curve = build_curve("bezier", model, apply(model, perm))
                metrics = train_curve(curve, x, y, cfg, tmp, device=device, progress=False)
            times[cl].append(metrics["seconds_per_epoch"])
    return CurveEpoch(n_train, statistics.median(times[True]), per_batch * (n_train // 128),
                      statistics.median(times[False]))


def _curve_batches(model, perm, x, y, cfg, device):
    import tempfile

    from robustpath.paths.fit import train_curve

    with tempfile.TemporaryDirectory() as tmp:
        curve = build_curve("bezier", model, apply(model, perm))
        train_curve(curve, x, y, cfg, tmp, device=device, progress=False)


@dataclass
class CompileResult:
    eager: float       # median seconds per PGD-training step
    compiled: float
    compile_seconds: float   # first compiled steps (compilation included) minus eager time
    error: str | None = None


def compile_step(subject: Subject, *, steps: int, batch: int, reps: int, device, log) -> CompileResult:
    """PGD-training steps of a fresh cnn-small, eager vs torch.compile (default mode)."""
    x, y = subject.x.to(device), subject.y.to(device)
    attack = build_attack(AttackConfig(eps=subject.eps, steps=steps))

    def make(compiled: bool):
        torch.manual_seed(0)
        model = models.create("cnn-small", "fashion-mnist").to(device)
        run_model = torch.compile(model) if compiled else model
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        def step(i):
            j = (i * batch) % max(1, len(x) - batch)
            xb, yb = x[j:j + batch], y[j:j + batch]
            xa = attack(run_model, xb, yb)
            run_model.train()
            loss = F.cross_entropy(run_model(xa), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step

    def timed(step, n, offset=0):
        sync(device)
        t0 = time.perf_counter()
        for i in range(n):
            step(offset + i)
        sync(device)
        return time.perf_counter() - t0

    eager = make(False)
    timed(eager, 2)
    eager_s = statistics.median(timed(eager, 1, i) for i in range(reps))
    log("  torch.compile warm-up (compiles the forward and backward graphs) ...")
    try:
        comp = make(True)
        first = timed(comp, 3)
        comp_s = statistics.median(timed(comp, 1, i) for i in range(reps))
    except Exception as e:  # no compiler toolchain, unsupported backend ...
        return CompileResult(eager_s, float("nan"), float("nan"), error=f"{type(e).__name__}: {e}"[:200])
    return CompileResult(eager_s, comp_s, max(0.0, first - 3 * comp_s))


@dataclass
class AlignTime:
    width: float
    units: int          # hidden units permuted (sum over groups)
    activation_s: float
    weight_s: float


def align_vs_width(widths: list[float], *, n_images: int, device, log, root=None) -> list[AlignTime]:
    x, y = data.load("fashion-mnist", train=True, subset=n_images, seed=3, root=root, download=False)
    batches = [(x[i:i + 250].to(device), y[i:i + 250].to(device)) for i in range(0, len(x), 250)]
    out = []
    for w in widths:
        torch.manual_seed(0)
        a = models.create("cnn-small", "fashion-mnist", w).to(device).eval()
        b = copy.deepcopy(a)
        with torch.no_grad():
            for p in b.parameters():
                p.add_(0.5 * p.std() * torch.randn_like(p))
        t0 = time.perf_counter()
        _, perm, _ = align(a, b, method="activation", data=batches)
        t1 = time.perf_counter()
        align(a, b, method="weight", data=None, example_input=x[:2].to(device))
        t2 = time.perf_counter()
        units = sum(len(p) for p in perm.values())
        log(f"  width {w:g}: {units} units, activation {t1 - t0:.2f} s, weight {t2 - t1:.2f} s")
        out.append(AlignTime(w, units, t1 - t0, t2 - t1))
    return out
