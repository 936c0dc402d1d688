"""Adversarial training of endpoint networks.

Methods (registry ``TRAINERS`` over the attack used to make training inputs):

* ``pgd``   - Madry et al. 2018: every batch replaced by PGD(eps, steps, step size).
* ``fgsm``  - FGSM with random start, step 1.25 eps (Wong et al. 2020).
* ``clean`` - standard training.

SGD with Nesterov momentum 0.9, weight decay 5e-4, a one-cycle (default), cosine or garipov
learning-rate schedule stepped per batch. Seeded: the same config gives the same
model on the same device. Endpoints are saved as safetensors with a JSON sidecar
(resolved config, versions, git revision, final clean / robust test accuracy).

Resumable like curve training (:mod:`robustpath.paths.fit`): with a ``work_dir``,
the end of every epoch is checkpointed (:mod:`robustpath.train.state`), and a call with
the same config resumes after the newest complete epoch and ends bit-for-bit where an
uninterrupted run ends (same device and threads). :func:`train_endpoint` uses
``<path>.epochs/`` and removes it once the model is saved.

CLI: ``python -m robustpath.train --arch cnn-small --seed 0 --out runs/ep0`` writes
``runs/ep0.safetensors`` + ``runs/ep0.json`` (suffixes appended literally: ``--out
runs/eps0.1`` gives ``runs/eps0.1.*``); an ``--out`` that is a folder (existing, or
ending in ``/``) gets ``model.*`` inside it; without ``--out``,
``runs/train-<dataset>-<arch>-s<seed>.*`` (git-ignored). Writability is checked before
training.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from robustpath import data as data_mod
from robustpath import models, runtime
from robustpath import progress as progress_mod
from robustpath.attacks.base import AttackConfig, build_attack, check_eps_range
from robustpath.attacks.metrics import per_example
from robustpath.device import resolve, training_autocast
from robustpath.errors import UserError, check_finite_loss
from robustpath.io.store import config_hash, save_model
from robustpath.models.fuse import fast_view, nhwc_unsafe
from robustpath.numbers import parse_fraction
from robustpath.registry import Registry
from robustpath.train.state import Restart as _Restart
from robustpath.train.state import epochs_dir
from robustpath.train.state import resume as _resume
from robustpath.train.state import save_epoch as _save_epoch

SCHEDULES: Registry = Registry("schedule")



@SCHEDULES.register("onecycle")
def _onecycle(opt, total_steps: int, lr: float):
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(1, total_steps),
                                               pct_start=0.3, anneal_strategy="linear")


@SCHEDULES.register("cosine")
def _cosine(opt, total_steps: int, lr: float):
    return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total_steps))


@SCHEDULES.register("garipov")
def _garipov(opt, total_steps: int, lr: float):
    """Garipov et al. 2018's schedule, used by Tatro et al. for endpoints and curves
    (IBM/NeuronAlignment training/train_model_adversarial.py:124-132): lr for the first
    half, linear decay to lr/100 at 90 %, then lr/100. Stepped per batch (theirs: per epoch)."""
    def factor(step: int) -> float:
        a = step / max(1, total_steps)
        return 1.0 if a <= 0.5 else (1.0 - (a - 0.5) / 0.4 * 0.99 if a <= 0.9 else 0.01)
    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


METHODS = {"pgd": "pgd", "fgsm": "fgsm", "clean": "none"}
#: ``attack_mode``: make training inputs with the model in eval mode (robustpath's
#: default: the running statistics are not touched by attack passes) or in train mode
#: (Tatro et al.'s AttackPGD on a net in train mode: batch statistics, and every attack
#: forward pass updates the running statistics).
ATTACK_MODES = ("eval", "train")


class _TrainModeTarget(nn.Module):
    """The attack target for ``attack_mode="train"``: runs ``model`` with every module in
    train mode even inside the attack's ``eval_mode``; not rewritten by robustpath.models.fuse
    (its folded BatchNorm would use running statistics)."""

    robustpath_no_fuse = True

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        modes = [(m, m.training) for m in self.model.modules()]
        for m, _ in modes:
            m.training = True
        try:
            return self.model(x)
        finally:
            for m, training in modes:
                m.training = training


def random_rotation(x: torch.Tensor, degrees: float, g: torch.Generator) -> torch.Tensor:
    """Rotate each image of ``x`` ``[N, C, H, W]`` by an angle ~ U(-degrees, degrees) about
    its centre, nearest-neighbour, zeros outside: torchvision's ``RandomAffine(degrees)``
    with its defaults, as in Tatro et al.'s CIFAR transforms (utils/data.py:30)."""
    angle = (torch.rand(len(x), generator=g) * 2 - 1) * math.radians(degrees)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(len(x), 2, 3)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


@dataclass
class TrainConfig:
    """Everything that determines an endpoint. Defaults: the quick CPU preset."""

    dataset: str = "fashion-mnist"
    arch: str = "cnn-small"
    width: float = 1.0
    seed: int = 0
    method: str = "pgd"          # pgd | fgsm | clean
    epochs: int = 4
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    augment: bool = False        # random crop + flip (CIFAR)
    affine_degrees: float = 0.0  # random rotation before the attack (Tatro et al.: 15)
    attack_mode: str = "eval"    # eval | train: mode of the model while the attack runs
    train_subset: int = 10000    # 0: full training set
    test_subset: int = 1000      # 0: full test set
    attack: AttackConfig = field(default_factory=lambda: AttackConfig(eps=0.1, steps=5))
    eval_attack: AttackConfig = field(default_factory=lambda: AttackConfig(eps=0.1, steps=10, seed=0))
    data_root: str | None = None
    amp: bool = True             # bfloat16 autocast on CUDA (no-op on CPU); not in the cache key

    def validate(self) -> TrainConfig:
        models.MODELS.get(self.arch)
        data_mod.info(self.dataset)
        SCHEDULES.get(self.schedule)
        if self.attack_mode not in ATTACK_MODES:
            raise UserError(f"attack mode must be eval or train, got {self.attack_mode!r}")
        if not 0 <= float(self.affine_degrees) <= 180:
            raise UserError(f"affine degrees must lie in [0, 180], got {self.affine_degrees}")
        if self.method not in METHODS:
            raise UserError(f"unknown --train-attack {self.method!r} (known: {', '.join(METHODS)})")
        if self.epochs < 1 or self.batch_size < 1:
            raise UserError("epochs and batch size must be >= 1")
        if not (isinstance(self.width, (int, float)) and math.isfinite(self.width)
                and self.width > 0):
            raise UserError(f"width must be a finite number > 0, got {self.width!r}")
        check_seed(self.seed, "seed")
        self.lr = parse_fraction(self.lr, name="lr", allow_zero=False)
        self.attack.validate()
        self.eval_attack.validate()
        for a in (self.attack, self.eval_attack):
            check_eps_range(a.norm, a.eps)
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    def cache_key(self) -> dict:
        """The fields that determine the trained weights (not where data lives)."""
        d = self.to_dict()
        d.pop("data_root")
        d.pop("amp")  # how to compute, like the device: not what is computed
        # options added later stay out of the key at their defaults (old caches stay valid)
        for name, default in (("attack_mode", "eval"), ("affine_degrees", 0.0)):
            if d.get(name) == default:
                d.pop(name)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        d = dict(d)
        d["attack"] = AttackConfig(**d["attack"])
        d["eval_attack"] = AttackConfig(**d["eval_attack"])
        return cls(**d)


MAX_SEED = 2**32 - 1


def check_seed(seed, name: str = "--seeds") -> None:
    """Seeds are integers in [0, 2^32 - 1] (every RNG in use accepts them, plus epochs)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise UserError(f"{name} must be integers in [0, {MAX_SEED}], got {seed!r}")


def check_labels(y: torch.Tensor, num_classes: int, what: str) -> None:
    """Labels must lie in [0, num_classes): anything else would fail mid-training."""
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise UserError(f"{what} has labels in [{int(y.min())}, {int(y.max())}], outside "
                        f"[0, {num_classes - 1}] for its {num_classes} classes (wrong or "
                        "corrupt data files?)")


def train_model(cfg: TrainConfig, *, device: str | torch.device = "cpu", progress: bool = True,
                data: tuple | None = None, work_dir: str | Path | None = None,
                on_epoch_end=None):
    """Train one endpoint. Returns ``(model, metrics)``; the model is in eval mode.

    ``data`` may pass ``(x_train, y_train, x_test, y_test)`` to skip loading.
    ``work_dir``: per-epoch checkpoints, resumed exactly (module docstring).
    ``on_epoch_end(epoch, record)`` is called after each epoch's checkpoint (from 1).
    metrics: clean/robust test accuracy and loss, seconds per epoch, train history.
    """
    try:
        return _train_model(cfg, device, progress, data, work_dir, on_epoch_end)
    except _Restart:  # a damaged resume state was removed: from scratch, on fresh objects
        return _train_model(cfg, device, progress, data, work_dir, on_epoch_end)


def _train_model(cfg: TrainConfig, device, progress, data, work_dir, on_epoch_end):
    cfg.validate()
    device = resolve(str(device)) if not isinstance(device, torch.device) else device
    if data is None:
        x_tr, y_tr, x_te, y_te = data_mod.load_subsets(cfg.dataset, cfg.data_root,
                                                       cfg.train_subset, cfg.test_subset)
    else:
        x_tr, y_tr, x_te, y_te = data
    num_classes = data_mod.info(cfg.dataset).num_classes
    check_labels(y_tr, num_classes, f"{cfg.dataset} training data")
    check_labels(y_te, num_classes, f"{cfg.dataset} test data")
    torch.manual_seed(cfg.seed)
    model = models.create(cfg.arch, cfg.dataset, cfg.width).to(device)
    # not with convolutions on which oneDNN corrupts the heap in NHWC
    # (robustpath.models.fuse.nhwc_unsafe, e.g. resnet20's shortcuts at width < 0.5)
    # on CPU with the model in channels-last memory format (oneDNN's NHWC kernels are
    # faster there; benchmarks/RESULTS.md); converted back before it is returned
    channels_last = (runtime.current().channels_last_cpu and device.type == "cpu"
                     and not any(isinstance(m, nn.Conv2d) and nhwc_unsafe(m) for m in model.modules()))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    attack = build_attack(AttackConfig(**{**cfg.attack.to_dict(), "name": METHODS[cfg.method]}),
                          num_classes)
    loader = data_mod.Batches(x_tr, y_tr, cfg.batch_size, shuffle=True, seed=cfg.seed,
                              augment=cfg.augment, drop_last=len(x_tr) > cfg.batch_size,
                              device=device)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=True,
                          weight_decay=cfg.weight_decay)
    sched = SCHEDULES.get(cfg.schedule)(opt, cfg.epochs * len(loader), cfg.lr)
    target = _TrainModeTarget(model) if cfg.attack_mode == "train" else model
    rot_gen = torch.Generator().manual_seed(cfg.seed + 7919)
    history, epoch_times, start_epoch = [], [], 0
    run_key = config_hash(cfg.cache_key())
    gens = {"rot": rot_gen}
    if work_dir is not None:
        work_dir = Path(work_dir)
        start_epoch, history, epoch_times = _resume(work_dir, run_key, model, opt, sched, gens,
                                                    device)
    shown = progress_mod.enabled(progress)
    for epoch in range(start_epoch, cfg.epochs):
        start = time.perf_counter()
        loader.set_epoch(epoch)
        model.train()
        # running sums stay on the device: one host-device sync per epoch (and one per
        # half second while a bar is shown), not per batch
        tot_loss = torch.zeros((), dtype=torch.float64, device=device)
        tot_correct = torch.zeros((), dtype=torch.int64, device=device)
        n = 0
        # a bar per epoch that moves per batch; its running loss / accuracy are read
        # from the device at most every half second
        bar = progress_mod.bar(loader, desc=f"train {cfg.arch} seed {cfg.seed} epoch "
                               f"{epoch + 1}/{cfg.epochs}", unit="batch", progress=progress)
        due = progress_mod.throttle()
        for xb, yb in bar:
            if cfg.affine_degrees:
                xb = random_rotation(xb, float(cfg.affine_degrees), rot_gen)
            with training_autocast(device, cfg.amp):
                xa = attack(target, xb, yb)
                logits = fast_view(model)(xa)   # same function, fewer passes
                loss = F.cross_entropy(logits.float(), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot_loss += loss.detach().double() * len(yb)
            tot_correct += (logits.detach().argmax(1) == yb).sum()
            n += len(yb)
            if shown and due():
                bar.set_postfix(loss=f"{float(tot_loss) / n:.3f}", acc=f"{int(tot_correct) / n:.3f}",
                                refresh=False)
        bar.close()
        tot_loss, tot_correct = float(tot_loss), int(tot_correct)
        check_finite_loss(tot_loss, list(model.parameters()), stage="endpoint training",
                          who=f"seed {cfg.seed}", epoch=epoch + 1, setting=f"--lr (now {cfg.lr})")
        epoch_times.append(time.perf_counter() - start)
        history.append({"epoch": epoch + 1, "train_loss": tot_loss / max(n, 1),
                        "train_adv_acc": tot_correct / max(n, 1)})
        if work_dir is not None:
            _save_epoch(work_dir, epoch + 1, run_key, model, opt, sched, gens, history,
                        epoch_times)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, history[-1])
    model.eval()
    if channels_last:
        model = model.to(memory_format=torch.contiguous_format)
    clean = per_example(model, x_te, y_te, None, device=device)
    robust = per_example(model, x_te, y_te, build_attack(cfg.eval_attack, num_classes), device=device)
    metrics = {"clean_acc": clean.accuracy, "clean_loss": clean.mean_loss,
               "robust_acc": robust.accuracy, "robust_loss": robust.mean_loss,
               "seconds_per_epoch": sum(epoch_times) / len(epoch_times), "history": history,
               "device": str(device)}
    return model, metrics


def train_endpoint(cfg: TrainConfig, path: str | Path, *, device="cpu", progress=True, data=None,
                   on_epoch_end=None):
    """Train and save to ``path`` (.safetensors + .json). Returns ``(model, metrics)``.

    Resumes from ``<path>.epochs/`` (per-epoch checkpoints), removed once saved."""
    work = epochs_dir(path)
    model, metrics = train_model(cfg, device=device, progress=progress, data=data, work_dir=work,
                                 on_epoch_end=on_epoch_end)
    save_model(path, model, {"config": cfg.to_dict(), "metrics": metrics})
    shutil.rmtree(work, ignore_errors=True)
    return model, metrics


# the command line (``python -m robustpath.train``) lives in robustpath.train.cli
