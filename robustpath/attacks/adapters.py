"""Attacks from torchattacks behind robustpath's ``attack(model, x, y)`` signature:
``ta-pgd`` (its PGD / PGDL2), ``apgd`` (its APGD-CE) and ``ta-autoattack`` (its
AutoAttack, which is *not* Croce & Hein's standard version: 10 iterations per
sub-attack; the standard one is ``autoattack``, :mod:`robustpath.attacks.autoattack`).
Registered in :data:`robustpath.attacks.base.ATTACKS` on import of :mod:`robustpath.attacks.base`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from robustpath.attacks.base import ATTACKS, Attack, AttackConfig, Norm, eval_mode, parse_norm
from robustpath.errors import UserError


class TorchAttacksAdapter:
    """Wraps a torchattacks attack class so it follows ``attack(model, x, y)``.

    torchattacks binds the model at construction; we rebuild the (cheap) wrapper for
    each call so the same adapter works for every model on a path.
    """

    def __init__(self, factory: Callable[[nn.Module], object]):
        self.factory = factory

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with eval_mode(model):
            atk = self.factory(model)
            return atk(x.detach(), y).detach()


def _require_torchattacks():
    try:
        import torchattacks
    except ImportError:
        raise UserError("torchattacks is not installed: pip install torchattacks") from None
    return torchattacks


@ATTACKS.register("ta-pgd")
def _ta_pgd(cfg: AttackConfig, num_classes: int) -> Attack:
    ta = _require_torchattacks()
    alpha = cfg.step_size if cfg.step_size is not None else cfg.eps / 4
    if parse_norm(cfg.norm) is Norm.LINF:
        return TorchAttacksAdapter(lambda m: ta.PGD(m, eps=cfg.eps, alpha=alpha, steps=cfg.steps,
                                                    random_start=cfg.random_start))
    return TorchAttacksAdapter(lambda m: ta.PGDL2(m, eps=cfg.eps, alpha=alpha, steps=cfg.steps,
                                                  random_start=cfg.random_start))


def _ta_norm(cfg: AttackConfig) -> str:
    return "Linf" if parse_norm(cfg.norm) is Norm.LINF else "L2"


@ATTACKS.register("apgd")
def _apgd(cfg: AttackConfig, num_classes: int) -> Attack:
    ta = _require_torchattacks()
    seed = 0 if cfg.seed is None else cfg.seed
    return TorchAttacksAdapter(lambda m: ta.APGD(m, norm=_ta_norm(cfg), eps=cfg.eps,
                                                 steps=cfg.steps, n_restarts=cfg.restarts,
                                                 seed=seed, loss="ce"))


@ATTACKS.register("ta-autoattack")
def _ta_autoattack(cfg: AttackConfig, num_classes: int) -> Attack:
    ta = _require_torchattacks()
    seed = 0 if cfg.seed is None else cfg.seed
    return TorchAttacksAdapter(lambda m: ta.AutoAttack(m, norm=_ta_norm(cfg), eps=cfg.eps,
                                                       version="standard", n_classes=num_classes,
                                                       seed=seed))
