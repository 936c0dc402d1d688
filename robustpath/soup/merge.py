"""Aligning N >= 3 models of one architecture into one basin.

Two-model alignment (:func:`robustpath.align.align`) permutes B onto A. With N models
there is no single "A"; the methods here (registry :data:`MERGERS`) return one
permutation per model such that all permuted models sit close together:

* ``weight`` - Git Re-Basin's **MergeMany** (Ainsworth et al. 2023, Algorithm 3):
  repeatedly visit the models in a random (seeded) order and match model i by weight
  matching (:func:`robustpath.align.weight_matching`, Algorithm 1) onto the mean of
  the others' currently permuted parameters; stop after a sweep that changes no
  permutation. Here weight matching runs on model i *as currently permuted*, so its
  coordinate descent starts at the current permutation and only accepts improvements:
  every accepted change lowers ``sum_i ||θ_i - θ̄||²`` (parameter norms are
  permutation-invariant), so the loop terminates. Needs no data.
* ``activation`` - Tatro et al. 2020's activation matching of every model onto a
  **reference: model 0** (one Hungarian assignment per group on the correlation of
  unit activations, :func:`robustpath.align.align`). A running-mean reference is not
  used because the activations of an averaged network of unaligned models are not
  those of a trained one; matching to a real network keeps the criterion Tatro et
  al.'s. Needs data (clean or adversarial inputs).
* ``none`` - identity: the unaligned baseline.

Every returned model computes its original's function (a permutation of hidden units
never changes it). :func:`mix` forms any convex combination of the aligned models
(the "soup" and the points of the triangle in :mod:`robustpath.soup.triangle`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from robustpath.align import apply, permutation_spec, weight_matching
from robustpath.align.permute import Permutation, identity_permutation, permute_tensor
from robustpath.align.spec import AxisSpec, PermutationSpec
from robustpath.errors import UserError
from robustpath.registry import Registry


@dataclass
class MergeResult:
    """``models[i]`` = model i with hidden units permuted by ``perms[i]`` (same function).
    ``sweeps``: MergeMany sweeps until a sweep changed nothing (0 for other methods);
    ``spread``: ``sum_i ||θ_i - θ̄||² / N`` over parameters, before alignment and after
    each sweep (weight) or after alignment (others): how far the models sit from their
    mean. ``similarity``: activation matching's mean matched correlation per model
    (``{i: (before, after)}``), empty otherwise."""

    method: str
    models: list[nn.Module]
    perms: list[Permutation]
    sweeps: int = 0
    spread: list[float] = field(default_factory=list)
    similarity: dict[int, tuple[float | None, float | None]] = field(default_factory=dict)

    def report(self) -> dict:
        """JSON-serialisable summary (no tensors)."""
        moved = [{g: float((p != torch.arange(len(p))).double().mean()) for g, p in q.items()}
                 for q in self.perms]
        return {"method": self.method, "sweeps": self.sweeps, "spread": self.spread,
                "fraction_moved": moved,
                "similarity": {str(k): list(v) for k, v in self.similarity.items()}}


MergeFn = Callable[..., MergeResult]
MERGERS: Registry[MergeFn] = Registry("merge method")


def check_models(models: Sequence[nn.Module], at_least: int = 2) -> None:
    """Same architecture (state-dict keys and shapes), at least ``at_least`` models."""
    if len(models) < at_least:
        raise UserError(f"merging needs at least {at_least} models, got {len(models)}")
    ref = models[0].state_dict()
    for i, m in enumerate(models[1:], 1):
        sd = m.state_dict()
        if sd.keys() != ref.keys() or any(sd[k].shape != ref[k].shape for k in ref):
            raise UserError(f"model {i} has another architecture than model 0")


def _params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", torch.float64) for k, v in model.named_parameters()}


def _by_key(spec: PermutationSpec) -> dict[str, list[AxisSpec]]:
    by: dict[str, list[AxisSpec]] = {}
    for ax in spec.axes:
        by.setdefault(ax.key, []).append(ax)
    return by


def permute_params(spec: PermutationSpec, params: dict[str, torch.Tensor],
                   perm: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``params`` (a name -> tensor dict) with every axis the spec names permuted."""
    by_key = _by_key(spec)
    return {k: permute_tensor(v, by_key[k], perm) if k in by_key else v
            for k, v in params.items()}


def spread(params: Sequence[dict[str, torch.Tensor]]) -> float:
    """``sum_i ||θ_i - θ̄||² / N``: mean squared distance of the models to their mean."""
    n = len(params)
    total = 0.0
    for k in params[0]:
        stack = torch.stack([p[k] for p in params])
        total += float((stack - stack.mean(0)).pow(2).sum())
    return total / n


def merge_many(spec: PermutationSpec, params: Sequence[dict[str, torch.Tensor]], seed: int = 0,
               max_sweeps: int = 100, keep=()) -> tuple[list[dict[str, torch.Tensor]], int,
                                                        list[float]]:
    """MergeMany (Ainsworth et al. 2023, Alg. 3) over parameter dicts.

    Returns ``(perms, sweeps, spread)``: one ``{group: p}`` per model (gather
    convention of :mod:`robustpath.align.permute`), the number of sweeps done, and
    :func:`spread` before alignment and after each sweep (non-increasing).
    """
    n = len(params)
    perms = [{g: torch.arange(size) for g, size in spec.groups.items()} for _ in range(n)]
    current = [dict(p) for p in params]
    history = [spread(current)]
    gen = torch.Generator().manual_seed(int(seed))
    sweeps = 0
    for sweep in range(max_sweeps):
        sweeps = sweep + 1
        changed = False
        for i in torch.randperm(n, generator=gen).tolist():
            others = [current[j] for j in range(n) if j != i]
            mean = {k: torch.stack([o[k] for o in others]).mean(0) for k in current[i]}
            # started at the current permutation: improvements only, so it terminates
            q = weight_matching(spec, mean, current[i], seed=seed + 1000 * sweep + i, keep=keep)
            if all(torch.equal(p, torch.arange(len(p))) for p in q.values()):
                continue
            perms[i] = {g: perms[i][g][q[g]] for g in perms[i]}
            current[i] = permute_params(spec, params[i], perms[i])
            changed = True
        history.append(spread(current))
        if not changed:
            break
    return perms, sweeps, history


def _spec_for(models: Sequence[nn.Module], example_input: torch.Tensor | None,
              spec: PermutationSpec | None) -> PermutationSpec:
    if spec is not None:
        return spec
    if example_input is None:
        raise UserError("merging needs example_input= (a batch to trace the model) or spec=")
    dev = next(models[0].parameters()).device
    return permutation_spec(models[0], example_input[:2].to(dev))


@MERGERS.register("weight")
def _merge_weight(models, *, spec, seed=0, **_) -> MergeResult:
    params = [_params(m) for m in models]
    found, sweeps, history = merge_many(spec, params, seed=seed)
    perms = [Permutation(spec, p) for p in found]
    return MergeResult("weight", [apply(m, p).eval() for m, p in zip(models, perms)], perms,
                       sweeps=sweeps, spread=history)


@MERGERS.register("activation")
def _merge_activation(models, *, spec, data=None, inputs="clean", attack=None, seed=0,
                      **_) -> MergeResult:
    from robustpath.align import align

    if data is None:
        raise UserError("activation matching of several models needs data")
    out, perms, sim = [copy.deepcopy(models[0]).eval()], [identity_permutation(spec)], {}
    for i, m in enumerate(models[1:], 1):
        aligned, perm, rep = align(models[0], m, method="activation", data=data, inputs=inputs,
                                   attack=attack, seed=seed, spec=spec)
        out.append(aligned.eval())
        perms.append(perm)
        sim[i] = (rep.mean_before, rep.mean_after)
    before = spread([_params(m) for m in models])
    return MergeResult("activation", out, perms, spread=[before, spread([_params(m) for m in out])],
                       similarity=sim)


@MERGERS.register("none")
def _merge_none(models, *, spec, **_) -> MergeResult:
    s = spread([_params(m) for m in models])
    return MergeResult("none", [copy.deepcopy(m).eval() for m in models],
                       [identity_permutation(spec) for _ in models], spread=[s, s])


def merge(models: Sequence[nn.Module], method: str = "weight", *,
          example_input: torch.Tensor | None = None, spec: PermutationSpec | None = None,
          data=None, inputs: str = "clean", attack=None, seed: int = 0) -> MergeResult:
    """Align ``models`` (N >= 2, one architecture; none is modified) into one basin.

    ``method``: ``weight`` (MergeMany), ``activation`` (onto model 0; needs ``data``,
    an iterable of ``(x, y)`` batches in [0, 1], ``inputs`` clean or adv with
    ``attack``), ``none``. ``example_input``: a batch to trace the model with
    (or a ready ``spec``). ``seed``: visiting order of MergeMany's sweeps.
    """
    fn = MERGERS.get(method)
    check_models(models)
    spec = _spec_for(models, example_input, spec)
    return fn(list(models), spec=spec, data=data, inputs=inputs, attack=attack, seed=seed)


def apply_perms(models: Sequence[nn.Module], perms: Sequence[Permutation]) -> list[nn.Module]:
    """The aligned models from stored permutations (one per model)."""
    return [apply(m, p).eval() for m, p in zip(models, perms)]


def perms_to_arrays(perms: Sequence[Permutation]) -> dict[str, np.ndarray]:
    """``{"g<k>": int64 [N, units]}`` in the spec's group order (for ``cache.save_npz``)."""
    groups = list(perms[0].spec.groups)
    return {f"g{k}": np.stack([p[g].numpy() for p in perms]) for k, g in enumerate(groups)}


def perms_from_arrays(spec: PermutationSpec, arrays: dict[str, np.ndarray]) -> list[Permutation]:
    groups = list(spec.groups)
    n = len(arrays["g0"]) if groups else 0
    return [Permutation(spec, {g: torch.from_numpy(np.asarray(arrays[f"g{k}"][i]))
                               for k, g in enumerate(groups)}) for i in range(n)]


def mix(models: Sequence[nn.Module], weights: Sequence[float]) -> nn.Module:
    """A copy of ``models[0]`` holding ``sum_k weights[k] * θ_k`` in every floating-point
    parameter and buffer (integer buffers, e.g. BatchNorm's batch counter, from model 0).

    Summed in float32 in model order from zero, so a weight vector with one 1 and zeros
    elsewhere returns that model bit for bit, and the same weights give the same bits
    whichever function asks (the triangle's edge points are the pairs' line points).
    BatchNorm running statistics are mixed too and must be recomputed
    (:func:`robustpath.paths.bn.recompute_bn`) before use.
    """
    w = [float(v) for v in weights]
    if len(w) != len(models):
        raise UserError(f"mix got {len(w)} weights for {len(models)} models")
    states = [m.state_dict() for m in models]
    out = copy.deepcopy(models[0])
    mixed = {}
    for k, ref in states[0].items():
        if not ref.is_floating_point():
            mixed[k] = ref.clone()
            continue
        acc = torch.zeros_like(ref)
        for wk, sd in zip(w, states):
            acc = acc + wk * sd[k]
        mixed[k] = acc
    out.load_state_dict(mixed)
    return out.eval()
