"""Barrier metrics of a path, with bootstrap confidence intervals over test examples.

For per-t clean / robust accuracy A(t) and loss L(t) on a grid 0 = t_0 < ... < t_K = 1:

* endpoints: A(0), A(1) (reported as their mean, and separately);
* ``*_acc_min`` and ``t_min``: the minimum along the path and where (Tatro et al. 2020);
* ``*_acc_avg``: arc-length-weighted average, trapz(A * speed) / trapz(speed), where
  speed = ||dθ/dt|| (equals the plain average over t for a line);
* ``*_loss_barrier``: max_t [L(t) - ((1 - t) L(0) + t L(1))] (Entezari et al. 2021; with
  robust loss this is the robust loss barrier of Zhao et al. 2020);
* ``*_acc_barrier``: max_t [((1 - t) A(0) + t A(1)) - A(t)].

With refinement points (:func:`robustpath.paths.evaluate.refine_minimum`), every metric
above is computed on the grid only (tables label them "grid"), and the ``*_refined``
metrics use every evaluated point, grid *and* refinement: ``robust_acc_min_refined`` /
``robust_t_min_refined`` (the closer bound on the path's true minimum; ties: the
higher robust loss, then the first point, as :func:`robustpath.paths.evaluate.min_point`
picks the strong stage's worst t), ``robust_loss_barrier_refined`` and
``robust_acc_barrier_refined`` (the maxima over all points; never below the grid's).

Confidence intervals: 95% percentile bootstrap over test examples (the same resample
of examples at every t, seeded), so they are reproducible bit for bit; a replicate's
refined minimum is picked with the same tie-break as the reported one. With fewer than
:data:`MIN_EXAMPLES` test examples or :data:`MIN_RESAMPLES` resamples no interval is
given (``lo`` / ``hi`` NaN; :func:`ci_note` says why): a percentile interval from
so few is not a 95 % interval (zero-width on one example, off its own point with one
resample).
"""

from __future__ import annotations

import numpy as np

from robustpath.paths.evaluate import PathResult

KINDS = ("clean", "robust")
METRICS = [f"{k}_{m}" for k in KINDS for m in
           ("acc_ends", "acc_a", "acc_b", "acc_min", "t_min", "acc_avg", "acc_barrier",
            "loss_barrier")]
REFINED = ["robust_acc_min_refined", "robust_t_min_refined", "robust_loss_barrier_refined",
           "robust_acc_barrier_refined"]
#: below these, no bootstrap interval is printed (issue 25 D5)
MIN_EXAMPLES = 30
MIN_RESAMPLES = 30


def ci_note(n: int, bootstrap: int) -> str | None:
    """Why there is no interval (``None`` when there is one): too few test examples or
    bootstrap resamples."""
    why = [f"{n} test examples" if n < MIN_EXAMPLES else "",
           f"{bootstrap} bootstrap resamples" if bootstrap < MIN_RESAMPLES else ""]
    why = [w for w in why if w]
    return (f"no interval: {' and '.join(why)} (an interval needs >= {MIN_EXAMPLES} of each)"
            if why else None)


def refined_min_index(acc: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """Index of the lowest accuracy along the last axis of ``acc`` [..., T]; ties (within
    1e-12): the highest ``loss``, then the first. The rule of
    :func:`robustpath.paths.evaluate.min_point`, for a point estimate and its bootstrap alike."""
    low = acc <= acc.min(-1, keepdims=True) + 1e-12
    return np.where(low, loss, -np.inf).argmax(-1)


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
    # every point (grid + refinement), the same example resample
    f_acc = full.robust_correct.astype(np.float64)
    f_loss = full.robust_loss.astype(np.float64)
    for tag, a, l_ in (("point", f_acc.mean(1), f_loss.mean(1)),
                       ("boot", weights @ f_acc.T, weights @ f_loss.T)):   # [T_all], [B, T_all]
        into = point if tag == "point" else boot
        i = refined_min_index(a, l_)
        into["robust_acc_min_refined"] = np.take_along_axis(a, i[..., None], -1)[..., 0]
        into["robust_t_min_refined"] = full.ts[i]
        lin = full.ts
        into["robust_loss_barrier_refined"] = (
            l_ - ((1 - lin) * l_[..., :1] + lin * l_[..., -1:])).max(-1)
        into["robust_acc_barrier_refined"] = (
            (1 - lin) * a[..., :1] + lin * a[..., -1:] - a).max(-1)
    alpha = (1 - level) / 2
    no_ci = ci_note(n, bootstrap) is not None
    out = {}
    for name in METRICS + REFINED:
        lo, hi = (np.nan, np.nan) if no_ci else np.quantile(boot[name], [alpha, 1 - alpha])
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
