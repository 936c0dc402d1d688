"""Path evaluation: at each t of a grid, recompute BatchNorm, then measure clean and
robust accuracy and loss per test example.

A *path* is any callable ``model_at(t) -> nn.Module`` (a curve from
:mod:`robustpath.paths.curves`, or the line between two models). At each t:

1. BatchNorm running statistics are re-estimated (cumulative average over
   ``bn_batches`` training batches, clean or adversarial inputs) - interpolated
   statistics are meaningless at interior t (Tatro et al. 2020, Garipov et al. 2018);
2. clean correctness / CE loss of every test example;
3. robust correctness / CE loss under the configured attack (same seeded attack at
   every t, so differences along t are not attack noise).

Results are kept per example (``[T, N]`` arrays) so that bootstrap confidence
intervals can be computed later (:mod:`robustpath.stats.barrier`).
"""

from __future__ import annotations

import hashlib
import io
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from robustpath import progress as progress_mod
from robustpath.attacks.base import Attack
from robustpath.attacks.metrics import per_example
from robustpath.errors import UserError
from robustpath.io.store import atomic_write_bytes
from robustpath.paths.bn import has_batchnorm
from robustpath.paths.bn import recompute_bn as _recompute_bn

ARRAYS = ("clean_correct", "robust_correct", "clean_loss", "robust_loss")


@dataclass
class PathResult:
    """Per-example outcomes along one path. ``ts`` [T] (sorted); ``speed`` [T] =
    ||dθ/dt|| (for arc-length averages); the four arrays have shape [T, N].

    ``refined`` [T] bool marks points added by :func:`refine_minimum` around the grid's
    minimum (None: grid only). Grid metrics (averages, the grid minimum) use
    :meth:`grid` only; the refined minimum uses every point.
    """

    ts: np.ndarray
    speed: np.ndarray
    clean_correct: np.ndarray
    robust_correct: np.ndarray
    clean_loss: np.ndarray
    robust_loss: np.ndarray
    refined: np.ndarray | None = None

    def to_arrays(self) -> dict[str, np.ndarray]:
        out = {"ts": self.ts, "speed": self.speed, **{k: getattr(self, k) for k in ARRAYS}}
        if self.refined is not None and self.refined.any():
            out["refined"] = self.refined.astype(np.bool_)
        return out

    @classmethod
    def from_arrays(cls, d) -> PathResult:
        keys = d.files if hasattr(d, "files") else d.keys()
        refined = np.asarray(d["refined"], dtype=np.bool_) if "refined" in keys else None
        return cls(ts=np.asarray(d["ts"], dtype=np.float64),
                   speed=np.asarray(d["speed"], dtype=np.float64),
                   **{k: np.asarray(d[k]) for k in ARRAYS}, refined=refined)

    @property
    def is_refined(self) -> np.ndarray:
        """[T] bool: True for refinement points (all False for a grid-only result)."""
        return (np.zeros(len(self.ts), dtype=np.bool_) if self.refined is None
                else np.asarray(self.refined, dtype=np.bool_))

    def grid(self) -> PathResult:
        """The grid points only (the result without its refinement points)."""
        if self.refined is None or not self.refined.any():
            return self
        keep = ~self.is_refined
        return PathResult(ts=self.ts[keep], speed=self.speed[keep],
                          **{k: getattr(self, k)[keep] for k in ARRAYS})

    def merged(self, other: PathResult) -> PathResult:
        """This result with ``other``'s points added as refinement points, sorted by t."""
        ts = np.concatenate([self.ts, other.ts])
        order = np.argsort(ts, kind="stable")
        flags = np.concatenate([self.is_refined, np.ones(len(other.ts), dtype=np.bool_)])
        return PathResult(ts=ts[order], speed=np.concatenate([self.speed, other.speed])[order],
                          **{k: np.concatenate([getattr(self, k), getattr(other, k)])[order]
                             for k in ARRAYS}, refined=flags[order])

    def per_t(self) -> dict[str, np.ndarray]:
        """Per-t means: accuracies and losses, each shape [T]."""
        return {k.replace("_correct", "_acc"): getattr(self, k).astype(np.float64).mean(1)
                for k in ARRAYS}

    def to_dataframe(self):
        """One row per t: ``t``, ``speed``, ``clean_acc``, ``clean_loss``, ``robust_acc``,
        ``robust_loss`` (means over the N examples; accuracies are fractions) and
        ``point`` (``grid`` or ``refine``), as ``records.csv`` holds them."""
        import pandas as pd

        per_t = self.per_t()
        return pd.DataFrame({"t": self.ts, "speed": self.speed,
                             **{k: per_t[k] for k in ("clean_acc", "clean_loss", "robust_acc",
                                                      "robust_loss")},
                             "point": np.where(self.is_refined, "refine", "grid")})

    def _summary(self) -> str:
        r = self.per_t()["robust_acc"]
        i = int(np.argmin(r))
        return (f"{len(self.ts)} t x {self.clean_correct.shape[1]} examples; robust acc "
                f"{100 * r[0]:.1f}% at t=0, {100 * r[-1]:.1f}% at t=1, "
                f"min {100 * r[i]:.1f}% at t={self.ts[i]:.3g}")

    def __repr__(self) -> str:  # not the [T, N] arrays (dataclass repr printed them all)
        return f"PathResult({self._summary()})"

    def _repr_html_(self) -> str:
        frame = self.to_dataframe()
        return (f"<p><b>PathResult</b>: {self._summary()}</p>"
                + frame.to_html(index=False, float_format=lambda v: f"{v:.4g}"))


def _check_ts(ts) -> np.ndarray:
    """``ts`` as a 1-d float64 array of values in [0, 1]; UserError otherwise."""
    try:
        arr = np.asarray(ts, dtype=np.float64)
    except (TypeError, ValueError):
        raise UserError(f"ts must be a sequence of numbers in [0, 1], got {ts!r}") from None
    if arr.ndim != 1 or arr.size == 0:
        raise UserError(f"ts must be a non-empty 1-d sequence of t in [0, 1], got shape {arr.shape}")
    if not np.all((arr >= 0.0) & (arr <= 1.0)):
        raise UserError(f"every t must lie in [0, 1], got {arr.min():g} .. {arr.max():g}")
    return arr


def t_grid(points: int) -> np.ndarray:
    """``points`` evenly spaced t in [0, 1], endpoints included (Tatro et al.: 65)."""
    return np.linspace(0.0, 1.0, int(points))


def evaluate_path(model_at: Callable[[float], nn.Module], ts: Sequence[float], x_test: torch.Tensor,
                  y_test: torch.Tensor, attack: Attack, *, bn_loader=None, bn_batches: int = 10,
                  bn_inputs: str = "clean", bn_attack: Attack | None = None,
                  speed: Sequence[float] | None = None, batch_size: int = 500,
                  device: str | torch.device = "cpu", progress: bool = True,
                  desc: str = "path", t_batch: int = 1,
                  point_cache: PointCache | None = None,
                  recompute_ends: bool = True, recompute_bn: bool = True,
                  renorm: Callable[[nn.Module, float], nn.Module] | None = None) -> PathResult:
    """Evaluate ``model_at(t)`` for every t in ``ts`` on the test examples.

    ``model_at``: a callable ``t -> nn.Module`` or a :class:`robustpath.paths.curves.Curve`
    (its ``model_at`` is used). ``ts``: [T] values in [0, 1]. ``x_test`` [N, C, H, W]
    pixels in [0, 1], ``y_test`` [N] int64.

    ``bn_loader`` (iterable of ``(x, y)`` training batches) is required for models with
    BatchNorm: without it the interior points would be evaluated with interpolated
    running statistics, so a BatchNorm network without ``bn_loader`` raises
    :class:`UserError` unless ``recompute_bn=False`` says to keep the statistics as
    they are (e.g. a path whose every point is a published network).
    ``bn_inputs="adv"`` re-estimates the statistics on ``bn_attack``'s adversarial
    examples against the model at t.

    ``speed`` [T] = ||dθ/dt|| for the arc-length averages; when omitted and the path is
    a curve (``model_at`` is a Curve or its bound ``model_at``), it is computed with
    :func:`curve_speed` (a path of zero length, speed below 1e-3 ||θ(0)|| everywhere,
    gets unit speed); for any other callable it is 1 (unit speed: averages over t).

    ``t_batch`` > 1 evaluates that many t at once: BatchNorm is recomputed per t, then
    the clean pass and the attack run on one :class:`robustpath.paths.stacked.StackedModel`
    (``torch.func.vmap`` over the stacked parameters) with each test batch repeated
    ``t_batch`` times. Same results as ``t_batch=1`` up to float rounding (tested);
    whether it is faster depends on the device and model (``benchmarks/``).

    ``point_cache`` (see :class:`PointCache`) skips points whose network was already
    evaluated with the same settings, e.g. the shared endpoints of several paths.
    ``recompute_ends=False`` keeps the networks at t = 0 and t = 1 exactly as given
    (their own BatchNorm statistics: published models are measured as published).
    ``renorm(model, t) -> model`` replaces BatchNorm recomputation at every t (e.g.
    :class:`robustpath.paths.repair.PathRenorm`: REPAIR); it excludes ``bn_loader``.
    Returns a :class:`PathResult`.
    """
    if t_batch < 1:
        raise UserError(f"t_batch must be >= 1, got {t_batch}")
    curve = model_at if hasattr(model_at, "params_at") else getattr(model_at, "__self__", None)
    if not hasattr(curve, "params_at"):
        curve = None
    elif hasattr(model_at, "params_at"):
        model_at = curve.model_at
    if not callable(model_at):
        raise UserError("evaluate_path needs a curve or a callable model_at(t) -> nn.Module, "
                        f"got {type(model_at).__name__}")
    ts = _check_ts(ts)
    if len(x_test) != len(y_test) or len(y_test) == 0:
        raise UserError(f"x_test and y_test need the same, non-zero length, "
                        f"got {len(x_test)} and {len(y_test)}")
    if renorm is not None and bn_loader is not None:
        raise UserError("evaluate_path got a bn_loader and renorm: pass one or the other")
    if bn_loader is not None and not recompute_bn:
        raise UserError("evaluate_path got a bn_loader and recompute_bn=False: pass one or the other")
    if speed is None and curve is not None:
        with torch.no_grad():
            speed = curve_speed(curve.params_at, ts)
            size = sum(float(p.double().pow(2).sum()) for p in curve.params_at(0.0).values())
        # a path of zero length (up to float rounding): every weighting gives one value
        if not np.any(speed > 1e-3 * size ** 0.5):
            speed = np.ones_like(ts)
    if speed is not None and np.shape(speed) != ts.shape:
        raise UserError(f"speed has shape {np.shape(speed)}, expected {ts.shape} (one per t)")
    rows: dict[int, dict[str, np.ndarray]] = {}
    # the same BN batches at every t, so differences along t are not sampling noise
    bn_data = list(itertools.islice(iter(bn_loader), bn_batches)) if bn_loader is not None else None
    if bn_data is not None and not bn_data:
        raise UserError("bn_loader yielded no batches (BatchNorm needs training data)")
    bar = progress_mod.bar(total=len(ts), desc=desc, unit="t", progress=progress)
    pending: list[tuple[int, nn.Module, str | None]] = []

    def flush():
        if not pending:
            return
        models = [m for _, m, _ in pending]
        if len(models) == 1:
            res = [_evaluate_point(models[0], x_test, y_test, attack, batch_size, device)]
        else:
            res = _evaluate_stacked(models, x_test, y_test, attack, batch_size, device)
        for (i, _, key), r in zip(pending, res):
            rows[i] = r
            if point_cache is not None and key is not None:
                point_cache.put(key, r)
        bar.update(len(pending))
        pending.clear()

    for i, t in enumerate(ts):
        model = model_at(float(t)).to(device)
        if (bn_data is None and recompute_bn and renorm is None
                and (recompute_ends or 0.0 < float(t) < 1.0) and has_batchnorm(model)):
            raise UserError(
                f"the network at t={float(t):g} has BatchNorm and evaluate_path got no bn_loader: "
                "its interpolated running statistics are meaningless; pass bn_loader= (training "
                "batches), or recompute_bn=False to evaluate the statistics as they are")
        key = point_cache.key(model) if point_cache is not None else None
        hit = point_cache.get(key) if key is not None else None
        if hit is not None:
            rows[i] = hit
            bar.update(1)
            continue
        if renorm is not None:
            model = renorm(model, float(t))
        elif bn_data is not None and (recompute_ends or 0.0 < float(t) < 1.0):
            _recompute_bn(model, bn_data, batches=bn_batches, inputs=bn_inputs, attack=bn_attack)
        pending.append((i, model.eval(), key))
        if len(pending) >= t_batch:
            flush()
    flush()
    bar.close()
    sp = np.ones_like(ts) if speed is None else np.asarray(speed, dtype=np.float64)
    return PathResult(ts=ts, speed=sp,
                      **{k: np.stack([rows[i][k] for i in range(len(ts))]) for k in ARRAYS})


def refine_minimum(result: PathResult, evaluate: Callable[[np.ndarray], PathResult],
                   rounds: int = 2) -> PathResult:
    """Refine the minimum of robust accuracy along a path between grid points.

    Starting from the grid point ``t_i`` with the lowest robust accuracy (ties: the
    higher robust loss), each round evaluates the two midpoints ``t* - h/2`` and
    ``t* + h/2`` of the bracket ``[t* - h, t* + h]`` (``h`` = the grid spacing at
    first), moves ``t*`` to the worst of the three and halves ``h``: a discrete
    bisection that spends ``2 * rounds`` extra points and resolves a dip one grid
    point wide to ``h / 2**rounds``. Midpoints outside [0, 1] are skipped.
    ``evaluate(ts) -> PathResult`` measures new points exactly as the grid's
    (same BatchNorm batches, same attack, same examples). Returns the result with the
    new points merged and marked ``refined``.
    """
    if rounds < 1 or len(result.ts) < 2:
        return result
    per = result.per_t()

    def worse(i: int, j: int, acc, loss) -> bool:
        return acc[i] < acc[j] or (acc[i] == acc[j] and loss[i] > loss[j])

    acc, loss = per["robust_acc"], per["robust_loss"]
    best = 0
    for i in range(1, len(acc)):
        if worse(i, best, acc, loss):
            best = i
    t_star = float(result.ts[best])
    h = float(np.min(np.diff(result.ts)))
    merged = result
    for _ in range(rounds):
        cand = [t for t in (t_star - h / 2, t_star + h / 2)
                if 0.0 < t < 1.0 and not np.isclose(merged.ts, t, atol=1e-12).any()]
        if cand:
            merged = merged.merged(evaluate(np.asarray(cand, dtype=np.float64)))
            per = merged.per_t()
            acc, loss = per["robust_acc"], per["robust_loss"]
            idx = [int(np.argmin(np.abs(merged.ts - t))) for t in (t_star, *cand)]
            b = idx[0]
            for i in idx[1:]:
                if worse(i, b, acc, loss):
                    b = i
            t_star = float(merged.ts[b])
        h /= 2
    return merged


def min_point(result: PathResult, kind: str = "robust") -> tuple[float, float]:
    """``(t, accuracy)`` of the lowest ``kind`` accuracy over every point of ``result``
    (grid and refinement; ties: the higher loss, then the first)."""
    per = result.per_t()
    acc, loss = per[f"{kind}_acc"], per[f"{kind}_loss"]
    order = np.lexsort((-loss, acc))
    i = int(order[0])
    return float(result.ts[i]), float(acc[i])


def _evaluate_point(model: nn.Module, x_test, y_test, attack, batch_size, device) -> dict:
    clean = per_example(model, x_test, y_test, None, batch_size=batch_size, device=device)
    robust = per_example(model, x_test, y_test, attack, batch_size=batch_size, device=device)
    return {"clean_correct": clean.correct.numpy(), "clean_loss": clean.loss.numpy(),
            "robust_correct": robust.correct.numpy(), "robust_loss": robust.loss.numpy()}


def _evaluate_stacked(models: list[nn.Module], x_test, y_test, attack, batch_size,
                      device) -> list[dict]:
    """Clean and attacked outcomes of K eval-mode models on one StackedModel."""
    from robustpath.paths.stacked import StackedModel

    k = len(models)
    stacked = StackedModel(models).to(device)
    n = len(x_test)
    out = {name: [] for name in ARRAYS}
    for i in range(0, n, batch_size):
        xb = x_test[i:i + batch_size].to(device)
        yb = y_test[i:i + batch_size].to(device)
        b = len(xb)
        xr, yr = xb.repeat(k, *([1] * (xb.dim() - 1))), yb.repeat(k)
        for prefix, x_in in (("clean", xr), ("robust", None)):
            if x_in is None:
                x_in = attack(stacked, xr, yr)
            with torch.no_grad():
                logits = stacked(x_in)
                correct = (logits.argmax(1) == yr).view(k, b).cpu()
                loss = F.cross_entropy(logits, yr, reduction="none").float().view(k, b).cpu()
            out[f"{prefix}_correct"].append(correct)
            out[f"{prefix}_loss"].append(loss)
    cat = {name: torch.cat(v, dim=1).numpy() for name, v in out.items()}
    return [{name: cat[name][j] for name in ARRAYS} for j in range(k)]


class PointCache:
    """Per-point results on disk, keyed by the network's exact state.

    A point's outcome is a function of its parameters and buffers (before BN
    recomputation) and of the evaluation settings; ``folder`` must be specific to
    the settings (``stages.path_eval`` names it by their hash). Paths that share a
    network - every path of a pair starts at model A, and the line and the curves
    between A and the same (aligned) B end at it - then evaluate it once.
    """

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    @staticmethod
    def key(model: nn.Module) -> str:
        h = hashlib.sha256()
        for name, t in itertools.chain(model.named_parameters(), model.named_buffers()):
            h.update(name.encode())
            h.update(t.detach().to("cpu").reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
        return h.hexdigest()[:20]

    def get(self, key: str) -> dict[str, np.ndarray] | None:
        path = self.folder / f"{key}.npz"
        if not path.is_file():
            return None
        try:
            with np.load(path) as z:
                got = {k: z[k] for k in ARRAYS}
        except Exception:
            return None  # damaged: recomputed
        return got

    def put(self, key: str, arrays: dict[str, np.ndarray]) -> None:
        buf = io.BytesIO()
        np.savez_compressed(buf, **{k: arrays[k] for k in ARRAYS})
        atomic_write_bytes(self.folder / f"{key}.npz", buf.getvalue())


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
