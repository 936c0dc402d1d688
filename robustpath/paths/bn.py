"""BatchNorm at a point of a path: recomputing running statistics, batch-statistics copies.

Interpolating two networks' weights makes their BatchNorm running statistics
meaningless: the activations at θ(t) have other means and variances than at either
endpoint (Garipov et al. 2018, Tatro et al. 2020, Jordan et al. 2022 "REPAIR").
Every evaluation at an interior ``t`` therefore re-estimates the statistics first.

* :func:`recompute_bn` resets every BatchNorm layer and re-estimates its running
  mean / variance as a cumulative average (``momentum=None``) over training
  batches, from clean or adversarial inputs.
* :func:`batch_stats_copy` makes a structural copy whose BatchNorm layers keep no
  running statistics and hence always normalise with the statistics of the current
  batch, in train *and* eval mode. Curve training and its attacks run on it.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn

from robustpath.attacks.base import Attack
from robustpath.errors import UserError
from robustpath.models.fuse import fast_view

BN_TYPES = (nn.modules.batchnorm._BatchNorm,)
INPUTS = ("clean", "adv")


def bn_modules(model: nn.Module) -> list[nn.Module]:
    """The BatchNorm layers of ``model`` that track running statistics."""
    return [m for m in model.modules() if isinstance(m, BN_TYPES) and m.track_running_stats]


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, BN_TYPES) for m in model.modules())


def batch_stats_copy(model: nn.Module) -> nn.Module:
    """Deep copy of ``model`` whose BatchNorm layers always use batch statistics.

    Each BatchNorm gets ``track_running_stats=False`` and no running buffers, which
    makes PyTorch normalise with the current batch's mean / (biased) variance
    whatever the module's train/eval flag is. An attack that switches the model to
    eval mode (``attacks.eval_mode``) therefore cannot bring the meaningless
    interpolated running statistics back, and nothing is ever written to running
    buffers. Models without BatchNorm are copied unchanged.
    """
    out = copy.deepcopy(model)
    for m in out.modules():
        if isinstance(m, BN_TYPES):
            m.track_running_stats = False
            m.running_mean = None
            m.running_var = None
            m.num_batches_tracked = None
    return out


def _device_of(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _estimate(model: nn.Module, layers: list[nn.Module], loader: Iterable, batches: int | None,
              attack: Attack | None = None, target: nn.Module | None = None) -> int:
    """Reset ``layers`` and fill them with a cumulative average over the batches;
    with ``attack``, each batch is first replaced by ``attack(target, x, y)``."""
    device = _device_of(model)
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
    seen = 0
    for i, batch in enumerate(loader):
        if batches is not None and i >= batches:
            break
        x, y = batch[0].to(device), batch[1].to(device)
        if attack is not None:
            x = attack(target, x, y)
        with torch.no_grad():
            fast_view(model)(x)
        seen += 1
    return seen


def recompute_bn(model: nn.Module, loader: Iterable, batches: int | None = None,
                 inputs: str = "clean", attack: Attack | None = None) -> nn.Module:
    """Re-estimate every BatchNorm layer's running statistics of ``model`` in place.

    Args:
        model: any ``nn.Module``; models without BatchNorm return at once, untouched,
            without a single forward pass.
        loader: an iterable of ``(x, y)`` batches, e.g. ``data.Batches`` over the
            *training* set (pixels in [0, 1], ``[B, C, H, W]``); moved to the
            model's device.
        batches: how many batches to use (``None``: the whole loader). The running
            statistics become the cumulative average over them (``momentum=None``),
            as in ``torch.optim.swa_utils.update_bn`` and Garipov et al. 2018.
        inputs: ``"clean"``: statistics of clean training inputs. ``"adv"``:
            statistics of adversarial inputs, as in Tatro et al.'s robust evaluation
            of a path: a clean pass first gives usable statistics, then ``attack``
            (required) is run against a frozen copy of the model in eval mode with
            those statistics, and the statistics are re-estimated from scratch on
            the adversarial batches (two passes over ``batches``). The eval-mode
            attack mirrors how the path is attacked at evaluation time.
        attack: ``attack(model, x, y) -> x_adv``, needed for ``inputs="adv"``.

    Only BatchNorm layers are put in train mode during the passes (dropout and
    similar layers stay in eval mode); afterwards every module's train/eval flag and
    every BatchNorm's ``momentum`` are restored. Returns ``model``.
    """
    if inputs not in INPUTS:
        raise UserError(f"unknown BatchNorm inputs {inputs!r} (known: {', '.join(INPUTS)})")
    if inputs == "adv" and attack is None:
        raise UserError("recompute_bn(inputs='adv') needs an attack")
    if batches is not None and batches < 1:
        raise UserError(f"BatchNorm recomputation needs batches >= 1, got {batches}")
    layers = bn_modules(model)
    if not layers:
        return model
    modes = [(m, m.training) for m in model.modules()]
    momenta = [(m, m.momentum) for m in layers]
    try:
        model.eval()
        for m in layers:
            m.train()
        seen = _estimate(model, layers, loader, batches)
        if seen == 0:
            raise UserError("BatchNorm recomputation got no batches from the loader")
        if inputs == "adv":
            # A frozen copy with the clean statistics is the attack's target, so every
            # adversarial batch is made against the same usable network, not against
            # statistics that are half way through being re-estimated.
            target = copy.deepcopy(model).eval()
            _estimate(model, layers, loader, batches, attack, target)
    finally:
        for m, mom in momenta:
            m.momentum = mom
        for m, training in modes:
            m.training = training
    return model
