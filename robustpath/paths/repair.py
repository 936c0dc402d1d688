"""Renormalisation of a network on a path: BatchNorm reset, REPAIR, REPAIR under attack.

REPAIR: Jordan, Sedghi, Saukh, Entezari & Neyshabur, "REPAIR: REnormalizing Permuted
Activations for Interpolation Repair", ICLR 2023 (arXiv 2211.08403). Interpolating
two networks' weights shrinks the variance of hidden units ("variance collapse");
REPAIR sets every unit's mean and standard deviation of pre-activations at θ(t) to
the interpolation of the endpoints' statistics, which removes most of the barrier
of plain interpolation in networks with and without BatchNorm.

Methods (registry :data:`RENORMS`, ``--renorm``):

* ``bn-reset`` (default) - BatchNorm running statistics re-estimated at every t
  (:func:`robustpath.paths.bn.recompute_bn`, clean or adversarial inputs per ``--bn-inputs``).
* ``repair`` - REPAIR on clean measuring data (below).
* ``repair-adv`` - REPAIR with every statistic measured on PGD inputs: the endpoints'
  on PGD inputs made against each endpoint, the point's on PGD inputs made against
  the point itself after a clean REPAIR (as ``recompute_bn(inputs="adv")`` attacks a
  usable copy, not one whose statistics are half re-estimated).
* ``none`` - nothing: the point keeps its interpolated BatchNorm statistics.

Units (:mod:`robustpath.paths.repair_stats`): every affine norm layer and every Conv / Linear
whose output neither enters a norm layer nor is the logits; statistics: per-channel
mean and (biased) std of its output over the measuring batches.

At a point t the target of unit k is ``(1 - t) (μ_A, σ_A) + t (μ_B, σ_B)``, with A =
``model_at(0)`` and B = ``model_at(1)`` (aligned B: its units are A's). On a curve with
control points (Bezier, polygonal chain) the target is the same interpolation in t
of the *endpoints'* statistics: a control point is not a network trained to compute
anything, so its statistics are no meaningful target. The units are corrected one
by one in call order, each measured with every earlier one already corrected, so
that on the measuring data each unit's statistics equal the target (to float
rounding): a BatchNorm layer gets the exact statistics of its input as running
statistics, then its scale and shift are set so its output has the target mean and
std; a LayerNorm / GroupNorm gets its scale and shift rescaled, and a Conv / Linear
its weight rows and bias (REPAIR's "ResetLayer", fused into the layer: a bias is
added to a bias-free layer). The result is the same module class with other values.
At t = 0 and t = 1 the network is returned untouched (bit-for-bit the same logits; a
bias-free Conv / Linear unit gets a zero bias, so that endpoints and corrected points
have the same parameters and stack under ``--t-batch``): its statistics are the target,
so the correction is the identity up to rounding (:func:`repair_model` computes it
anyway; the tests check it leaves the endpoint's logits within 1e-5).

Against the reference code (KellerJordan/REPAIR, notebooks): the targets are theirs
(means and stds interpolated linearly; the logits left alone). Deviations, all
deliberate: (1) their correction wraps each layer in a BatchNorm whose scale and shift
are the target and re-estimates it in train mode over 1-3 training epochs; here
the units are corrected one by one in eval mode on the ``--bn-batches`` measuring
batches, which hits the target exactly on those batches. (2) For BatchNorm networks
their notebooks reset the BatchNorm statistics (VGG-11-BN, ResNet-20) and, for
ResNet-50, also correct every residual block's output after the addition; here a
BatchNorm layer's *output* is the unit, set to the interpolated endpoints' BN-output
statistics, and residual sums are not units, so ``repair`` differs from ``bn-reset``
on BatchNorm networks (``studies/results/repair``). (3) Loss planes
(``--plane-grid``, :mod:`robustpath.paths.plane`) do not use ``--renorm``: a plane point
has no t, hence no target; they re-estimate BatchNorm, and the bench says so on
stderr (:func:`plane_note`).
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from robustpath.attacks.base import Attack
from robustpath.errors import UserError
from robustpath.paths.evaluate import PointCache
from robustpath.paths.repair_stats import (
    LAYER_TYPES,
    Stats,
    Unit,
    _measure_one,
    find_units,
    interpolate,
    measure,
)
from robustpath.registry import Registry

DEFAULT = "bn-reset"


@dataclass(frozen=True)
class Renorm:
    """One renormalisation method: how each point of a path is prepared."""

    name: str
    label: str           # for tables and figures
    needs_data: bool     # measures statistics on training batches
    needs_attack: bool   # ... on PGD inputs (cfg.train_attack(), seed 1)
    help: str
    #: BatchNorm statistics re-estimated by robustpath.paths.bn inside path evaluation (the
    #: evaluation's own BN pass, its bn_loader); otherwise a PathRenorm prepares each point
    recomputes_bn: bool = False
    #: the method enters cache keys; False only for bn-reset, whose keys predate --renorm
    in_key: bool = True


RENORMS: Registry[Renorm] = Registry("--renorm method")
for _r in (
    Renorm("bn-reset", "BN reset", True, False,
           "BatchNorm statistics re-estimated at each t (clean or adv per --bn-inputs)",
           recomputes_bn=True, in_key=False),
    Renorm("repair", "REPAIR", True, False,
           "REPAIR: every unit's mean/std reset to the interpolated endpoint statistics"),
    Renorm("repair-adv", "REPAIR (adv)", True, True,
           "REPAIR with all statistics on PGD inputs (train attack) against each network"),
    Renorm("none", "none", False, False, "no renormalisation (interpolated BN statistics)"),
):
    RENORMS.register(_r.name)(_r)


def _fuse(module: nn.Module, scale: torch.Tensor, shift: torch.Tensor) -> None:
    """Make ``module``'s output ``scale * out + shift`` per channel, in its own weights."""
    w = module.weight
    scale, shift = scale.to(w.dtype), shift.to(w.dtype)
    with torch.no_grad():
        if isinstance(module, LAYER_TYPES):
            w.mul_(scale.view(-1, *([1] * (w.dim() - 1))))
        else:
            w.mul_(scale)
        if module.bias is None:
            module.bias = nn.Parameter(shift.clone())
        else:
            module.bias.mul_(scale).add_(shift)


def repair_model(model: nn.Module, units: Sequence[Unit], batches: Sequence[torch.Tensor],
                 target: Stats, min_std: float = 1e-8) -> nn.Module:
    """Correct ``model`` in place so that each unit's (mean, std) over ``batches`` is
    ``target`` (one pass per unit, in call order). A unit whose std is below
    ``min_std`` (a dead channel) is only shifted. Returns ``model`` (eval mode)."""
    model.eval()
    by_name = dict(model.named_modules())
    for u, (t_mean, t_std) in zip(units, target):
        m = by_name[u.name]
        if u.is_bn:
            mean_x, std_x = _measure_one(model, u, batches, of_input=True)
            var_x = std_x.pow(2)
            with torch.no_grad():
                m.running_mean.copy_(mean_x)
                m.running_var.copy_(var_x)
            # the output w (x - mean_x) / sqrt(var_x + eps) + b now has mean b, std |w| ...
            mean_y = m.bias.detach().double()
            std_y = m.weight.detach().double().abs() * (var_x / (var_x + m.eps)).sqrt()
        else:
            mean_y, std_y = _measure_one(model, u, batches, of_input=False)
        ok = std_y > min_std
        scale = torch.where(ok, t_std / std_y.clamp_min(min_std), torch.ones_like(std_y))
        _fuse(m, scale, t_mean - scale * mean_y)
    return model


class PathRenorm:
    """``renorm(model, t) -> model`` for every point of one path (``--renorm``).

    ``model_at``: the path (``t -> nn.Module``); ``batches``: the measuring batches,
    ``(x, y)`` pairs on the models' device (the path evaluation's BN batches);
    ``attack``: for ``repair-adv`` (PGD; made against each network in eval mode).
    Endpoint statistics are measured once, on first use.
    """

    def __init__(self, method: str, model_at: Callable[[float], nn.Module],
                 batches: Sequence, attack: Attack | None = None):
        self.method = RENORMS.get(method)
        if self.method.recomputes_bn:
            raise UserError("PathRenorm is for REPAIR and none; bn-reset is robustpath.paths.bn's")
        if self.method.needs_attack and attack is None:
            raise UserError(f"--renorm {method} needs an attack")
        if self.method.needs_data and not batches:
            raise UserError(f"--renorm {method} needs measuring batches (training data)")
        self.model_at, self.attack = model_at, attack
        self.batches = [(b[0], b[1]) for b in batches]
        self._ends: dict | None = None
        self._unit_list: list[Unit] | None = None

    def _units(self) -> list[Unit]:
        """The units, found on ``model_at(0)`` (no statistics measured)."""
        if self._unit_list is None:
            self._unit_list = find_units(self.model_at(0.0).eval(), self.batches[0][0][:2])
        return self._unit_list

    def _endpoints(self):
        if self._ends is None:
            a, b = self.model_at(0.0).eval(), self.model_at(1.0).eval()
            x = [x for x, _ in self.batches]
            units = self._units()
            ends = {"units": units, "clean": (measure(a, units, x), measure(b, units, x))}
            if self.method.needs_attack:
                ends["adv"] = tuple(measure(m, units, self.adversarial(m)) for m in (a, b))
            self._ends = ends
        return self._ends

    def adversarial(self, model: nn.Module) -> list[torch.Tensor]:
        """The measuring inputs replaced by PGD inputs against ``model`` (eval mode)."""
        return [self.attack(model.eval(), x, y) for x, y in self.batches]

    def __call__(self, model: nn.Module, t: float) -> nn.Module:
        """The network to evaluate at ``t``: ``model`` corrected in place (``repair``),
        a corrected copy (``repair-adv``) or ``model`` itself (``none``, t = 0, 1)."""
        t = float(t)
        if not self.method.needs_data:
            return model.eval()  # none
        if t in (0.0, 1.0):  # an endpoint: its statistics are the target; only zero biases
            # where a corrected point gains a bias, so that both stack (--t-batch)
            return _zero_biases(model, self._units()).eval()
        ends = self._endpoints()
        raw = copy.deepcopy(model) if self.method.needs_attack else None
        x = [x for x, _ in self.batches]
        clean = repair_model(model, _same_units(model, ends["units"]), x,
                             interpolate(*ends["clean"], t))
        if raw is None:
            return clean
        # PGD against the clean-REPAIRed point (a usable network), then REPAIR from scratch
        x_adv = self.adversarial(clean)
        return repair_model(raw, _same_units(raw, ends["units"]), x_adv,
                            interpolate(*ends["adv"], t))

    def point_cache(self, cache: PointCache) -> PointCache:
        """``cache`` whose keys also name the path's endpoints: a REPAIRed point depends
        on them (its target), not only on its own weights. Points equal to an endpoint
        keep their plain key (returned as they are), so paths sharing A share it."""
        if not self.method.needs_data:
            return cache
        ends: tuple[str, str] | None = None
        plain = cache.key

        def key(model: nn.Module) -> str:
            nonlocal ends
            if ends is None:  # the endpoints' weights only: a fully cached path measures nothing
                ends = (plain(self.model_at(0.0)), plain(self.model_at(1.0)))
            k = plain(model)
            if k in ends:
                return k
            return hashlib.sha256(f"{k}|{self.method.name}|{'|'.join(ends)}".encode()).hexdigest()[:20]

        cache.key = key  # instance attribute: evaluate_path calls point_cache.key(model)
        return cache


def _zero_biases(model: nn.Module, units: Sequence[Unit]) -> nn.Module:
    """``model`` with a zero bias on every bias-free Conv / Linear unit (in place): the
    parameters a REPAIRed point has (:func:`_fuse` adds a bias), the same function."""
    by_name = dict(model.named_modules())
    for u in units:
        m = by_name[u.name]
        if isinstance(m, LAYER_TYPES) and m.bias is None:
            m.bias = nn.Parameter(torch.zeros(m.weight.shape[0], dtype=m.weight.dtype,
                                              device=m.weight.device))
    return model


def _same_units(model: nn.Module, units: Sequence[Unit]) -> list[Unit]:
    by_name = dict(model.named_modules())
    return [Unit(u.name, by_name[u.name], u.dim) for u in units]


class RenormSetup:
    """A :class:`robustpath.strong.stage.PointSetup` whose points are prepared by a
    :class:`PathRenorm` instead of BatchNorm recomputation (the strong stage sees the
    networks the path evaluation measured). Other attributes are the base setup's."""

    def __init__(self, base, renorm: PathRenorm):
        self._base, self.renorm = base, renorm

    def __getattr__(self, name):
        return getattr(self._base, name)

    def recomputes(self, t: float) -> bool:
        return self.renorm.method.needs_data and 0.0 < float(t) < 1.0

    def prepare_model(self, model: nn.Module, t: float) -> nn.Module:
        return self.renorm(model.to(self._base.device), t).eval()

    def prepare(self, model_at, t: float) -> nn.Module:
        return self.prepare_model(model_at(float(t)), t)


def renorm_spec(cfg) -> dict:
    """What ``cfg.renorm`` adds to the evaluation's cache key (nothing at the default,
    so bn-reset caches keep their keys)."""
    if not RENORMS.get(cfg.renorm).in_key:
        return {}
    spec = {"renorm": cfg.renorm}
    if RENORMS.get(cfg.renorm).needs_attack:
        spec["renorm_attack"] = cfg.train_attack().to_dict()
    return spec


def plane_note(cfg) -> str | None:
    """The line ``robustpath.bench`` prints (stderr, before any work) when ``--renorm``
    is not the default and loss planes are on: the planes re-estimate BatchNorm at
    every grid point whatever ``--renorm`` says. None otherwise."""
    if RENORMS.get(cfg.renorm).recomputes_bn or not cfg.plane_grid:
        return None
    return (f"note: --renorm {cfg.renorm} applies to path evaluation, strong and curvature "
            f"stages; the loss planes (--plane-grid {cfg.plane_grid}) re-estimate BatchNorm at "
            "every grid point (a plane point has no t, so no REPAIR target); --plane-grid 0 "
            "skips them")


def for_path(cfg, model_at: Callable[[float], nn.Module], data, device) -> PathRenorm | None:
    """The :class:`PathRenorm` of ``cfg.renorm`` for one path of a bench run (None for
    the registry's BatchNorm recomputation, bn-reset): measuring batches = the first ``cfg.bn_batches`` training
    batches of the path evaluation (seed 0), attack = ``cfg.train_attack()`` with seed 1
    (the BatchNorm attack of bn-reset with ``--bn-inputs adv``)."""
    if RENORMS.get(cfg.renorm).recomputes_bn:
        return None
    from dataclasses import replace
    from itertools import islice

    from robustpath.attacks.base import build_attack

    method = RENORMS.get(cfg.renorm)
    batches = (list(islice(iter(data.train_batches(cfg, seed=0, device=device)), cfg.bn_batches))
               if method.needs_data else [])
    attack = (build_attack(replace(cfg.train_attack(), seed=1), data.num_classes)
              if method.needs_attack else None)
    return PathRenorm(cfg.renorm, model_at, batches, attack)
