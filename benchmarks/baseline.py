"""The PGD loop as it was before the optimisations (robustpath commit 4cb2237), kept
here so every run can measure "before" against "after" on the same machine.

Each knob switches one optimisation on, so each can be measured on its own:
``freeze`` turns the parameters' ``requires_grad`` off during the attack and
``final_forward=False`` drops the extra evaluation pass after the last step (it is
only needed to pick the best of several restarts).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from robustpath.attacks import eval_mode, frozen_params


def pgd_before(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, steps: int,
               step_size: float, freeze: bool = False, final_forward: bool = True,
               seed: int = 0) -> torch.Tensor:
    """L-inf PGD with uniform random start, one restart (the original code path)."""
    g = torch.Generator(device=x.device).manual_seed(seed)
    x = x.detach()
    frozen = frozen_params(model) if freeze else contextlib.nullcontext()
    with eval_mode(model), frozen, torch.enable_grad():
        delta = (torch.rand(x.shape, generator=g, device=x.device, dtype=x.dtype) * 2 - 1) * eps
        delta = (x + delta).clamp(0, 1) - x
        for _ in range(steps):
            delta.requires_grad_(True)
            loss = F.cross_entropy(model(x + delta), y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, [delta])
            with torch.no_grad():
                delta = (delta.detach() + step_size * grad.sign()).clamp(-eps, eps)
                delta = (x + delta).clamp(0, 1) - x
        x_adv = (x + delta).detach()
        if final_forward:  # the original computed losses and correctness for restarts
            with torch.no_grad():
                logits = model(x_adv)
                F.cross_entropy(logits, y, reduction="none")
                logits.argmax(1)
    return x_adv
