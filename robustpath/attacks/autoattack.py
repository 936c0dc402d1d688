"""Standard AutoAttack (Croce & Hein, ICML 2020) from the authors' own code.

The engine is PyPI ``pyautoattack`` (fra31/auto-attack, RobustBench's own
dependency). ``version`` selects the attack list exactly as their code does:

* ``standard`` (default; RobustBench's leaderboard): APGD-CE (100 iterations, 1
  restart), APGD-T (100 iterations, 9 target classes), FAB-T (100 iterations, 9
  target classes), Square (5,000 queries). About 1,900 gradient passes on an
  example that no attack breaks (``benchmarks/STRONG.md`` counts them).
* ``plus``: APGD-CE and APGD-DLR with 5 restarts, FAB with 5 restarts, Square,
  APGD-T, FAB-T.
* ``rand``: APGD-CE and APGD-DLR with expectation over 20 transformations
  (for randomized defenses).
* ``custom``: the sub-attacks named in ``attacks`` (``apgd-ce``, ``apgd-dlr``,
  ``apgd-t``, ``fab``, ``fab-t``, ``square``) with pyautoattack's constructor
  settings (APGD 100 iterations, 5 restarts; FAB 100 iterations, 5 restarts;
  Square 5,000 queries).

Inputs are pixels in [0, 1] ``[N, C, H, W]``; the model returns logits (its
normalisation is inside it). Norms: ``linf`` and ``l2`` (pyautoattack's L1 is not
exposed: robustpath's threat models are L-inf and L2).

:class:`StandardAutoAttack` follows robustpath's ``attack(model, x, y) -> x_adv``
signature (registered as ``autoattack``) and adds :meth:`StandardAutoAttack.run`,
which returns the per-example outcome (robust after every sub-attack), the robust
accuracy after each sub-attack, the warnings of AutoAttack's own checks (randomness,
output range, dynamic model, number of classes, zero gradients, Square beating the
gradient attacks) and the number of gradient passes it spent. With ``state_path`` a
killed evaluation resumes after its last finished sub-attack. This is robustpath's own
state file, not pyautoattack's ``EvaluationState``, which cannot resume in 0.2.0 (see
:meth:`StandardAutoAttack.run`): the sub-attacks run one per ``run_standard_evaluation``
call, in the version's order, each on the examples still robust, as in one call. One
difference follows: AutoAttack's checks run at the start of every sub-attack's call, on
the first batch of the examples that sub-attack attacks (the clean-correct ones for the
first), where one call runs them once on the first batch of all examples; a point with
no clean-correct example is therefore not checked.

pyautoattack re-seeds torch's global RNG inside each sub-attack; the run is wrapped
in :func:`torch.random.fork_rng` so that callers' random streams are not disturbed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from robustpath import progress as progress_mod
from robustpath.attacks.base import (
    ATTACKS,
    Attack,
    AttackConfig,
    check_version,
    eval_mode,
)
from robustpath.errors import UserError

_NORM = {"linf": "Linf", "l2": "L2"}


def _require():
    try:
        import pyautoattack
    except ImportError:  # pragma: no cover - a dependency of robustbench, installed with us
        raise UserError("pyautoattack is not installed: pip install pyautoattack") from None
    return pyautoattack


class _Counter(nn.Module):
    """Counts example-passes through ``model``: with gradients (gradient passes) and
    without (queries). Same function as ``model``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.grad_passes = 0
        self.queries = 0
        self.on_pass = None  # a progress bar's update, while one is shown

    def forward(self, x):
        if torch.is_grad_enabled() and x.requires_grad:
            self.grad_passes += x.shape[0]
        else:
            self.queries += x.shape[0]
        if self.on_pass is not None:
            self.on_pass(x.shape[0])
        return self.model(x)


#: pyautoattack's sub-attack objects, whose ``perturb`` runs one batch
_ENGINES = ("apgd", "apgd_targeted", "fab", "square")


@contextlib.contextmanager
def _bar(aa, counter: _Counter, desc: str, batches: int, progress: bool):
    """A bar over the example-passes of one sub-attack, named by its batch
    (``<desc> batch i/n``): ``run_standard_evaluation`` loops over the batches itself,
    so the bar counts the model's passes and each engine's ``perturb`` (one batch)
    moves the batch number. Shown only when :func:`robustpath.progress.enabled`."""
    if not progress_mod.enabled(progress):
        yield
        return
    bar = progress_mod.bar(desc=f"{desc} batch 1/{batches}", unit="pass", progress=progress)
    done = [0]
    wrapped = []
    for name in _ENGINES:
        engine = getattr(aa, name, None)
        if engine is None or not hasattr(engine, "perturb"):
            continue

        def perturb(*args, _inner=engine.perturb, **kwargs):
            out = _inner(*args, **kwargs)
            done[0] += 1
            if done[0] < batches:
                bar.set_description(f"{desc} batch {done[0] + 1}/{batches}", refresh=False)
            return out

        engine.perturb = perturb  # an instance attribute: removed again below
        wrapped.append(engine)
    counter.on_pass = bar.update
    try:
        yield
    finally:
        counter.on_pass = None
        for engine in wrapped:
            del engine.perturb
        bar.close()


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.warnings: list[str] = []

    def emit(self, record):
        msg = record.getMessage()
        if record.levelno >= logging.WARNING and msg not in self.warnings:
            self.warnings.append(msg)


@contextlib.contextmanager
def _captured():
    log = logging.getLogger("auto-attack")
    handler = _Capture()
    saved = (log.level, log.propagate)
    log.setLevel(logging.WARNING)  # only its check warnings are kept
    log.propagate = False  # AutoAttack's messages go to the run's records, not the console
    log.addHandler(handler)
    try:
        yield handler
    finally:
        log.removeHandler(handler)
        log.setLevel(saved[0])
        log.propagate = saved[1]


@dataclass
class AAOutcome:
    """What one AutoAttack evaluation found on ``N`` examples.

    ``clean`` / ``robust``: bool ``[N]`` (correct on clean inputs / still correct after
    every sub-attack); ``x_adv`` ``[N, C, H, W]`` (the successful adversarial example
    where one was found in this call, else the clean input); ``after``: robust accuracy
    after each sub-attack, in the order run; ``warnings``: AutoAttack's own check
    messages; ``grad_passes`` / ``queries``: example-passes with / without gradients,
    per example; ``attacks``: the sub-attacks of the version; ``resumed``: sub-attacks
    restored from ``state_path`` instead of run.
    """

    clean: torch.Tensor
    robust: torch.Tensor
    x_adv: torch.Tensor
    after: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    grad_passes: float = 0.0
    queries: float = 0.0
    attacks: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        return float(self.robust.float().mean()) if len(self.robust) else float("nan")


class StandardAutoAttack:
    """AutoAttack by Croce & Hein's own code (``pyautoattack``), see module docstring.

    Built from an :class:`robustpath.attacks.base.AttackConfig`: ``norm`` (linf | l2),
    ``eps`` (pixels), ``aa_version`` (default standard), ``aa_attacks`` (custom only),
    ``seed`` (default 0: deterministic). ``steps``, ``step_size`` and ``restarts`` are
    not used: the version fixes them.
    """

    def __init__(self, cfg, num_classes: int = 10):
        from robustpath.attacks.base import parse_norm

        self.norm = _NORM[parse_norm(cfg.norm).value]
        self.eps = float(cfg.eps)
        self.version, self.attacks = check_version(getattr(cfg, "aa_version", None),
                                                   getattr(cfg, "aa_attacks", None))
        self.seed = 0 if cfg.seed is None else int(cfg.seed)
        self.num_classes = int(num_classes)
        self.batch_size = 500

    def build(self, model: nn.Module, device):
        """The configured ``pyautoattack.AutoAttack`` on ``model``."""
        pyaa = _require()
        kw = {"norm": self.norm, "eps": self.eps, "version": self.version, "seed": self.seed,
              "device": device}
        if self.version == "custom":
            kw["attacks"] = list(self.attacks)
        return pyaa.AutoAttack(model, **kw)

    def describe(self) -> dict:
        """The attack's identity for cards and keys (library version included)."""
        from importlib.metadata import PackageNotFoundError, version

        try:
            lib = version("pyautoattack")
        except PackageNotFoundError:  # pragma: no cover
            lib = "unknown"
        return {"name": "autoattack", "engine": f"pyautoattack {lib}", "version": self.version,
                "attacks": list(self.attacks) if self.attacks else None, "norm": self.norm,
                "eps": self.eps, "seed": self.seed}

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
            state_path: str | Path | None = None, batch_size: int | None = None,
            progress: bool = False, desc: str = "AA") -> AAOutcome:
        """Run AutoAttack on ``x`` [N, C, H, W] in [0, 1], ``y`` [N]; see :class:`AAOutcome`.

        The version's sub-attacks run one after the other on the examples still robust,
        exactly as ``run_standard_evaluation`` orders them, but one sub-attack per call,
        so that ``state_path`` (a JSON file, written atomically after each sub-attack:
        the robust flags and the finished sub-attacks) lets a killed evaluation resume
        after its last finished sub-attack. pyautoattack 0.2.0's own ``EvaluationState``
        cannot resume: ``to_disk`` writes the attack set as a string that ``from_disk``
        reads back unchanged, so the resumed run fails its own "different set of attacks"
        check, and a resumed ``run_standard_evaluation`` reads ``y_adv`` before assigning
        it. A damaged or foreign state file is discarded and the evaluation starts over.

        ``progress``: a bar per sub-attack (``<desc> apgd-ce batch 1/1``) counting the
        model's example-passes (:mod:`robustpath.progress`).
        """
        bs = int(batch_size or self.batch_size)
        state = Path(state_path) if state_path is not None else None
        forks = [x.device.index or 0] if x.device.type == "cuda" else []
        with eval_mode(model), torch.random.fork_rng(devices=forks), _captured() as cap:
            return self._run(model, x.detach(), y, state, bs, cap, progress, desc)

    def _load_state(self, state: Path | None, n: int, attacks: list[str]):
        if state is None or not state.exists():
            return None
        try:
            d = json.loads(state.read_text())
            if d["attacks"] != attacks or len(d["robust"]) != n or len(d["clean"]) != n \
                    or d["aa"] != self.describe():
                raise ValueError("another evaluation")
            return d
        except (OSError, ValueError, KeyError, TypeError):
            state.unlink(missing_ok=True)  # cut off by a kill, or another evaluation's
            return None

    def _run(self, model, x, y, state, bs, cap, progress=False, desc="AA") -> AAOutcome:
        from robustpath.io.store import atomic_write_json
        from robustpath.models.fuse import fast_view

        n = len(x)
        counter = _Counter(fast_view(model))
        aa = self.build(counter, x.device)
        attacks = list(aa.attacks_to_run)
        with torch.no_grad():
            clean = torch.cat([counter(x[i:i + bs]).argmax(1) == y[i:i + bs]
                               for i in range(0, n, bs)]).cpu() if n else torch.zeros(0, bool)
        d = self._load_state(state, n, attacks)
        if d is not None and d["clean"] != clean.tolist():
            d = None  # not this model
        done = list(d["done"]) if d else []
        after = dict(d["after"]) if d else {}
        flags = torch.tensor(d["robust"], dtype=torch.bool) if d else clean.clone()
        resumed = list(done)
        x_adv = x.detach().clone()
        for name in attacks:
            if name in done:
                continue
            idx = flags.nonzero().flatten()
            if len(idx):
                aa.attacks_to_run = [name]  # the version's settings of this sub-attack
                xs, ys = x[idx.to(x.device)], y[idx.to(y.device)]
                with _bar(aa, counter, f"{desc} {name}", math.ceil(len(idx) / bs), progress):
                    adv, _ = aa.run_standard_evaluation(xs, ys, batch_size=bs)
                with torch.no_grad():
                    broken = torch.cat([counter(adv[i:i + bs]).argmax(1) != ys[i:i + bs]
                                        for i in range(0, len(idx), bs)]).cpu()
                flags[idx[broken]] = False
                x_adv[idx[broken].to(x.device)] = adv[broken.to(adv.device)].detach()
            done.append(name)
            after[name] = float(flags.float().mean()) if n else float("nan")
            if state is not None:
                atomic_write_json(state, {"attacks": attacks, "done": done, "after": after,
                                          "clean": clean.tolist(), "robust": flags.tolist(),
                                          "aa": self.describe()})
        aa.attacks_to_run = attacks
        grad = [v for k, v in after.items() if k != "square"]
        if "square" in after and grad and after["square"] < min(grad) - 0.002:
            cap.warnings.append(  # AutoAttack's check_square_sr, on the whole evaluation
                "Square Attack has decreased the robust accuracy of "
                f"{min(grad) - after['square']:.2%}: the gradient attacks may be unreliable "
                "here (AutoAttack's check)")
        return AAOutcome(clean=clean, robust=flags & clean, x_adv=x_adv.cpu(), after=after,
                         warnings=list(cap.warnings),
                         grad_passes=counter.grad_passes / max(n, 1),
                         queries=counter.queries / max(n, 1), attacks=attacks, resumed=resumed)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            return self.run(model, x.detach(), y, state_path=Path(d) / "state.json",
                            batch_size=max(len(x), 1)).x_adv.to(x.device)


@ATTACKS.register("autoattack")
def _autoattack(cfg: AttackConfig, num_classes: int) -> Attack:
    return StandardAutoAttack(cfg, num_classes)
