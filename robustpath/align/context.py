"""What a matcher gets: the two models, their spec, the data and the options.

Matchers are registered in :data:`MATCHERS` by name (``activation``, ``weight``,
``none``) and are called as ``matcher(ctx) -> dict[group, LongTensor]``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from robustpath.align.blocks import solve_assignment  # noqa: F401  (matchers use it from here too)
from robustpath.errors import UserError
from robustpath.registry import Registry

if TYPE_CHECKING:  # spec imports blocks, which imports this module
    from robustpath.align.spec import PermutationSpec

Matcher = Callable[["MatchContext"], dict[str, torch.Tensor]]
MATCHERS: Registry[Matcher] = Registry("alignment method")


@dataclass
class MatchContext:
    """Inputs of one alignment of ``model_b`` onto ``model_a``.

    ``data``: iterable of ``(x, y)`` batches (or bare ``x``), pixels in [0, 1].
    ``inputs``: ``clean`` or ``adv`` (``attack(model, x, y)`` run against each model on
    its own). ``max_batches``: stop after that many batches (None: all).
    ``pre_activation``: observe units before the nonlinearity instead of after.
    ``seed``: order of the weight-matching sweeps. ``keep``: groups every matcher must
    leave in place (identity); :func:`~.api.align` enforces it afterwards as well.
    """

    model_a: nn.Module
    model_b: nn.Module
    spec: PermutationSpec
    data: Iterable | None = None
    inputs: str = "clean"
    attack: Callable | None = None
    max_batches: int | None = None
    pre_activation: bool = False
    seed: int = 0
    keep: frozenset[str] = frozenset()  # groups left in place (align(partial=[...]))
    cache: dict = field(default_factory=dict, repr=False)

    @property
    def device(self) -> torch.device:
        p = next(iter(self.model_a.parameters()), None)
        return p.device if p is not None else torch.device("cpu")

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """``(x, y)`` on the models' device; ``y`` is None for unlabelled data."""
        if self.data is None:
            raise UserError("this alignment needs data (an iterable of (x, y) batches)")
        dev = self.device
        for i, item in enumerate(self.data):
            if self.max_batches is not None and i >= self.max_batches:
                break
            if isinstance(item, (tuple, list)):
                x, y = item[0], item[1] if len(item) > 1 else None
            else:
                x, y = item, None
            if not isinstance(x, torch.Tensor):
                raise UserError(f"data must yield tensors or (x, y) pairs, got {type(x).__name__}")
            yield x.to(dev), (y.to(dev) if isinstance(y, torch.Tensor) else None)


@MATCHERS.register("none")
def _no_matching(ctx: MatchContext) -> dict[str, torch.Tensor]:
    """Identity: the unaligned baseline."""
    return {g: torch.arange(n) for g, n in ctx.spec.groups.items()}
