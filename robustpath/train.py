"""Adversarial training of endpoint networks.

Methods (registry ``TRAINERS`` over the attack used to make training inputs):

* ``pgd``   - Madry et al. 2018: every batch replaced by PGD(eps, steps, step size).
* ``fgsm``  - FGSM with random start, step 1.25 eps (Wong et al. 2020).
* ``clean`` - standard training.

SGD with Nesterov momentum 0.9, weight decay 5e-4, a one-cycle (default) or cosine
learning-rate schedule stepped per batch. Seeded: the same config gives the same
model on the same device. Endpoints are saved as safetensors with a JSON sidecar
(resolved config, versions, git revision, final clean / robust test accuracy).

CLI: ``python -m robustpath.train --arch cnn-small --seed 0 --out runs/ep0``.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import data as data_mod
from . import models
from .attacks import AttackConfig, build_attack
from .cli import ArgumentParser
from .device import resolve, training_autocast
from .errors import UserError, cli_main
from .fuse import fast_view, nhwc_unsafe
from .metrics import per_example
from .numbers import parse_fraction
from .registry import Registry
from .store import save_model

SCHEDULES: Registry = Registry("schedule")

#: Train on CPU with the model in channels-last memory format (oneDNN's NHWC kernels
#: are faster there; measured in benchmarks/RESULTS.md). The returned model is
#: converted back to the default layout, so callers never see strided weights.
CHANNELS_LAST_CPU = True


@SCHEDULES.register("onecycle")
def _onecycle(opt, total_steps: int, lr: float):
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(1, total_steps),
                                               pct_start=0.3, anneal_strategy="linear")


@SCHEDULES.register("cosine")
def _cosine(opt, total_steps: int, lr: float):
    return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total_steps))


METHODS = {"pgd": "pgd", "fgsm": "fgsm", "clean": "none"}


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
        if self.method not in METHODS:
            raise UserError(f"unknown training method {self.method!r} (known: {', '.join(METHODS)})")
        if self.epochs < 1 or self.batch_size < 1:
            raise UserError("epochs and batch size must be >= 1")
        self.lr = parse_fraction(self.lr, name="lr", allow_zero=False)
        self.attack.validate()
        self.eval_attack.validate()
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    def cache_key(self) -> dict:
        """The fields that determine the trained weights (not where data lives)."""
        d = self.to_dict()
        d.pop("data_root")
        d.pop("amp")  # how to compute, like the device: not what is computed
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        d = dict(d)
        d["attack"] = AttackConfig(**d["attack"])
        d["eval_attack"] = AttackConfig(**d["eval_attack"])
        return cls(**d)


def train_model(cfg: TrainConfig, *, device: str | torch.device = "cpu", progress: bool = True,
                data: tuple | None = None):
    """Train one endpoint. Returns ``(model, metrics)``; the model is in eval mode.

    ``data`` may pass ``(x_train, y_train, x_test, y_test)`` to skip loading.
    metrics: clean/robust test accuracy and loss, seconds per epoch, train history.
    """
    cfg.validate()
    device = resolve(str(device)) if not isinstance(device, torch.device) else device
    if data is None:
        x_tr, y_tr = data_mod.load(cfg.dataset, train=True, root=cfg.data_root,
                                   subset=cfg.train_subset, seed=1234)
        x_te, y_te = data_mod.load(cfg.dataset, train=False, root=cfg.data_root,
                                   subset=cfg.test_subset, seed=4321)
    else:
        x_tr, y_tr, x_te, y_te = data
    num_classes = data_mod.info(cfg.dataset).num_classes
    torch.manual_seed(cfg.seed)
    model = models.create(cfg.arch, cfg.dataset, cfg.width).to(device)
    # not with convolutions on which oneDNN corrupts the heap in NHWC
    # (robustpath.fuse.nhwc_unsafe, e.g. resnet20's shortcuts at width < 0.5)
    channels_last = (CHANNELS_LAST_CPU and device.type == "cpu"
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
    history, epoch_times = [], []
    bar = tqdm(range(cfg.epochs), desc=f"train {cfg.arch} seed {cfg.seed}", disable=not progress,
               unit="epoch")
    for epoch in bar:
        start = time.perf_counter()
        loader.set_epoch(epoch)
        model.train()
        # running sums stay on the device: one host-device sync per epoch, not per batch
        tot_loss = torch.zeros((), dtype=torch.float64, device=device)
        tot_correct = torch.zeros((), dtype=torch.int64, device=device)
        n = 0
        for xb, yb in loader:
            with training_autocast(device, cfg.amp):
                xa = attack(model, xb, yb)
                logits = fast_view(model)(xa)   # same function, fewer passes
                loss = F.cross_entropy(logits.float(), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot_loss += loss.detach().double() * len(yb)
            tot_correct += (logits.detach().argmax(1) == yb).sum()
            n += len(yb)
        tot_loss, tot_correct = float(tot_loss), int(tot_correct)
        epoch_times.append(time.perf_counter() - start)
        history.append({"epoch": epoch + 1, "train_loss": tot_loss / max(n, 1),
                        "train_adv_acc": tot_correct / max(n, 1)})
        bar.set_postfix(loss=f"{tot_loss / max(n, 1):.3f}", acc=f"{tot_correct / max(n, 1):.3f}")
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


def train_endpoint(cfg: TrainConfig, path: str | Path, *, device="cpu", progress=True, data=None):
    """Train and save to ``path`` (.safetensors + .json). Returns ``(model, metrics)``."""
    model, metrics = train_model(cfg, device=device, progress=progress, data=data)
    save_model(path, model, {"config": cfg.to_dict(), "metrics": metrics})
    return model, metrics


def _parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = ArgumentParser(prog="python -m robustpath.train",
                                description="Adversarially train one endpoint network.")
    p.add_argument("--dataset", default=d.dataset, help="dataset name (default %(default)s)")
    p.add_argument("--data-root", default=None, help="folder with dataset files (default ./data)")
    p.add_argument("--arch", default=d.arch, help=f"architecture: {', '.join(models.available())}")
    p.add_argument("--width", type=float, default=d.width, help="width multiplier (default 1)")
    p.add_argument("--seed", type=int, default=d.seed, help="random seed (default 0)")
    p.add_argument("--method", default=d.method, help="pgd | fgsm | clean (default pgd)")
    p.add_argument("--epochs", type=int, default=d.epochs, help="epochs (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="batch size")
    p.add_argument("--lr", default=d.lr, help="peak learning rate (default %(default)s)")
    p.add_argument("--schedule", default=d.schedule, help="onecycle | cosine")
    p.add_argument("--eps", default="0.1", help="attack radius in pixels, e.g. 8/255 (default 0.1)")
    p.add_argument("--norm", default="linf", help="linf | l2")
    p.add_argument("--steps", type=int, default=5, help="PGD steps in training (default 5)")
    p.add_argument("--step-size", default=None, help="PGD step size (default eps/4)")
    p.add_argument("--train-subset", type=int, default=d.train_subset, help="0 = all")
    p.add_argument("--test-subset", type=int, default=d.test_subset, help="0 = all")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    p.add_argument("--out", required=True, help="checkpoint path without suffix")
    return p


@cli_main
def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    eps = parse_fraction(args.eps, name="--eps")
    atk = AttackConfig(norm=args.norm, eps=eps, steps=args.steps, step_size=args.step_size)
    cfg = TrainConfig(dataset=args.dataset, arch=args.arch, width=args.width, seed=args.seed,
                      method=args.method, epochs=args.epochs, batch_size=args.batch_size,
                      lr=args.lr, schedule=args.schedule, train_subset=args.train_subset,
                      test_subset=args.test_subset, attack=atk,
                      eval_attack=AttackConfig(norm=args.norm, eps=eps, steps=10, seed=0),
                      data_root=args.data_root).validate()
    _, m = train_endpoint(cfg, args.out, device=resolve(args.device))
    print(f"clean acc {m['clean_acc']:.4f}  robust acc {m['robust_acc']:.4f}  "
          f"({m['seconds_per_epoch']:.1f} s/epoch) -> {args.out}.safetensors")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
