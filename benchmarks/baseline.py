"""The PGD loop as it was before the optimisations (robustpath commit 4cb2237), kept
here so every run can measure "before" against "after" on the same machine.

Each knob switches one candidate optimisation on, so each is measured on its own:

* ``freeze``: parameters' ``requires_grad`` off during the attack (no autograd
  record for weight gradients);
* ``final_forward=False``: no evaluation pass after the last step (only needed to
  pick the best of several restarts);
* ``channels_last="input"``: inputs in channels-last memory format (a no-op for
  1-channel images, whose two layouts coincide);
* ``channels_last="weights"``: the model's 4-D weights held in channels-last format
  during the attack, as ``robustpath.attacks.base.channels_last_weights`` does.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from robustpath.attacks.base import channels_last_weights, eval_mode


@contextlib.contextmanager
def frozen_params(model: nn.Module):
    """Turn ``requires_grad`` off for ``model``'s parameters, restoring it afterwards."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p in params:
            p.requires_grad_(True)


def pgd_before(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, steps: int,
               step_size: float, freeze: bool = False, final_forward: bool = True,
               channels_last: str | None = None, seed: int = 0) -> torch.Tensor:
    """L-inf PGD with uniform random start, one restart (the original code path)."""
    g = torch.Generator(device=x.device).manual_seed(seed)
    x = x.detach()
    forward = model
    if channels_last == "input":
        x = x.contiguous(memory_format=torch.channels_last)
    weights = (channels_last_weights(model, x) if channels_last == "weights"
               else contextlib.nullcontext())
    frozen = frozen_params(model) if freeze else contextlib.nullcontext()
    with eval_mode(model), weights, frozen, torch.enable_grad():
        delta = (torch.rand(x.shape, generator=g, device=x.device, dtype=x.dtype) * 2 - 1) * eps
        delta = (x + delta).clamp(0, 1) - x
        for _ in range(steps):
            delta.requires_grad_(True)
            loss = F.cross_entropy(forward(x + delta), y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, [delta])
            with torch.no_grad():
                delta = (delta.detach() + step_size * grad.sign()).clamp(-eps, eps)
                delta = (x + delta).clamp(0, 1) - x
        x_adv = (x + delta).detach()
        if final_forward:  # the original computed losses and correctness for restarts
            with torch.no_grad():
                logits = forward(x_adv)
                F.cross_entropy(logits, y, reduction="none")
                logits.argmax(1)
    return x_adv
