"""Adversarial attacks with one signature: ``attack(model, x, y) -> x_adv``.

Inputs and outputs are pixels in [0, 1], shape ``[N, C, H, W]``. Every attack puts
the model in eval mode while it runs and restores the previous mode afterwards.

Own, batched implementations (fast path, used everywhere by default):

* ``pgd``  - Madry et al. 2018, L-inf or L2, uniform random start in the eps ball,
  ``steps`` steps of size ``step_size`` (default eps/4, i.e. 2/255 for 8/255 as in
  Tatro et al.), ``restarts`` keeping the worst case per example (misclassified
  first, then highest loss). Gradients are taken for the input only. On CPU the
  model's convolution weights are held in channels-last format while the attack
  runs and put back afterwards (faster on cnn-small and resnet20:
  ``benchmarks/RESULTS.md``), and the attack runs on :func:`robustpath.models.fuse.fast_view`
  of the model (eval-mode BatchNorm folded into the convolution before it, ReLU
  after max pooling: the same function with fewer memory-bound passes).
  ``early_stop=True`` is the accuracy-only mode: an example is frozen at the first
  iterate that is misclassified and only the still-correct examples are forwarded
  in later steps and restarts.
* ``fgsm`` - FGSM with random start (Wong et al. 2020, "Fast is better than free"),
  step 1.25 eps by default.
* ``none`` - returns ``x`` unchanged (clean evaluation / clean training).

``autoattack`` - Croce & Hein's AutoAttack from their own code (``pyautoattack``),
standard version by default (APGD-CE, APGD-T, FAB-T, Square; 100 iterations, 9 target
classes, 5,000 queries), also ``plus``, ``rand`` and a custom list
(:mod:`robustpath.attacks.autoattack`). ``steps``/``restarts`` do not apply: the version fixes them.

Adapters to torchattacks (reference implementations): ``ta-pgd`` (torchattacks.PGD /
PGDL2), ``apgd`` (torchattacks APGD-CE, ``steps`` iterations, ``restarts`` restarts),
``ta-autoattack`` (torchattacks.AutoAttack "standard": NOT Croce & Hein's standard
version - its APGD, APGD-T and FAB run 10 iterations and APGD-T targets every other
class, about 200 gradient passes per unbreakable example against about 1,900; kept for
comparison only).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from robustpath import runtime
from robustpath.errors import UserError
from robustpath.models.fuse import fast_view, nhwc_unsafe_weights
from robustpath.numbers import parse_fraction
from robustpath.registry import Registry


class Norm(str, Enum):
    LINF = "linf"
    L2 = "l2"


def parse_norm(text: str) -> Norm:
    try:
        return Norm(str(text).lower())
    except ValueError:
        raise UserError(f"unknown norm {text!r} (known: linf, l2)") from None


#: AutoAttack versions (Croce & Hein's ``standard``; ``plus``, ``rand``; ``custom`` with
#: ``--aa-attacks``) and sub-attacks; the attack itself: :mod:`robustpath.attacks.autoattack`
AA_VERSIONS = ("standard", "plus", "rand", "custom")
AA_ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")


def check_version(version: str | None, attacks) -> tuple[str, tuple[str, ...] | None]:
    """Validate an AutoAttack version and (for ``custom``) its attack list."""
    version = version or "standard"
    if version not in AA_VERSIONS:
        raise UserError(f"unknown AutoAttack version {version!r} (known: {', '.join(AA_VERSIONS)})")
    if version == "custom":
        attacks = tuple(attacks or ())
        if not attacks:
            raise UserError("AutoAttack version custom needs a list of attacks "
                            f"(--aa-attacks, from: {', '.join(AA_ATTACKS)})")
        bad = [a for a in attacks if a not in AA_ATTACKS]
        if bad:
            raise UserError(f"unknown AutoAttack sub-attack(s) {', '.join(bad)} "
                            f"(known: {', '.join(AA_ATTACKS)})")
        return version, attacks
    if attacks:
        raise UserError(f"--aa-attacks needs --aa-version custom (version {version} fixes its "
                        "own attack list)")
    return version, None


@dataclass
class AttackConfig:
    """Attack settings. ``eps`` and ``step_size`` are in pixel units ([0, 1] scale)."""

    name: str = "pgd"
    norm: str = "linf"
    eps: float = 8 / 255
    steps: int = 5
    step_size: float | None = None  # None: eps / 4 for PGD, 1.25 eps for FGSM
    restarts: int = 1
    random_start: bool = True
    seed: int | None = None
    early_stop: bool = False  # PGD: freeze examples once misclassified (accuracy-only mode)
    aa_version: str | None = None       # autoattack: standard (default) | plus | rand | custom
    aa_attacks: list[str] | None = None  # autoattack custom: its sub-attacks

    def __post_init__(self):
        # checked when made, with the CLI's rules (AttackConfig(eps=8) is refused as
        # --eps 8 is), not first when an attack is built from it; on a copy, so the fields
        # stay as given (validate() normalises, e.g. aa_version None -> "standard", and
        # to_dict() of the given values is in cache keys)
        copy.copy(self).validate()

    def validate(self) -> AttackConfig:
        ATTACKS.get(self.name)
        parse_norm(self.norm)
        self.eps = parse_fraction(self.eps, name="eps")
        check_eps_range(self.norm, self.eps)
        if self.step_size is not None:
            self.step_size = parse_fraction(self.step_size, name="step size", allow_zero=False)
        if int(self.steps) < 1:
            raise UserError(f"attack steps must be >= 1, got {self.steps}")
        if int(self.restarts) < 1:
            raise UserError(f"attack restarts must be >= 1, got {self.restarts}")
        self.steps, self.restarts = int(self.steps), int(self.restarts)
        self.early_stop = bool(self.early_stop)
        if self.name == "autoattack" or self.aa_version is not None or self.aa_attacks:
            if self.name != "autoattack":
                raise UserError(f"--aa-version / --aa-attacks apply to autoattack, not {self.name}")
            version, attacks = check_version(self.aa_version, self.aa_attacks)
            self.aa_version, self.aa_attacks = version, list(attacks) if attacks else None
        return self

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("aa_version", "aa_attacks"):  # absent unless set: keys of other attacks unchanged
            if d[k] is None:
                d.pop(k)
        return d


def check_eps_range(norm: str, eps: float) -> None:
    """Under L-inf, a radius above 1 exceeds the pixel range [0, 1]: every image is
    reachable, so the threat model is meaningless (L2 radii may exceed 1)."""
    if str(norm).lower() == "linf" and eps > 1:
        raise UserError(f"--eps {eps:g} under linf exceeds the pixel range [0, 1]; "
                        "give it in pixel units, e.g. 8/255")


class Attack(Protocol):
    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor: ...


ATTACKS: Registry[Callable[[AttackConfig, int], Attack]] = Registry("attack")


def build_attack(cfg: AttackConfig, num_classes: int = 10) -> Attack:
    """Build the attack named by ``cfg.name`` (see module docstring)."""
    cfg.validate()
    return ATTACKS.get(cfg.name)(cfg, num_classes)


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Run ``model`` in eval mode, restoring each submodule's mode afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


def _generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    if seed is None:
        return None
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


def _l2_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (t.dim() - 1)))


def _project(delta: torch.Tensor, norm: Norm, eps: float) -> torch.Tensor:
    if norm is Norm.LINF:
        return delta.clamp(-eps, eps)
    factor = (eps / _l2_norm(delta)).clamp(max=1.0)
    return delta * factor


def _random_start(x: torch.Tensor, norm: Norm, eps: float, g) -> torch.Tensor:
    if norm is Norm.LINF:
        delta = (torch.rand(x.shape, generator=g, device=x.device, dtype=x.dtype) * 2 - 1) * eps
    else:
        d = torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)
        r = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), generator=g, device=x.device)
        delta = d / _l2_norm(d) * r * eps
    return (x + delta).clamp(0, 1) - x


@contextlib.contextmanager
def channels_last_weights(model: nn.Module, x: torch.Tensor):
    """While an attack runs on CPU with 4-D inputs, hold ``model``'s 4-D (convolution)
    parameters in channels-last memory format, so oneDNN runs the convolutions and
    the layers between them in NHWC, which is faster on CPU. The original tensors are
    put back afterwards (same values, layout and storage), also on an exception.
    Weights of :func:`robustpath.models.fuse.nhwc_unsafe` convolutions stay as they are.
    """
    if not (runtime.current().channels_last_cpu and x.device.type == "cpu" and x.dim() == 4):
        yield model
        return
    swapped, unsafe = [], nhwc_unsafe_weights(model)
    for p in model.parameters():
        if p.dim() == 4 and id(p) not in unsafe:
            swapped.append((p, p.data))
            p.data = p.data.to(memory_format=torch.channels_last)  # as Module.to does
    try:
        yield model
    finally:
        for p, original in swapped:
            p.data = original


class PGD:
    """Projected gradient descent on the cross-entropy (Madry et al. 2018).

    Args: ``norm`` linf|l2, ``eps``, ``steps``, ``step_size`` (default eps/4),
    ``restarts`` (worst case kept per example), ``random_start``, ``seed`` (None:
    global RNG), ``early_stop``. Returns ``x_adv`` ``[N, C, H, W]`` with
    ``||x_adv - x|| <= eps`` and values in [0, 1].

    ``early_stop`` (accuracy-only mode): each example is frozen at the first iterate
    the model misclassifies, and later steps and restarts forward only the examples
    still classified correctly, which saves compute on every example already broken.
    With the same seed the iterates are those of the full attack up to the freeze, so
    every example the full attack breaks is broken here too (robust accuracy is the
    same or lower: an example the full attack breaks and then "un-breaks" stays
    broken). Returned points are not the highest-loss ones, so use the full mode for
    robust *loss*.
    """

    def __init__(self, cfg: AttackConfig, num_classes: int = 10):
        self.norm = parse_norm(cfg.norm)
        self.eps = float(cfg.eps)
        self.steps = int(cfg.steps)
        self.step_size = float(cfg.step_size) if cfg.step_size is not None else self.eps / 4
        self.restarts = int(cfg.restarts)
        self.random_start = bool(cfg.random_start)
        self.seed = cfg.seed
        self.early_stop = bool(getattr(cfg, "early_stop", False))

    def _start(self, x: torch.Tensor, g, repeats: int = 1) -> torch.Tensor:
        """Random start in the eps ball. ``repeats`` > 1 (a model that evaluates each
        example ``repeats`` times, :class:`robustpath.paths.stacked.StackedModel`): draw once
        per distinct example and tile, so every copy starts where a separate attack
        with the same seed would."""
        if not (self.random_start and self.eps > 0):
            return torch.zeros_like(x)
        if repeats > 1 and len(x) % repeats == 0:
            n = len(x) // repeats
            d = _random_start(x[:n], self.norm, self.eps, g)
            return torch.cat([d] + [(x[i * n:(i + 1) * n] + d).clamp(0, 1) - x[i * n:(i + 1) * n]
                                    for i in range(1, repeats)])
        return _random_start(x, self.norm, self.eps, g)

    def _step(self, x: torch.Tensor, delta: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        if self.norm is Norm.LINF:
            step = self.step_size * grad.sign()
        else:
            step = self.step_size * grad / _l2_norm(grad)
        delta = _project(delta + step, self.norm, self.eps)
        return (x + delta).clamp_(0, 1) - x

    def _single(self, model, x, y, g, final_eval: bool, repeats: int = 1):
        """One restart on the whole batch: ``(x_adv, losses, wrong)`` (the last two
        only with ``final_eval``, needed to pick the best of several restarts)."""
        delta = self._start(x, g, repeats)
        for _ in range(self.steps if self.eps > 0 else 0):
            delta.requires_grad_(True)
            loss = F.cross_entropy(model(x + delta), y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, [delta])
            with torch.no_grad():
                delta = self._step(x, delta.detach(), grad)
        x_adv = (x + delta).detach()
        if not final_eval:
            return x_adv, None, None
        with torch.no_grad():
            logits = model(x_adv)
            losses = F.cross_entropy(logits, y, reduction="none")
            wrong = logits.argmax(1) != y
        return x_adv, losses, wrong

    def _single_early_stop(self, model, x, y, g, todo, final_eval: bool):
        """One restart in accuracy-only mode on the examples ``todo``.

        Returns ``(x_adv, broken)`` for those examples; ``broken`` marks the ones
        seen misclassified (frozen there). The start is drawn for the whole batch, so
        the random stream, and with it each example's trajectory, is the full attack's.
        """
        delta = self._start(x, g)
        if len(todo) != len(x):
            x, y, delta = x[todo], y[todo], delta[todo]
        active = torch.arange(len(x), device=x.device)
        broken = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        for _ in range(self.steps if self.eps > 0 else 0):
            xa, ya = x[active], y[active]
            d = delta[active].requires_grad_(True)
            logits = model(xa + d)
            loss = F.cross_entropy(logits, ya, reduction="sum")
            (grad,) = torch.autograd.grad(loss, [d])
            with torch.no_grad():
                keep = logits.argmax(1) == ya
                broken[active[~keep]] = True
                active = active[keep]
                if len(active) == 0:
                    break
                delta[active] = self._step(xa[keep], d.detach()[keep], grad[keep])
        if final_eval and len(active):
            with torch.no_grad():
                broken[active] = model(x[active] + delta[active]).argmax(1) != y[active]
        return (x + delta).detach(), broken

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        g = _generator(self.seed, x.device)
        x = x.detach()
        repeats = getattr(model, "input_repeats", 1)
        with eval_mode(model), channels_last_weights(model, x), torch.enable_grad():
            net = fast_view(model)
            if self.early_stop:
                return self._early_stop(net, x, y, g).contiguous()
            more = self.restarts > 1
            best, best_loss, best_wrong = self._single(net, x, y, g, more, repeats)
            for _ in range(self.restarts - 1):
                cand, loss, wrong = self._single(net, x, y, g, True, repeats)
                better = (wrong & ~best_wrong) | ((wrong == best_wrong) & (loss > best_loss))
                best = torch.where(better.view(-1, 1, 1, 1), cand, best)
                best_loss = torch.where(better, loss, best_loss)
                best_wrong = best_wrong | wrong
        return best.contiguous()

    def _early_stop(self, model, x, y, g) -> torch.Tensor:
        best = x.clone()
        todo = torch.arange(len(x), device=x.device)
        for r in range(self.restarts):
            last = r == self.restarts - 1
            x_adv, broken = self._single_early_stop(model, x, y, g, todo, final_eval=not last)
            best[todo] = x_adv
            todo = todo[~broken]
            if len(todo) == 0:
                break
        return best


class FGSMRS:
    """FGSM with uniform random start (Wong et al. 2020): one step of size
    ``step_size`` (default 1.25 eps) from a random point of the L-inf ball."""

    def __init__(self, cfg: AttackConfig, num_classes: int = 10):
        if parse_norm(cfg.norm) is not Norm.LINF:
            raise UserError("fgsm supports only --threat-model Linf")
        self.eps = float(cfg.eps)
        self.step_size = float(cfg.step_size) if cfg.step_size is not None else 1.25 * self.eps
        self.random_start = bool(cfg.random_start)
        self.seed = cfg.seed

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        g = _generator(self.seed, x.device)
        x = x.detach()
        with eval_mode(model), channels_last_weights(model, x), torch.enable_grad():
            delta = _random_start(x, Norm.LINF, self.eps, g) if self.random_start else torch.zeros_like(x)
            delta.requires_grad_(True)
            loss = F.cross_entropy(fast_view(model)(x + delta), y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, [delta])
            delta = (delta.detach() + self.step_size * grad.sign()).clamp(-self.eps, self.eps)
            return (x + delta).clamp(0, 1).detach().contiguous()


class NoAttack:
    """Identity: clean inputs."""

    def __init__(self, cfg: AttackConfig | None = None, num_classes: int = 10):
        pass

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x


@ATTACKS.register("pgd")
def _pgd(cfg: AttackConfig, num_classes: int) -> Attack:
    return PGD(cfg, num_classes)


@ATTACKS.register("fgsm")
def _fgsm(cfg: AttackConfig, num_classes: int) -> Attack:
    return FGSMRS(cfg, num_classes)


@ATTACKS.register("none")
def _none(cfg: AttackConfig, num_classes: int) -> Attack:
    return NoAttack()

