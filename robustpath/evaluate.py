"""Path evaluation: at each t of a grid, recompute BatchNorm, then measure clean and
robust accuracy and loss per test example.

A *path* is any callable ``model_at(t) -> nn.Module`` (a curve from
:mod:`robustpath.curves`, or the line between two models). At each t:

1. BatchNorm running statistics are re-estimated (cumulative average over
   ``bn_batches`` training batches, clean or adversarial inputs) - interpolated
   statistics are meaningless at interior t (Tatro et al. 2020, Garipov et al. 2018);
2. clean correctness / CE loss of every test example;
3. robust correctness / CE loss under the configured attack (same seeded attack at
   every t, so differences along t are not attack noise).

Results are kept per example (``[T, N]`` arrays) so that bootstrap confidence
intervals can be computed later (:mod:`robustpath.barrier`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .attacks import Attack
from .bn import recompute_bn
from .metrics import per_example

ARRAYS = ("clean_correct", "robust_correct", "clean_loss", "robust_loss")


@dataclass
class PathResult:
    """Per-example outcomes along one path. ``ts`` [T]; ``speed`` [T] = ||dθ/dt||
    (for arc-length averages); the four arrays have shape [T, N]."""

    ts: np.ndarray
    speed: np.ndarray
    clean_correct: np.ndarray
    robust_correct: np.ndarray
    clean_loss: np.ndarray
    robust_loss: np.ndarray

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"ts": self.ts, "speed": self.speed, **{k: getattr(self, k) for k in ARRAYS}}

    @classmethod
    def from_arrays(cls, d) -> PathResult:
        return cls(ts=np.asarray(d["ts"], dtype=np.float64),
                   speed=np.asarray(d["speed"], dtype=np.float64),
                   **{k: np.asarray(d[k]) for k in ARRAYS})

    def per_t(self) -> dict[str, np.ndarray]:
        """Per-t means: accuracies and losses, each shape [T]."""
        return {k.replace("_correct", "_acc"): getattr(self, k).astype(np.float64).mean(1)
                for k in ARRAYS}


def t_grid(points: int) -> np.ndarray:
    """``points`` evenly spaced t in [0, 1], endpoints included (Tatro et al.: 65)."""
    return np.linspace(0.0, 1.0, int(points))


def evaluate_path(model_at: Callable[[float], nn.Module], ts: Sequence[float], x_test: torch.Tensor,
                  y_test: torch.Tensor, attack: Attack, *, bn_loader=None, bn_batches: int = 10,
                  bn_inputs: str = "clean", bn_attack: Attack | None = None,
                  speed: Sequence[float] | None = None, batch_size: int = 500,
                  device: str | torch.device = "cpu", progress: bool = True,
                  desc: str = "path") -> PathResult:
    """Evaluate ``model_at(t)`` for every t in ``ts`` on the test examples.

    ``bn_loader`` (iterable of training batches) is required for models with BN;
    ``bn_inputs="adv"`` re-estimates the statistics on ``bn_attack``'s adversarial
    examples against the model at t. Returns a :class:`PathResult`.
    """
    ts = np.asarray(ts, dtype=np.float64)
    out = {k: [] for k in ARRAYS}
    # the same BN batches at every t, so differences along t are not sampling noise
    bn_data = list(itertools.islice(iter(bn_loader), bn_batches)) if bn_loader is not None else None
    for t in tqdm(ts, desc=desc, disable=not progress, unit="t", leave=False):
        model = model_at(float(t)).to(device)
        if bn_data is not None:
            recompute_bn(model, bn_data, batches=bn_batches, inputs=bn_inputs, attack=bn_attack)
        model.eval()
        clean = per_example(model, x_test, y_test, None, batch_size=batch_size, device=device)
        robust = per_example(model, x_test, y_test, attack, batch_size=batch_size, device=device)
        out["clean_correct"].append(clean.correct.numpy())
        out["clean_loss"].append(clean.loss.numpy())
        out["robust_correct"].append(robust.correct.numpy())
        out["robust_loss"].append(robust.loss.numpy())
    sp = np.ones_like(ts) if speed is None else np.asarray(speed, dtype=np.float64)
    return PathResult(ts=ts, speed=sp, **{k: np.stack(v) for k, v in out.items()})


def curve_speed(params_at: Callable[[float], dict[str, torch.Tensor]], ts: Sequence[float],
                h: float = 1e-3) -> np.ndarray:
    """||dθ/dt|| at each t by central differences (one-sided at the ends), for the
    arc-length-weighted averages of Tatro et al.'s tables."""
    speeds = []
    for t in ts:
        lo, hi = max(0.0, t - h), min(1.0, t + h)
        with torch.no_grad():
            a, b = params_at(lo), params_at(hi)
            sq = sum(float((b[k].double() - a[k].double()).pow(2).sum()) for k in a)
        speeds.append(sq ** 0.5 / (hi - lo))
    return np.asarray(speeds)
