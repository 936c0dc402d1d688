"""Fitting a curve between two networks, with PGD in the loop (Tatro et al. 2020).

Per batch (Garipov et al. 2018; Tatro et al. 2020):

1. draw t ~ U(0, 1) from a seeded generator;
2. make the adversarial batch against θ(t) (``cfg.attack``; ``None``: clean training)
   from the batch as :class:`robustpath.data.Batches` gives it (``cfg.augment``: crop +
   flip) and, with ``cfg.affine_degrees`` > 0, rotated by U(-d, d) degrees per image
   (:func:`robustpath.train.loop.random_rotation`, the endpoints' rotation; Tatro et al.'s
   curve script trains on the same ``RandomAffine(degrees=15)`` transform as their
   endpoints: ``training/train_curve_adversarial.py:33,105-113``, ``utils/data.py:30``);
3. take an SGD step on the control points for cross-entropy at θ(t) on that batch
   plus the L2 penalty ``weight_decay / 2 * ||θ(t)||²`` (Garipov's regulariser: the
   decay acts on the point of the curve, not on the control points themselves).

BatchNorm during training. The running statistics at an interior t are a linear
interpolation of the endpoints' and mean nothing, and recomputing them for every
batch would cost a pass over data per step. So both the attack and the training
forward pass normalise with the *current batch's* statistics (as the endpoints'
own adversarial training does in train mode): they run on a copy of the
architecture whose BatchNorm layers keep no running statistics
(:func:`robustpath.paths.bn.batch_stats_copy`), which also keeps working when the attack
switches its target to eval mode (:func:`robustpath.attacks.base.eval_mode`), and writes
nothing anywhere. Evaluating a point later recomputes its statistics
(:func:`robustpath.paths.bn.recompute_bn`).

Resumable: at the end of epoch e, ``<out_dir>/epoch-000e.safetensors`` + ``.json``
hold the control points, the SGD momentum buffer and the history; the JSON is
written last, so the newest epoch with a JSON is complete even after a kill in the
middle of writing, and older epoch files are removed once it is. Data order, the
t draws, the rotations and the attack's random starts are seeded per epoch from ``cfg.seed``, so
a run killed and restarted in the same folder continues at the next epoch and
ends bit-for-bit where an uninterrupted run ends (same device and threads).
``<out_dir>/final.*`` (a :func:`robustpath.paths.curves.save_curve` file plus metrics)
marks completion; calling again then only loads it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from robustpath import data as data_mod
from robustpath import progress as progress_mod
from robustpath.attacks.base import AttackConfig, build_attack
from robustpath.device import training_autocast
from robustpath.errors import UserError, check_finite_loss
from robustpath.io.store import checkpoint_exists, config_hash, load_checkpoint, save_checkpoint
from robustpath.numbers import parse_fraction
from robustpath.paths.curves import Curve, save_curve
from robustpath.registry import Registry
from robustpath.train.loop import random_rotation

SCHEDULES: Registry[Callable[[float], float]] = Registry("curve lr schedule")


@SCHEDULES.register("cosine")
def _cosine(progress: float) -> float:
    """Cosine annealing from lr to 0 over the run, stepped per batch."""
    return 0.5 * (1.0 + math.cos(math.pi * progress))


@SCHEDULES.register("garipov")
def _garipov(progress: float) -> float:
    """Garipov et al. 2018: lr for the first half, linear decay to lr/100 until 90 %,
    then lr/100."""
    if progress <= 0.5:
        return 1.0
    if progress <= 0.9:
        return 1.0 - (progress - 0.5) / 0.4 * 0.99
    return 0.01


@SCHEDULES.register("constant")
def _constant(progress: float) -> float:
    return 1.0


@dataclass
class CurveTrainConfig:
    """How to fit a curve. Defaults: Tatro et al.'s attack (PGD L-inf, eps 8/255,
    step 2/255, 5 steps, random start), SGD with Nesterov momentum 0.9, cosine
    schedule. ``attack=None`` trains on clean inputs."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.015
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4       # L2 on θ(t)
    schedule: str = "cosine"         # cosine | garipov | constant
    seed: int = 0
    augment: bool = False            # random crop + flip (CIFAR)
    affine_degrees: float = 0.0      # random rotation before the attack (Tatro et al.: 15)
    attack: AttackConfig | None = field(default_factory=AttackConfig)
    checkpoint_every_epoch: bool = True
    amp: bool = True                 # bfloat16 autocast on CUDA (no-op on CPU); not in the key

    def validate(self) -> CurveTrainConfig:
        if int(self.epochs) < 1 or int(self.batch_size) < 1:
            raise UserError("curve training needs epochs >= 1 and batch size >= 1")
        self.epochs, self.batch_size = int(self.epochs), int(self.batch_size)
        self.lr = parse_fraction(self.lr, name="curve lr", allow_zero=False)
        self.weight_decay = parse_fraction(self.weight_decay, name="curve weight decay")
        if not 0.0 <= float(self.momentum) < 1.0:
            raise UserError(f"momentum must lie in [0, 1), got {self.momentum}")
        SCHEDULES.get(self.schedule)
        if not 0 <= float(self.affine_degrees) <= 180:
            raise UserError(f"affine degrees must lie in [0, 180], got {self.affine_degrees}")
        if self.attack is not None:
            self.attack.validate()
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    def cache_key(self) -> dict:
        """Fields that determine the fitted curve."""
        d = self.to_dict()
        d.pop("checkpoint_every_epoch")
        d.pop("amp")  # how to compute, like the device: not what is computed
        if d.get("affine_degrees") == 0.0:  # added later: off, old caches keep their keys
            d.pop("affine_degrees")
        return d

    @classmethod
    def from_dict(cls, d: dict) -> CurveTrainConfig:
        d = dict(d)
        if d.get("attack") is not None:
            d["attack"] = AttackConfig(**d["attack"])
        return cls(**d)




def _seed(*parts: int) -> int:
    """A 63-bit seed mixing ``parts`` (so epoch e of seed s never collides with s+1)."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (int(p) + 0x632BE59BD9B4E019 + (h << 6) + (h >> 2))) & ((1 << 64) - 1)
    return h & ((1 << 63) - 1)


def epoch_checkpoints(out_dir: str | Path) -> list[Path]:
    """Complete per-epoch checkpoints in ``out_dir`` (without suffix), oldest first."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    paths = sorted(p.with_suffix("") for p in out_dir.glob("epoch-*.json"))
    return [p for p in paths if checkpoint_exists(p)]


def latest_epoch_checkpoint(out_dir: str | Path) -> Path | None:
    done = epoch_checkpoints(out_dir)
    return done[-1] if done else None


def _remove_epoch_files(out_dir: Path, keep: str | None = None) -> None:
    """Delete epoch checkpoint files (complete or half-written) except ``keep``."""
    for f in out_dir.glob("epoch-*"):
        if f.name.split(".")[0] != keep:
            f.unlink(missing_ok=True)


def _check_run(meta: dict, key: str, path: Path) -> None:
    if meta.get("run_key") != key:
        raise UserError(f"{path} holds a curve fitted with another config or other endpoints "
                        f"(run {meta.get('run_key')}, now {key}); use a new folder")


def train_curve(curve: Curve, x_train: torch.Tensor, y_train: torch.Tensor, cfg: CurveTrainConfig,
                out_dir: str | Path | None, device: str | torch.device = "cpu", progress: bool = True,
                on_epoch_end: Callable[[int, dict], None] | None = None,
                desc: str | None = None) -> dict[str, Any]:
    """Fit ``curve``'s control points in place; checkpoints go to ``out_dir``.

    Args:
        curve: from :func:`robustpath.paths.curves.build_curve` (any family; a ``line``
            has nothing to train and is only recorded as final).
        x_train, y_train: ``[N, C, H, W]`` pixels in [0, 1], ``[N]`` int64 labels.
        cfg: :class:`CurveTrainConfig`.
        out_dir: run folder; the newest epoch checkpoint is resumed and an
            existing ``final`` one is loaded into ``curve`` and its metrics returned
            without training (both must come from the same config and endpoints).
            ``None``: fit in memory only (no checkpoints, no resuming, nothing written).
        device: where to train; ``curve`` is moved there.
        progress: a bar per epoch (:mod:`robustpath.progress`), moving per batch, with
            loss / accuracy on the training batches.
        on_epoch_end: called as ``on_epoch_end(epoch, record)`` after each epoch's
            checkpoint is written (``epoch`` counts from 1).
        desc: what the bars and epoch lines call the curve (default its kind), e.g.
            ``"curve none/bezier s0-1"``.

    Returns metrics: ``history`` (per epoch: loss, accuracy on the (adversarial)
    training batches, seconds), ``train_loss``, ``train_acc``, ``seconds_per_epoch``
    (epochs run in this call), ``epochs``, ``device``.
    """
    cfg.validate()
    if not isinstance(curve, Curve):
        raise UserError(f"train_curve needs a Curve (robustpath.paths.curves.build_curve), "
                        f"got {type(curve).__name__}")
    if len(x_train) != len(y_train) or len(y_train) == 0:
        raise UserError(f"x_train and y_train need the same, non-zero length, "
                        f"got {len(x_train)} and {len(y_train)}")
    device = torch.device(device)
    in_memory = out_dir is None
    out_dir = Path(out_dir) if out_dir is not None else None
    run_key = config_hash({"config": cfg.cache_key(), "curve": curve.describe(),
                           "examples": len(x_train)})
    final = out_dir / "final" if out_dir is not None else None
    curve.to(device)
    if final is not None and checkpoint_exists(final):
        tensors, meta = load_checkpoint(final, device)
        _check_run(meta, run_key, final)
        with torch.no_grad():
            curve.controls.copy_(tensors["controls"])
        return meta["metrics"]

    opt = torch.optim.SGD([curve.controls], lr=cfg.lr, momentum=cfg.momentum,
                          nesterov=cfg.nesterov and cfg.momentum > 0, weight_decay=0.0)
    start, history = 0, []
    last = latest_epoch_checkpoint(out_dir) if out_dir is not None else None
    if last is not None:
        tensors, meta = load_checkpoint(last, device)
        _check_run(meta, run_key, last)
        with torch.no_grad():
            curve.controls.copy_(tensors["controls"])
        if "momentum" in tensors:
            opt.state[curve.controls]["momentum_buffer"] = tensors["momentum"].clone()
        start, history = int(meta["epoch"]), list(meta["history"])

    loader = data_mod.Batches(x_train, y_train, cfg.batch_size, shuffle=True, seed=cfg.seed,
                              augment=cfg.augment, drop_last=len(x_train) > cfg.batch_size,
                              device=device)
    attack = None
    if cfg.attack is not None:
        dataset = curve.meta.get("dataset")
        classes = data_mod.info(dataset).num_classes if dataset else int(y_train.max()) + 1
        # Random starts come from the per-epoch seeded global RNG (see below); a fixed
        # attack seed would reuse one start for every batch.
        attack = build_attack(AttackConfig(**{**cfg.attack.to_dict(), "seed": None}), classes)
    schedule = SCHEDULES.get(cfg.schedule)
    total = cfg.epochs * len(loader)
    epochs_to_run = range(start, cfg.epochs) if curve.bends > 0 else range(0)
    curve.train()
    times = []
    label = desc or curve.kind
    shown = progress_mod.enabled(progress)
    for epoch in epochs_to_run:
        begin = time.perf_counter()
        loader.set_epoch(epoch)
        t_gen = torch.Generator().manual_seed(_seed(cfg.seed, epoch, 1))
        # its own generator: with rotation off, t draws and attack starts are unchanged
        rot_gen = torch.Generator().manual_seed(_seed(cfg.seed, epoch, 3))
        # running sums stay on the device; the bar reads them at most every half second,
        # so a GPU is not made to wait for the host at every step
        tot_loss = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        n = 0
        bar = progress_mod.bar(loader, desc=f"{label} epoch {epoch + 1}/{cfg.epochs}",
                               unit="batch", progress=progress)
        due = progress_mod.throttle()
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(_seed(cfg.seed, epoch, 2))
            for i, (xb, yb) in enumerate(bar):
                for group in opt.param_groups:
                    group["lr"] = cfg.lr * schedule((epoch * len(loader) + i) / total)
                t = float(torch.rand((), generator=t_gen))
                theta = curve.flat_at(t)
                params = curve.unflatten(theta)
                point = curve.point(t, params)
                if cfg.affine_degrees:
                    xb = random_rotation(xb, float(cfg.affine_degrees), rot_gen)
                with training_autocast(device, cfg.amp):
                    xa = attack(point, xb, yb) if attack is not None else xb
                    logits = curve.forward_batch_stats(xa, t, params, point.point_buffers)
                    loss = F.cross_entropy(logits.float(), yb)
                objective = loss
                if cfg.weight_decay:
                    objective = loss + 0.5 * cfg.weight_decay * theta.pow(2).sum()
                opt.zero_grad(set_to_none=True)
                if objective.requires_grad:   # t == 0 exactly leaves no control point in θ(t)
                    objective.backward()
                    opt.step()
                tot_loss += loss.detach().double() * len(yb)
                correct += (logits.detach().argmax(1) == yb).sum()
                n += len(yb)
                if shown and due():
                    bar.set_postfix(loss=f"{float(tot_loss) / n:.3f}", acc=f"{int(correct) / n:.3f}",
                                    refresh=False)
        tot_loss, correct = float(tot_loss), int(correct)
        bar.close()
        check_finite_loss(tot_loss, [curve.controls], stage="curve training",
                          who=f"{curve.kind} path, seed {cfg.seed}", epoch=epoch + 1,
                          setting=f"--curve-lr (now {cfg.lr})")
        times.append(time.perf_counter() - begin)
        record = {"epoch": epoch + 1, "train_loss": tot_loss / max(n, 1),
                  "train_acc": correct / max(n, 1), "seconds": times[-1]}
        history.append(record)
        if shown:
            progress_mod.write(f"{label} epoch {epoch + 1}/{cfg.epochs}: "
                               f"loss {record['train_loss']:.4f} "
                               f"acc {record['train_acc']:.4f} ({record['seconds']:.1f} s)")
        if cfg.checkpoint_every_epoch and not in_memory:
            state = {"controls": curve.controls.detach()}
            buf = opt.state.get(curve.controls, {}).get("momentum_buffer")
            if buf is not None:
                state["momentum"] = buf
            path = out_dir / f"epoch-{epoch + 1:04d}"
            save_checkpoint(path, state, {"run_key": run_key, "epoch": epoch + 1,
                                          "history": history, "config": cfg.to_dict(),
                                          "curve": curve.describe()})
            _remove_epoch_files(out_dir, keep=path.name)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, record)
    curve.eval()

    metrics = {"epochs": len(history), "history": history,
               "train_loss": history[-1]["train_loss"] if history else None,
               "train_acc": history[-1]["train_acc"] if history else None,
               "seconds_per_epoch": sum(times) / len(times) if times else None,
               "device": str(device)}
    if final is not None:
        save_curve(final, curve, {"run_key": run_key, "config": cfg.to_dict(), "metrics": metrics})
        _remove_epoch_files(out_dir)
    return metrics
