"""Many models at once: the robust soup, the triangle of three models, the barrier matrix.

Given N >= 3 endpoints aligned into one basin (:mod:`robustpath.soup.merge`), every
network measured here is a convex combination ``sum_k λ_k θ_k`` of the aligned
models (:func:`robustpath.soup.merge.mix`), and every one of them is measured the way
:func:`robustpath.paths.evaluate.evaluate_path` measures a point of a path
(:class:`PointEval`): BatchNorm running statistics recomputed on the same training
batches (clean or adversarial inputs, ``bn_inputs``; the vertices too, as the bench
does at t = 0 and 1), then clean and robust (the evaluation attack, e.g. PGD-10)
correctness and loss of every test example.

* :func:`soup` - the merged model: the uniform average ``λ = (1/N, ..., 1/N)``
  (Wortsman et al. 2022's uniform soup, here of adversarially trained, aligned
  networks: the "robust soup"), BatchNorm reset.
* :func:`triangle` - the 2-simplex spanned by models 0, 1, 2 on the barycentric grid
  ``λ = (a, b, c) / K`` with ``a + b + c = K``: ``(K + 1)(K + 2) / 2`` points
  (K = 8: 45); plotted by :mod:`robustpath.soup.ternary`.
* :func:`pair_lines` / :func:`barrier_table` - the line between every pair (i, j) on
  ``t = k / K`` and its barrier metrics (:func:`robustpath.stats.barrier.path_metrics`:
  robust accuracy barrier ``max_t [(1 - t) A(0) + t A(1) - A(t)]``, robust loss
  barrier, minimum) with bootstrap CIs. The pair's line points use the same weights,
  bit for bit, as the triangle's edge points, so with N = 3 the matrix costs nothing
  beyond the triangle (per-point cache, :class:`robustpath.io.cache.BoundPointCache`).

``python -m robustpath.soup`` runs it all as engine nodes (:mod:`robustpath.soup.nodes`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from robustpath import progress as progress_mod
from robustpath.attacks.base import Attack
from robustpath.attacks.metrics import per_example
from robustpath.errors import UserError
from robustpath.io.cache import BoundPointCache
from robustpath.io.records import PathRecord
from robustpath.paths.bn import has_batchnorm, recompute_bn
from robustpath.paths.evaluate import ARRAYS, PathResult
from robustpath.soup.merge import mix


@dataclass
class PointEval:
    """How one network is measured. ``x_test`` ``[N, C, H, W]`` in [0, 1], ``y_test``
    ``[N]``; ``attack(model, x, y)`` the evaluation attack (seeded: the same at every
    point); ``bn_data``: the list of training batches every point's BatchNorm is
    re-estimated on (cumulative average, :func:`robustpath.paths.bn.recompute_bn`),
    ``bn_inputs`` ``clean`` or ``adv`` (then ``bn_attack`` makes the inputs);
    ``cache``: per-point results keyed by the network's exact state (resume)."""

    x_test: torch.Tensor
    y_test: torch.Tensor
    attack: Attack
    bn_data: list | None = None
    bn_inputs: str = "clean"
    bn_attack: Attack | None = None
    device: str | torch.device = "cpu"
    cache: BoundPointCache | None = None
    batch_size: int = 500
    renorm: Callable[[nn.Module, np.ndarray], nn.Module] | None = None

    def __call__(self, model: nn.Module, weights: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """``{clean_correct, robust_correct, clean_loss, robust_loss}``, each ``[N]``.
        ``weights``: the point's barycentric coordinates, for ``renorm`` (e.g.
        :class:`SimplexRepair`), which then replaces the BatchNorm re-estimation (the
        cache folder must then be specific to the merged models: a REPAIRed point
        depends on them)."""
        key = self.cache.key(model) if self.cache is not None else None
        hit = self.cache.get(key) if key is not None else None
        if hit is not None:
            return hit
        model = model.to(self.device)
        if self.renorm is not None:
            if weights is None:
                raise UserError("a renormalised point needs its barycentric weights")
            model = self.renorm(model, np.asarray(weights, dtype=np.float64))
        elif has_batchnorm(model):
            if not self.bn_data:
                raise UserError("a network with BatchNorm needs training batches (bn_data) "
                                "to re-estimate its statistics at every point")
            recompute_bn(model, self.bn_data, batches=len(self.bn_data), inputs=self.bn_inputs,
                         attack=self.bn_attack)
        out = {}
        for kind, attack in (("clean", None), ("robust", self.attack)):
            r = per_example(model, self.x_test, self.y_test, attack,
                            batch_size=self.batch_size, device=self.device)
            out[f"{kind}_correct"], out[f"{kind}_loss"] = r.correct.numpy(), r.loss.numpy()
        if key is not None:
            self.cache.put(key, out)
        return out


class SimplexRepair:
    """REPAIR (Jordan et al. 2023, :mod:`robustpath.paths.repair`) at a point ``sum_k λ_k θ_k``
    of the simplex of N aligned models: every unit's pre-activation mean and std reset
    to ``sum_k λ_k (μ_k, σ_k)``, the models' own statistics measured once (on first use)
    on ``batches`` (``(x, y)`` training batches); ``repair-adv`` measures every
    statistic on PGD inputs (``attack``) made against each network, the point's against
    its clean-REPAIRed self, as :class:`robustpath.paths.repair.PathRenorm` does on a line. A
    vertex (one weight 1) is returned untouched. Optional: imports robustpath.paths.repair."""

    def __init__(self, method: str, models: Sequence[nn.Module], batches: Sequence,
                 attack: Attack | None = None):
        from robustpath.paths.repair import RENORMS

        self.method = RENORMS.get(method)
        if self.method.name not in ("repair", "repair-adv"):
            raise UserError(f"SimplexRepair does repair or repair-adv, not {method!r}")
        if self.method.needs_attack and attack is None:
            raise UserError(f"--renorm {method} needs an attack")
        self.models, self.attack = list(models), attack
        self.batches = [(b[0], b[1]) for b in batches]
        self._stats: dict | None = None

    def _adv(self, model: nn.Module) -> list[torch.Tensor]:
        return [self.attack(model.eval(), x, y) for x, y in self.batches]

    def _ends(self) -> dict:
        from robustpath.paths.repair import find_units, measure

        if self._stats is None:
            x = [x for x, _ in self.batches]
            units = find_units(self.models[0], x[0][:2])
            st = {"units": units, "clean": [measure(m.eval(), units, x) for m in self.models]}
            if self.method.needs_attack:
                st["adv"] = [measure(m, units, self._adv(m)) for m in self.models]
            self._stats = st
        return self._stats

    @staticmethod
    def _target(stats: list, w: np.ndarray) -> list:
        return [(sum(float(wk) * s[u][0] for wk, s in zip(w, stats)),
                 sum(float(wk) * s[u][1] for wk, s in zip(w, stats))) for u in range(len(stats[0]))]

    def __call__(self, model: nn.Module, weights: np.ndarray) -> nn.Module:
        import copy

        from robustpath.paths.repair import Unit, repair_model

        if np.count_nonzero(weights) == 1:
            return model.eval()  # a vertex: its own statistics are the target
        st = self._ends()

        def units(m):
            by_name = dict(m.named_modules())
            return [Unit(u.name, by_name[u.name], u.dim) for u in st["units"]]

        raw = copy.deepcopy(model) if self.method.needs_attack else None
        clean = repair_model(model, units(model), [x for x, _ in self.batches],
                             self._target(st["clean"], weights))
        if raw is None:
            return clean
        return repair_model(raw, units(raw), self._adv(clean), self._target(st["adv"], weights))


def barycentric_grid(k: int, vertices: int = 3) -> np.ndarray:
    """``[P, vertices]`` float64: every ``counts / k`` with non-negative integer counts
    summing to ``k`` (P = C(k + vertices - 1, vertices - 1); 3 vertices: (k+1)(k+2)/2),
    vertex 0 first, in lexicographic order of the counts, largest first."""
    if int(k) != k or k < 1:
        raise UserError(f"the barycentric grid needs K >= 1 steps, got {k}")
    k = int(k)
    rows = [c for c in itertools.product(range(k, -1, -1), repeat=vertices - 1) if sum(c) <= k]
    counts = np.array([[*c, k - sum(c)] for c in rows], dtype=np.int64)
    return counts / k


def evaluate_mixtures(models: Sequence[nn.Module], weights: np.ndarray, point: PointEval, *,
                      progress: bool = True, desc: str = "points") -> dict[str, np.ndarray]:
    """Measure ``mix(models, w)`` for every row ``w`` of ``weights`` ``[P, len(models)]``.
    Returns the four arrays of :data:`robustpath.paths.evaluate.ARRAYS`, each ``[P, N]``."""
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim != 2 or weights.shape[1] != len(models):
        raise UserError(f"weights must be [points, {len(models)}], got {weights.shape}")
    rows = []
    for w in progress_mod.bar(weights, desc=desc, unit="pt", progress=progress):
        rows.append(point(mix(models, w), w))
    return {k: np.stack([r[k] for r in rows]) for k in ARRAYS}


def soup(models: Sequence[nn.Module], point: PointEval) -> dict[str, np.ndarray]:
    """The uniform average of ``models`` (already aligned), BatchNorm reset: arrays ``[1, N]``."""
    n = len(models)
    return evaluate_mixtures(models, np.full((1, n), 1.0 / n), point, progress=False)


def triangle(models: Sequence[nn.Module], k: int, point: PointEval, vertices=(0, 1, 2), *,
             progress: bool = True, desc: str = "triangle") -> dict[str, np.ndarray]:
    """The triangle of ``models[vertices]`` on :func:`barycentric_grid` ``(k)``: arrays
    ``[P, N]`` and ``weights`` ``[P, 3]`` (barycentric coordinates of the vertices)."""
    if len(set(vertices)) != 3 or not all(0 <= v < len(models) for v in vertices):
        raise UserError(f"a triangle needs three distinct model indices, got {vertices}")
    bary = barycentric_grid(k, 3)
    full = np.zeros((len(bary), len(models)))
    full[:, list(vertices)] = bary
    out = evaluate_mixtures(models, full, point, progress=progress, desc=desc)
    out["weights"] = bary
    return out


def line_weights(n: int, i: int, j: int, k: int) -> np.ndarray:
    """``[k + 1, n]``: the line from model i (t = 0) to j (t = 1) at t = s / k, with the
    same floats as the triangle's edge points ((k - s) / k, s / k)."""
    w = np.zeros((k + 1, n))
    s = np.arange(k + 1)
    w[:, i], w[:, j] = (k - s) / k, s / k
    return w


def pair_lines(models: Sequence[nn.Module], k: int, point: PointEval, align: str,
               compute: Callable | None = None, *, progress: bool = True) -> list[PathRecord]:
    """The line between every pair ``i < j`` on ``t = s / k`` as
    :class:`robustpath.io.records.PathRecord` (``endpoint_a``/``endpoint_b``: positions
    in ``models``, which are the seeds: the soup trains seeds ``0..N-1``; ``curve``
    ``line``). ``compute(i, j) -> arrays`` overrides the evaluation."""
    out = []
    for i, j in itertools.combinations(range(len(models)), 2):
        arrays = compute(i, j) if compute is not None else evaluate_mixtures(
            models, line_weights(len(models), i, j, k), point, progress=progress,
            desc=f"line {i}-{j}")
        out.append(line_record(align, i, j, k, arrays))
    return out


def line_record(align: str, i: int, j: int, k: int, arrays: dict[str, np.ndarray]) -> PathRecord:
    """The line from model ``i`` to ``j`` measured at ``t = s / k`` (``arrays`` ``[k + 1, N]``)
    as a :class:`robustpath.io.records.PathRecord` (``curve`` ``line``, speed 1)."""
    ts = np.arange(k + 1) / k
    res = PathResult(ts=ts, speed=np.ones_like(ts), **{a: arrays[a] for a in ARRAYS})
    return PathRecord(align=align, curve="line", endpoint_a=i, endpoint_b=j, result=res)


TABLE_METRICS = ("robust_acc_barrier", "robust_loss_barrier", "robust_acc_min", "robust_acc_ends",
                 "clean_acc_barrier", "clean_acc_min")


def barrier_table(records: Sequence[PathRecord], names: Sequence[str],
                  bootstrap: int = 1000) -> pd.DataFrame:
    """One row per pair and alignment method: :data:`TABLE_METRICS` with their 95%
    bootstrap CIs (``_lo``, ``_hi``) over test examples."""
    from robustpath.stats.barrier import path_metrics

    rows = []
    for r in records:
        m = path_metrics(r.result, bootstrap=bootstrap)
        row = {"align": r.align, "index_a": r.endpoint_a, "index_b": r.endpoint_b,
               "model_a": names[r.endpoint_a], "model_b": names[r.endpoint_b]}
        for name in TABLE_METRICS:
            row[name], row[f"{name}_lo"], row[f"{name}_hi"] = (
                m[name]["value"], m[name]["lo"], m[name]["hi"])
        rows.append(row)
    return pd.DataFrame(rows)


def accuracy_rows(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``{clean_acc, robust_acc, clean_loss, robust_loss}`` per point ``[P]``."""
    return {k.replace("_correct", "_acc"): arrays[k].astype(np.float64).mean(1) for k in ARRAYS}
