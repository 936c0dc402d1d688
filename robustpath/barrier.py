"""Barrier metrics of a path, with bootstrap confidence intervals over test examples.

For per-t clean / robust accuracy A(t) and loss L(t) on a grid 0 = t_0 < ... < t_K = 1:

* endpoints: A(0), A(1) (reported as their mean, and separately);
* ``*_acc_min`` and ``t_min``: the minimum along the path and where (Tatro et al. 2020);
* ``*_acc_avg``: arc-length-weighted average, trapz(A * speed) / trapz(speed), where
  speed = ||dθ/dt|| (equals the plain average over t for a line);
* ``*_loss_barrier``: max_t [L(t) - ((1 - t) L(0) + t L(1))] (Entezari et al. 2021; with
  robust loss this is the robust loss barrier of Zhao et al. 2020);
* ``*_acc_barrier``: max_t [((1 - t) A(0) + t A(1)) - A(t)].

With refinement points (:func:`robustpath.evaluate.refine_minimum`), every metric
above is computed on the grid only, and ``robust_acc_min_refined`` /
``robust_t_min_refined`` give the minimum over grid *and* refinement points (the
closer bound on the path's true minimum).

Confidence intervals: 95% percentile bootstrap over test examples (the same resample
of examples at every t, seeded), so they are reproducible bit for bit.
"""

from __future__ import annotations

import numpy as np

from .evaluate import PathResult

KINDS = ("clean", "robust")
METRICS = [f"{k}_{m}" for k in KINDS for m in
           ("acc_ends", "acc_a", "acc_b", "acc_min", "t_min", "acc_avg", "acc_barrier",
            "loss_barrier")]
REFINED = ["robust_acc_min_refined", "robust_t_min_refined"]


def _trapz(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    return ((y[..., 1:] + y[..., :-1]) * 0.5 * np.diff(x)).sum(-1)


def metrics_from_curves(ts: np.ndarray, speed: np.ndarray, acc: dict[str, np.ndarray],
                        loss: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Metrics from per-t curves. ``acc[kind]``/``loss[kind]`` have shape [..., T]
    (leading dims are bootstrap replicates); every result has shape [...]."""
    out = {}
    lin = ts  # interpolation weight of endpoint B
    for kind in KINDS:
        a, l_ = acc[kind], loss[kind]
        a0, a1 = a[..., :1], a[..., -1:]
        l0, l1 = l_[..., :1], l_[..., -1:]
        out[f"{kind}_acc_a"] = a[..., 0]
        out[f"{kind}_acc_b"] = a[..., -1]
        out[f"{kind}_acc_ends"] = 0.5 * (a[..., 0] + a[..., -1])
        out[f"{kind}_acc_min"] = a.min(-1)
        out[f"{kind}_t_min"] = ts[a.argmin(-1)]
        out[f"{kind}_acc_avg"] = _trapz(a * speed, ts) / max(_trapz(speed, ts), 1e-30)
        out[f"{kind}_acc_barrier"] = ((1 - lin) * a0 + lin * a1 - a).max(-1)
        out[f"{kind}_loss_barrier"] = (l_ - ((1 - lin) * l0 + lin * l1)).max(-1)
    return out


def path_metrics(res: PathResult, *, bootstrap: int = 1000, seed: int = 0,
                 level: float = 0.95) -> dict[str, dict[str, float]]:
    """Point estimates and bootstrap CIs: ``{metric: {"value", "lo", "hi"}}`` of
    :data:`METRICS` (grid points) and :data:`REFINED` (every point)."""
    full, res = res, res.grid()
    per_t = res.per_t()
    acc = {k: per_t[f"{k}_acc"] for k in KINDS}
    loss = {k: per_t[f"{k}_loss"] for k in KINDS}
    point = metrics_from_curves(res.ts, res.speed, acc, loss)
    n = res.clean_correct.shape[1]
    rng = np.random.default_rng(seed)
    # multinomial resample weights [B, N]: the same examples at every t
    weights = rng.multinomial(n, np.full(n, 1.0 / n), size=bootstrap).astype(np.float64) / n
    b_acc = {k: weights @ getattr(res, f"{k}_correct").astype(np.float64).T for k in KINDS}
    b_loss = {k: weights @ getattr(res, f"{k}_loss").astype(np.float64).T for k in KINDS}
    boot = metrics_from_curves(res.ts, res.speed, b_acc, b_loss)
    # refined minimum: all points, the same example resample
    f_acc = full.robust_correct.astype(np.float64)
    f_loss = full.robust_loss.astype(np.float64)
    b_full = weights @ f_acc.T                               # [B, T_all]
    order = np.lexsort((-f_loss.mean(1), f_acc.mean(1)))     # lowest acc, then highest loss
    point["robust_acc_min_refined"] = f_acc.mean(1)[order[0]]
    point["robust_t_min_refined"] = full.ts[order[0]]
    boot["robust_acc_min_refined"] = b_full.min(-1)
    boot["robust_t_min_refined"] = full.ts[b_full.argmin(-1)]
    alpha = (1 - level) / 2
    out = {}
    for name in METRICS + REFINED:
        lo, hi = np.quantile(boot[name], [alpha, 1 - alpha])
        out[name] = {"value": float(point[name]), "lo": float(lo), "hi": float(hi)}
    return out


def per_t_bands(res: PathResult, *, bootstrap: int = 1000, seed: int = 0,
                level: float = 0.95) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Pointwise bootstrap CI bands ``(lo [T], hi [T])`` for each per-t curve (plots)."""
    res = res.grid()
    n = res.clean_correct.shape[1]
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(n, np.full(n, 1.0 / n), size=bootstrap).astype(np.float64) / n
    alpha = (1 - level) / 2
    out = {}
    for key in ("clean_correct", "robust_correct", "clean_loss", "robust_loss"):
        b = weights @ getattr(res, key).astype(np.float64).T
        out[key.replace("_correct", "_acc")] = tuple(np.quantile(b, [alpha, 1 - alpha], axis=0))
    return out
