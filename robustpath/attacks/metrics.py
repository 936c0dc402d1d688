"""Clean and robust accuracy / loss of one model on a fixed set of examples."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from robustpath.attacks.base import Attack, eval_mode
from robustpath.models.fuse import fast_view


@dataclass
class ExampleResults:
    """Per-example outcomes, shape ``[N]``: correctness (bool) and CE loss (float)."""

    correct: torch.Tensor
    loss: torch.Tensor

    @property
    def accuracy(self) -> float:
        return float(self.correct.float().mean()) if len(self.correct) else float("nan")

    @property
    def mean_loss(self) -> float:
        return float(self.loss.mean()) if len(self.loss) else float("nan")


def per_example(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: Attack | None = None,
                batch_size: int = 500, device: str | torch.device = "cpu") -> ExampleResults:
    """Evaluate ``model`` (eval mode) on ``x`` ([N,C,H,W] in [0,1]) and ``y`` ([N]).

    With ``attack``, each batch is first replaced by ``attack(model, x, y)``.
    Returns per-example correctness and cross-entropy loss on the CPU.
    """
    correct, losses = [], []
    device = torch.device(device)
    with eval_mode(model):
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size].to(device)
            yb = y[i:i + batch_size].to(device)
            if attack is not None:
                xb = attack(model, xb, yb)
            with torch.no_grad():
                logits = fast_view(model)(xb)
            correct.append((logits.argmax(1) == yb).cpu())
            losses.append(F.cross_entropy(logits, yb, reduction="none").float().cpu())
    if not correct:
        return ExampleResults(torch.zeros(0, dtype=torch.bool), torch.zeros(0))
    return ExampleResults(torch.cat(correct), torch.cat(losses))
