"""The models and data the benchmarks attack: briefly adversarially trained, so that
robust accuracy (and with it what early stopping can skip) is realistic.

* ``cnn-small`` on real Fashion-MNIST, PGD-trained (eps 0.1, 3 steps).
* ``resnet20`` on CIFAR-10 shapes (3x32x32): real CIFAR-10 when it is under the data
  root, else Fashion-MNIST padded to 32x32 and repeated over 3 channels (real image
  content, CIFAR's tensor shapes and FLOPs), FGSM-trained (eps 8/255).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from robustpath import data
from robustpath.attacks.base import AttackConfig
from robustpath.errors import UserError
from robustpath.train.loop import TrainConfig, train_model


@dataclass
class Subject:
    name: str           # e.g. "cnn-small / Fashion-MNIST"
    model: nn.Module    # eval mode
    x: torch.Tensor     # attack set, pixels in [0, 1]
    y: torch.Tensor
    eps: float
    data_note: str
    train_note: str
    clean_acc: float


def _cifar_shaped(x: torch.Tensor) -> torch.Tensor:
    return F.pad(x, (2, 2, 2, 2)).repeat(1, 3, 1, 1).contiguous()


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device) -> float:
    with torch.no_grad():
        hits = sum(int((model(x[i:i + 500].to(device)).argmax(1) == y[i:i + 500].to(device)).sum())
                   for i in range(0, len(x), 500))
    return hits / len(x)


def cnn_small(n_train: int, n_attack: int, device, root=None) -> Subject:
    x_tr, y_tr = data.load("fashion-mnist", train=True, subset=n_train, seed=11, root=root,
                           download=False)
    x_te, y_te = data.load("fashion-mnist", train=False, subset=n_attack, seed=12, root=root,
                           download=False)
    cfg = TrainConfig(arch="cnn-small", dataset="fashion-mnist", epochs=2, method="pgd",
                      train_subset=n_train, test_subset=n_attack,
                      attack=AttackConfig(eps=0.1, steps=3),
                      eval_attack=AttackConfig(eps=0.1, steps=1, seed=0))
    model, _ = train_model(cfg, device=device, progress=False, data=(x_tr, y_tr, x_te[:16], y_te[:16]))
    model.eval()
    return Subject("cnn-small / Fashion-MNIST 1x28x28", model, x_te, y_te, 0.1,
                   f"real Fashion-MNIST test images ({n_attack})",
                   f"PGD training, eps 0.1, 3 steps, 2 epochs on {n_train} images",
                   _accuracy(model, x_te, y_te, device))


def resnet20(n_train: int, n_attack: int, device, root=None) -> Subject:
    try:
        x_tr, y_tr = data.load("cifar10", train=True, subset=n_train, seed=11, root=root,
                               download=False)
        x_te, y_te = data.load("cifar10", train=False, subset=n_attack, seed=12, root=root,
                               download=False)
        note = f"real CIFAR-10 test images ({n_attack})"
    except UserError:
        x_tr, y_tr = data.load("fashion-mnist", train=True, subset=n_train, seed=11, root=root,
                               download=False)
        x_te, y_te = data.load("fashion-mnist", train=False, subset=n_attack, seed=12, root=root,
                               download=False)
        x_tr, x_te = _cifar_shaped(x_tr), _cifar_shaped(x_te)
        note = (f"CIFAR-10 not found: Fashion-MNIST padded to 3x32x32 as a CIFAR-shaped "
                f"stand-in ({n_attack})")
    eps = 8 / 255
    cfg = TrainConfig(arch="resnet20", dataset="cifar10", epochs=3, batch_size=64, method="fgsm", lr=0.1,
                      train_subset=n_train, test_subset=n_attack,
                      attack=AttackConfig(eps=eps), eval_attack=AttackConfig(eps=eps, steps=1, seed=0))
    model, _ = train_model(cfg, device=device, progress=False, data=(x_tr, y_tr, x_te[:16], y_te[:16]))
    model.eval()
    return Subject("resnet20 / CIFAR shapes 3x32x32", model, x_te, y_te, eps, note,
                   f"FGSM-RS training, eps 8/255, 3 epochs on {n_train} images",
                   _accuracy(model, x_te, y_te, device))
