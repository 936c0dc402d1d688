"""robustpath's PAM (:mod:`robustpath.pam.robust`): its settings (:class:`PAMConfig`) and
its result (:class:`PAMResult`, with :func:`changed`, the fraction of units per group
two permutations disagree on). Split out of :mod:`robustpath.pam.robust`, which
re-exports every name here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from robustpath.align.permute import Permutation
from robustpath.attacks.base import AttackConfig
from robustpath.errors import UserError
from robustpath.numbers import parse_fraction


@dataclass
class PAMConfig:
    """Settings of :func:`pam`. Defaults: 3 outer iterations, each 40 projected gradient
    steps (lr 0.1 in matrix-entry units, gradient momentum 0.9, proximal weight ρ = 0.1)
    on the relaxed permutations and 1 curve epoch (SGD lr 0.02, cosine, batch 128);
    quadratic Bezier (``bends=1``); Tatro et al.'s PGD (L-inf eps 8/255, 5 steps of
    2/255) in the loop; ``attack=None`` solves the clean problem.

    Tuning facts (cnn-small on Fashion-MNIST, robust, 40 steps): with ρ = 1 the relaxed
    step moves 3-15 % of the mass off the current permutation and Hungarian rounding
    returns it unchanged at lr 0.05-1.0; with ρ = 0.1 and lr 0.1 it moves 10-30 % and
    rounding changes a few % of the widest layer's units; with ρ = 0 (60 steps) more
    than half of all units. Without momentum the stochastic gradients (one batch and
    one t per step) spread mass diffusely over many entries."""

    outer_iters: int = 3
    perm_steps: int = 40
    lr: float = 0.1
    momentum: float = 0.9         # averaging of the stochastic gradients (bias-corrected)
    prox: float = 0.1
    project_iters: int = 5000     # Dykstra iterations at most per projection (then Sinkhorn)
    project_tol: float = 1e-6     # max |row/column sum - 1| after each projection
    curve_epochs: int = 1         # curve-step epochs per outer iteration
    curve_lr: float = 0.02
    batch_size: int = 128
    select_batches: int = 8       # fixed batches for the candidate check and ``loss``
    bends: int = 1
    attack: AttackConfig | None = field(default_factory=AttackConfig)
    seed: int = 0

    def validate(self) -> PAMConfig:
        for name in ("outer_iters", "perm_steps", "project_iters", "curve_epochs", "batch_size",
                     "select_batches", "bends"):
            if int(getattr(self, name)) < 1:
                raise UserError(f"PAM {name.replace('_', ' ')} must be >= 1, "
                                f"got {getattr(self, name)}")
            setattr(self, name, int(getattr(self, name)))
        self.lr = parse_fraction(self.lr, name="PAM lr", allow_zero=False)
        self.curve_lr = parse_fraction(self.curve_lr, name="PAM curve lr", allow_zero=False)
        self.prox = parse_fraction(self.prox, name="PAM proximal weight")
        if not 0.0 <= float(self.momentum) < 1.0:
            raise UserError(f"PAM momentum must lie in [0, 1), got {self.momentum}")
        self.project_tol = parse_fraction(self.project_tol, name="PAM projection tolerance",
                                          allow_zero=False)
        if self.attack is not None:
            self.attack.validate()
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PAMConfig:
        d = dict(d)
        if d.get("attack") is not None:
            d["attack"] = AttackConfig(**d["attack"])
        return cls(**d)


@dataclass
class PAMResult:
    """What :func:`pam` returns. ``perm``: the final :class:`Permutation` of B (gather
    convention; ``apply(model_b, perm)`` computes B's function). ``start``: the
    starting permutation. ``controls``: the final curve control points ``[bends, P]``
    in A's frame. ``history``: one dict per outer iteration (iteration 0 = the initial
    curve step): ``loss`` (fixed-batch curve loss after the iteration), ``candidate_loss``
    and ``previous_loss`` (permutation check, c fixed), ``accepted``, ``perm_step_loss``
    (mean loss of the relaxed steps), ``relaxed_mass_moved`` (per group, 1 - mean_i
    S[i, P_k[i]]: the fraction of mass the relaxed step moved off the current
    permutation), ``candidate_changed`` (per group, fraction of units the rounded
    candidate changes, accepted or not), ``changed_vs_start``
    / ``changed_vs_previous`` (fraction of units per group), ``curve_train_loss`` (last
    curve epoch's running loss), ``seconds``, ``seconds_perm``, ``seconds_curve``,
    ``seconds_curve_epoch``."""

    perm: Permutation
    start: Permutation
    controls: torch.Tensor
    history: list[dict[str, Any]]
    config: PAMConfig

    def fraction_changed(self) -> dict[str, float]:
        """Per group: fraction of units whose partner differs from the start."""
        return changed(self.start, self.perm)

    def report(self) -> dict[str, Any]:
        """JSON-serialisable summary (fractions changed, losses, seconds per iteration)."""
        outer = [h for h in self.history if h["iteration"] > 0]
        sizes = self.perm.spec.groups
        frac = self.fraction_changed()
        total = sum(sizes.values())
        return {
            "method": "pam", "config": self.config.to_dict(),
            "groups": {g: {"size": n, "changed_vs_start": frac[g]} for g, n in sizes.items()},
            "fraction_changed": frac,
            "fraction_changed_all": sum(frac[g] * n for g, n in sizes.items()) / max(total, 1),
            "losses": [h["loss"] for h in self.history],
            "accepted": [h["accepted"] for h in outer],
            "seconds_per_outer_iteration": (sum(h["seconds"] for h in outer) / len(outer)
                                            if outer else None),
            "seconds_per_curve_epoch": _mean([h["seconds_curve_epoch"] for h in self.history]),
            "seconds": sum(h["seconds"] for h in self.history),
            "history": self.history,
        }


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def changed(a: Permutation, b: Permutation) -> dict[str, float]:
    """Per group: fraction of units ``i`` with ``a[g][i] != b[g][i]``."""
    return {g: float((a[g] != b[g]).float().mean()) for g in a.spec.groups}
