"""Tatro et al.'s PAM, as in their code (IBM/NeuronAlignment ``training/train_curve_pam.py``,
``models/curves_pam.py``, ``utils/utils.py:96-273``).

Problem: ``min_{P, phi} E_t E_(x,y) CE(f(x; theta(t)), y)`` over permutations ``P`` of B's
hidden units (one per group of robustpath's graph-derived permutation spec) and the
offset ``phi`` of the Bezier control point, with their parametrisation

    theta(t) = (1-t)^2 theta_A + 2t(1-t) (theta_A / 2 + P theta_B / 2 + phi) + t^2 P theta_B,

so the control point moves with P (``curves_pam.py:56-62``), and ``phi = 0`` at the start
(``init_zero``: the line). Each outer iteration:

1. **permutation step** (``perm_epochs`` epochs, theirs 20): every group's matrix is
   relaxed to a doubly stochastic S starting at the current permutation P_k; per batch,
   one t ~ U(0, 1), plain SGD on the loss (``perm_lr`` 0.05, decayed per epoch by
   ``0.5^(e // 20) * 0.9996^e``), the proximal step ``S <- (S + (lr/nu) P_k)/(1 + lr/nu)``
   (nu = 1e3), then :func:`~.birkhoff.project_ds_tatro` (20 rounds). phi is fixed.
2. **candidates** (``utils.py:198-259``): the Hungarian projection of S, the previous
   permutation P_k, and ``bvn_samples`` (32) draws from the Birkhoff-von Neumann
   decompositions of the S (per group, from the 11 largest terms). Each is scored by
   the loss on the selection batches (the whole training set by default, one t per
   batch from ``linspace(0, 1, batches)``, batch statistics); the lowest wins (P_k
   is kept over the projection on ties; samples must be strictly lower).
3. **curve step** (``curve_epochs``, theirs 250): SGD with Nesterov momentum 0.9 on phi,
   lr 0.1 with the same per-epoch decay, loss plus ``wd/2 ||theta(t)||^2`` (5e-4), and
   the proximal step towards phi at the start of the step.

Budget scaling (not theirs; off by default): with ``perm_lr_ref_steps`` = N the permutation
lr becomes ``perm_lr * N / (our permutation steps)``, so a short run moves as far as their
20 epochs x 391 batches would (N = 7820: the bench's ``tatro-*`` alignments,
:func:`robustpath.engine.keys.tatro_config`; ``studies.pam_tatro`` sets its lr by the same rule).

Objective: ``"clean"`` (theirs) or ``"robust"`` (PGD against theta(t) in the loop, as
robustpath's curve training). BatchNorm normalises with batch statistics throughout.
Warm start: pass B already permuted by an alignment (``start="activation"`` in
:func:`warm_start`) or B itself (the identity). Not theirs: non-BatchNorm buffers of B
that the spec permutes (none in the registered models) stay unpermuted.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from robustpath import progress as progress_mod
from robustpath.align.permute import Permutation, apply, identity_permutation
from robustpath.align.spec import permutation_spec
from robustpath.attacks.base import AttackConfig, build_attack
from robustpath.data import Batches
from robustpath.errors import UserError
from robustpath.pam.birkhoff import bvn_decomposition, project_ds_tatro, sample_bvn
from robustpath.pam.relaxed import permutation_matrix, relaxed_state, round_to_permutation
from robustpath.paths.curves import Curve, CurvePoint, build_curve


@dataclass
class TatroPAMConfig:
    """Defaults: theirs (``train_curve_pam.py`` with the README's command)."""

    objective: str = "clean"        # clean (theirs) | robust (PGD in the loop)
    outer_iters: int = 1
    perm_epochs: int = 20
    curve_epochs: int = 250
    perm_lr: float = 0.05
    curve_lr: float = 0.1
    momentum: float = 0.9           # curve step (Nesterov); the permutation step has none
    weight_decay: float = 5e-4      # L2 on theta(t) in the curve step
    lr_halve_every: int = 20
    lr_decay: float = 0.9996
    nu: float = 1e3
    ds_iters: int = 20
    bvn_samples: int = 32
    bvn_top: int = 11
    batch_size: int = 128
    select_examples: int = 0        # 0: the whole training set
    # 0: perm_lr as given. N > 0: perm_lr * N / (our permutation steps per outer iteration),
    # so that lr x steps equals perm_lr x N (theirs: 20 epochs x 391 CIFAR-10 batches = 7820)
    perm_lr_ref_steps: int = 0
    attack: AttackConfig | None = field(default_factory=AttackConfig)  # robust objective
    seed: int = 0

    def validate(self) -> TatroPAMConfig:
        if self.objective not in ("clean", "robust"):
            raise UserError(f"PAM objective must be clean or robust, got {self.objective!r}")
        for name in ("outer_iters", "batch_size", "lr_halve_every", "bvn_top"):
            if int(getattr(self, name)) < 1:
                raise UserError(f"PAM {name} must be >= 1")
        for name in ("perm_epochs", "curve_epochs", "ds_iters", "bvn_samples", "select_examples",
                     "perm_lr_ref_steps"):
            if int(getattr(self, name)) < 0:
                raise UserError(f"PAM {name} must be >= 0")
        if self.nu <= 0 or self.perm_lr <= 0 or self.curve_lr <= 0:
            raise UserError("PAM nu and learning rates must be > 0")
        if self.objective == "robust" and self.attack is None:
            raise UserError("the robust PAM objective needs an attack")
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    def perm_lr_for(self, batches_per_epoch: int) -> float:
        """The permutation step's base lr for an epoch of ``batches_per_epoch`` batches."""
        if not self.perm_lr_ref_steps or not self.perm_epochs:
            return self.perm_lr
        return self.perm_lr * self.perm_lr_ref_steps / (self.perm_epochs * max(1, batches_per_epoch))

    def epoch_lr(self, base: float, epoch: int) -> float:
        """Their LambdaLR: ``base * 0.5^(epoch // 20) * 0.9996^epoch`` (epoch from 0)."""
        return base * 0.5 ** (epoch // self.lr_halve_every) * self.lr_decay ** epoch


def perm_update(s: torch.Tensor, grad: torch.Tensor, lr: float, s_prev: torch.Tensor,
                nu: float, ds_iters: int) -> torch.Tensor:
    """One relaxed-permutation update: SGD step, proximal pull to ``s_prev``, projection."""
    s = s - lr * grad
    s = (s + (lr / nu) * s_prev) / (1.0 + lr / nu)
    return project_ds_tatro(s, ds_iters)


class _Path:
    """theta(t) with their parametrisation, B's units multiplied by matrices ``mats``."""

    def __init__(self, model_a: nn.Module, model_b: nn.Module, spec, device):
        self.ref: Curve = build_curve("bezier", model_a, model_b, bends=1).to(device)
        self.model_b, self.spec = model_b, spec
        self.b_params = {n: p.detach() for n, p in model_b.named_parameters()}

    def theta(self, t: float, mats: dict, phi: torch.Tensor) -> torch.Tensor:
        relaxed = relaxed_state(self.model_b, self.spec, mats)
        theta_b = torch.cat([relaxed.get(n, self.b_params[n]).reshape(-1)
                             for n in self.ref.param_names])
        w0, w1, w2 = self.ref.weights(t)
        ta = self.ref.theta_a
        return w0 * ta + w1 * (0.5 * ta + 0.5 * theta_b + phi) + w2 * theta_b

    def logits(self, x, t, theta) -> torch.Tensor:
        return self.ref.forward_batch_stats(x, t, self.ref.unflatten(theta),
                                            self.ref.batch_buffers_at(t))

    def loss(self, x, y, t, mats, phi, attack) -> tuple[torch.Tensor, torch.Tensor]:
        theta = self.theta(t, mats, phi)
        if attack is not None:
            pt = CurvePoint(self.ref, t, {k: v.detach()
                                          for k, v in self.ref.unflatten(theta).items()})
            x = attack(pt, x, y)
        return F.cross_entropy(self.logits(x, t, theta), y), theta


@dataclass
class TatroPAMResult:
    """``perm``: permutation of the B that was passed (gather convention, robustpath.align);
    ``phi``: the control-point offset ``[P]``; ``history``: one dict per outer iteration."""

    perm: Permutation
    phi: torch.Tensor
    history: list[dict[str, Any]]
    config: TatroPAMConfig

    def aligned_b(self, model_b: nn.Module) -> nn.Module:
        return apply(model_b, self.perm)

    def curve(self, model_a: nn.Module, model_b: nn.Module) -> Curve:
        """The fitted quadratic Bezier between A and ``aligned_b(model_b)``."""
        c = build_curve("bezier", model_a, self.aligned_b(model_b), bends=1)
        with torch.no_grad():
            ctrl = 0.5 * c.theta_a + 0.5 * c.theta_b + self.phi.to(c.theta_a.device)
            c.controls.copy_(ctrl.unsqueeze(0))
        return c

    def report(self) -> dict[str, Any]:
        """JSON-serialisable summary: units changed vs the start (per group and all), the
        candidate-selection loss after each outer iteration, the winning candidate per
        iteration, seconds, and the full ``history``."""
        sizes = self.perm.spec.groups
        frac = {g: float((self.perm[g] != torch.arange(n)).float().mean())
                for g, n in sizes.items()}
        return {"method": "tatro-pam", "config": self.config.to_dict(),
                "fraction_changed": frac, "fraction_changed_all": self.fraction_changed(),
                "losses": [h["select_loss_after"] for h in self.history],
                "chosen": [h["chosen"] for h in self.history],
                "seconds_per_outer_iteration": (sum(h["seconds"] for h in self.history)
                                                / max(1, len(self.history))),
                "history": self.history}

    def fraction_changed(self, start: Permutation | None = None) -> float:
        """Fraction of all units whose partner differs from ``start`` (default identity)."""
        start = start or identity_permutation(self.perm.spec)
        diff = sum(int((self.perm[g] != start[g]).sum()) for g in self.perm)
        return diff / max(1, sum(len(p) for p in self.perm.values()))


def select_loss(path: _Path, batches: list, mats: dict, phi: torch.Tensor, attack) -> float:
    """Mean loss over ``batches`` with t = linspace(0, 1, len(batches)), one t per batch."""
    ts = np.linspace(0.0, 1.0, len(batches)) if len(batches) > 1 else [0.5]
    total, n = 0.0, 0
    for (xb, yb), t in zip(batches, ts):
        with torch.no_grad():
            theta = path.theta(float(t), mats, phi)
        if attack is not None:
            pt = CurvePoint(path.ref, float(t), path.ref.unflatten(theta))
            xb = attack(pt, xb, yb)
        with torch.no_grad():
            total += float(F.cross_entropy(path.logits(xb, float(t), theta), yb, reduction="sum"))
        n += len(yb)
    return total / max(n, 1)


def _mats(perm: Permutation, device) -> dict[str, torch.Tensor]:
    return {g: permutation_matrix(p, torch.float32).to(device) for g, p in perm.items()}


def tatro_pam(model_a: nn.Module, model_b: nn.Module, x_train: torch.Tensor,
              y_train: torch.Tensor, cfg: TatroPAMConfig | None = None, *,
              device: str | torch.device = "cpu", progress: bool = True) -> TatroPAMResult:
    """Run their PAM between A and B (B as given is the start: the identity).

    ``x_train`` ``[N, C, H, W]`` in [0, 1], ``y_train`` ``[N]``. Returns the permutation of
    B, phi and the history (per outer iteration: ``perm_loss`` per epoch, ``candidates``
    {projection, previous, best_sample} losses, ``chosen``, ``fraction_changed``,
    ``curve_loss`` per epoch, seconds)."""
    cfg = (cfg or TatroPAMConfig()).validate()
    device = torch.device(device)
    model_a, model_b = model_a.to(device).eval(), model_b.to(device).eval()
    spec = permutation_spec(model_a, x_train[:2].to(device))
    path = _Path(model_a, model_b, spec, device)
    attack = None
    if cfg.objective == "robust":
        attack = build_attack(AttackConfig(**{**cfg.attack.to_dict(), "seed": None}),
                              int(y_train.max()) + 1)
    sel = x_train if not cfg.select_examples else x_train[:cfg.select_examples]
    sel_batches = list(Batches(sel, y_train[:len(sel)], cfg.batch_size, device=device))
    loader = Batches(x_train, y_train, cfg.batch_size, shuffle=True, seed=cfg.seed,
                     drop_last=len(x_train) > cfg.batch_size, device=device)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    phi = torch.zeros_like(path.ref.theta_a)
    perm = identity_permutation(spec)
    history = []
    for it in range(cfg.outer_iters):
        start = time.perf_counter()
        rec: dict[str, Any] = {"iteration": it + 1, "perm_loss": [], "curve_loss": []}
        prev = _mats(perm, device)
        s = {g: m.clone() for g, m in prev.items()}
        perm_lr = cfg.perm_lr_for(len(loader))
        rec["perm_lr"] = perm_lr
        for e in range(cfg.perm_epochs):
            lr = cfg.epoch_lr(perm_lr, e)
            tot, n = 0.0, 0
            for xb, yb in progress_mod.bar(loader, desc=f"PAM perm epoch {e + 1}", unit="batch",
                                           progress=progress):
                t = float(torch.rand((), generator=gen))
                for m in s.values():
                    m.requires_grad_(True)
                loss, _ = path.loss(xb, yb, t, s, phi, attack)
                grads = torch.autograd.grad(loss, list(s.values()), allow_unused=True)
                with torch.no_grad():
                    s = {g: perm_update(m.detach(), gr if gr is not None else torch.zeros_like(m),
                                        lr, prev[g], cfg.nu, cfg.ds_iters)
                         for (g, m), gr in zip(s.items(), grads)}
                tot += float(loss.detach()) * len(yb)
                n += len(yb)
            rec["perm_loss"].append(tot / max(n, 1))
        # ---- candidates: projection, previous, Birkhoff-von Neumann samples
        proj = Permutation(spec, {g: round_to_permutation(m.detach().cpu()) for g, m in s.items()})
        losses = {"projection": select_loss(path, sel_batches, _mats(proj, device), phi, attack),
                  "previous": select_loss(path, sel_batches, prev, phi, attack)}
        best, best_loss, chosen = proj, losses["projection"], "projection"
        if losses["previous"] <= best_loss:
            best, best_loss, chosen = perm, losses["previous"], "previous"
        if cfg.bvn_samples:
            terms = {g: bvn_decomposition(m.detach().cpu().double().numpy()) for g, m in s.items()}
            sample_best = float("inf")
            for _ in range(cfg.bvn_samples):
                cand = Permutation(spec, {g: torch.as_tensor(sample_bvn(terms[g], rng, cfg.bvn_top))
                                          for g in s})
                lo = select_loss(path, sel_batches, _mats(cand, device), phi, attack)
                sample_best = min(sample_best, lo)
                if lo < best_loss:
                    best, best_loss, chosen = cand, lo, "sample"
            losses["best_sample"] = sample_best
        rec.update(candidates=losses, chosen=chosen,
                   fraction_changed=TatroPAMResult(best, phi, [], cfg).fraction_changed(perm))
        perm = best
        # ---- curve step on phi
        mats = _mats(perm, device)
        phi_prev = phi.clone()
        phi = phi.clone().requires_grad_(True)
        opt = torch.optim.SGD([phi], lr=cfg.curve_lr, momentum=cfg.momentum, nesterov=True)
        for e in range(cfg.curve_epochs):
            lr = cfg.epoch_lr(cfg.curve_lr, e)
            for group in opt.param_groups:
                group["lr"] = lr
            tot, n = 0.0, 0
            for xb, yb in progress_mod.bar(loader, desc=f"PAM curve epoch {e + 1}", unit="batch",
                                           progress=progress):
                t = float(torch.rand((), generator=gen))
                loss, theta = path.loss(xb, yb, t, mats, phi, attack)
                obj = loss + 0.5 * cfg.weight_decay * theta.pow(2).sum()
                opt.zero_grad(set_to_none=True)
                obj.backward()
                opt.step()
                with torch.no_grad():
                    phi.copy_((phi + (lr / cfg.nu) * phi_prev) / (1.0 + lr / cfg.nu))
                tot += float(loss.detach()) * len(yb)
                n += len(yb)
            rec["curve_loss"].append(tot / max(n, 1))
        phi = phi.detach()
        rec["select_loss_after"] = select_loss(path, sel_batches, mats, phi, attack)
        rec["seconds"] = time.perf_counter() - start
        history.append(rec)
    return TatroPAMResult(perm, phi, history, cfg)


def warm_start(model_a: nn.Module, model_b: nn.Module, start: str, x: torch.Tensor,
               y: torch.Tensor, device="cpu") -> nn.Module:
    """B for :func:`tatro_pam`: ``"none"`` (identity) or ``"activation"`` (B permuted by
    robustpath's activation matching on ``x``, clean inputs)."""
    if start == "none":
        return model_b
    if start != "activation":
        raise UserError(f"PAM start must be none or activation, got {start!r}")
    from robustpath.align import align

    aligned, _perm, _report = align(model_a, model_b, method="activation",
                                    data=Batches(x, y, 250, device=device), inputs="clean")
    return aligned
